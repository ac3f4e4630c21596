package e2e

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nixfarm/nixfarm/internal/signature"
)

// upstream is a binary cache made the way users make theirs: real Nix
// builds a closure, signs it, and copies it to a file:// cache, which a
// plain HTTP file server on loopback serves.
type upstream struct {
	t   *testing.T
	dir string // the file:// cache
	url string
	key signature.SecretKey
	pub string // the public key, name:base64

	mu       sync.Mutex
	requests map[string]int // by URL path
}

// upstreamExpr is the closure an upstream cache holds: lib1 and lib2
// (with lib1 and busybox in its closure), and a large file.
const upstreamExpr = `
  rec {
    lib1 = mk { name = "up-lib1"; args = ["-c" "echo building-up-lib1; mkdir $out; echo lib1 > $out/f"]; };
    lib2 = mk { name = "up-lib2"; args = ["-c" "echo building-up-lib2; mkdir $out; echo ${lib1} > $out/f; yes up-lib2-big | head -c 4194304 > $out/big"]; };
    app  = mk { name = "up-app";  args = ["-c" "echo building-up-app; cat ${lib2}/f > $out"]; };
  }`

// newUpstream builds attrs of upstreamExpr with a client of its own (so
// the test's clients lack them), signs them with a new key and serves
// them as a binary cache compressed with zstd.
func newUpstream(t *testing.T, attrs ...string) *upstream {
	t.Helper()
	c := newClient(t)
	u := &upstream{t: t, dir: filepath.Join(t.TempDir(), "cache"), requests: map[string]int{}}
	sk, pk, err := signature.Generate("upstream-test-1")
	if err != nil {
		t.Fatal(err)
	}
	u.key, u.pub = sk, pk.String()
	keyFile := filepath.Join(c.dir, "upstream.sec")
	if err := os.WriteFile(keyFile, []byte(sk.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	file := c.expr("upstream", upstreamExpr)
	var outs []string
	for _, a := range attrs {
		outs = append(outs, strings.Fields(c.mustRun(nil, "nix-build", "--store", c.store, "--no-out-link", file, "-A", a))...)
	}
	c.mustRun(nil, "nix", "store", "sign", "--store", c.store, "--key-file", keyFile, "--recursive", strings.Join(outs, " "))
	c.mustRun(nil, "nix", append([]string{"copy", "--store", c.store, "--to", "file://" + u.dir + "?compression=zstd"}, outs...)...)
	fs := http.FileServer(http.Dir(u.dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.requests[r.URL.Path]++
		u.mu.Unlock()
		fs.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	u.url = srv.URL
	return u
}

// flags are the nixfarm serve flags that make it substitute from u.
func (u *upstream) flags() []string {
	return []string{"--substituter", u.url, "--trusted-public-key", u.pub}
}

// narRequests counts the NARs fetched from the cache.
func (u *upstream) narRequests() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for p, k := range u.requests {
		if strings.HasPrefix(p, "/nar/") {
			n += k
		}
	}
	return n
}

// clientOptions make a client substitute from u itself.
func (u *upstream) clientOptions() []string {
	return []string{"--option", "substituters", u.url, "--option", "trusted-public-keys", u.pub}
}

// uploads returns how each of paths entered alice's view of the farm
// store ("upload", "built", "signed", …; "" if it is not there).
func (f *farm) viewHow(account string, paths ...string) map[string]string {
	out := map[string]string{}
	for _, p := range paths {
		var how string
		f.db().QueryRow(`SELECT how FROM views WHERE account = ? AND path = ?`, account, p).Scan(&how)
		out[p] = how
	}
	return out
}

// closureOf lists a path's closure as a client's store knows it.
func (c *client) closureOf(p string) []string {
	c.t.Helper()
	return strings.Fields(c.mustRun(nil, "nix-store", "--store", c.store, "-qR", p))
}

// A remote build whose inputs are upstream: the farm fetches them itself
// (builders-use-substitutes), the client uploads none of them, and the
// output is right.
func TestSubstitutesInputs(t *testing.T) { forClients(t, testSubstitutesInputs) }

func testSubstitutesInputs(t *testing.T, v *nixVersion) {
	up := newUpstream(t, "lib2")
	f := startFarm(t, up.flags()...)
	c := newClientOf(t, v)
	file := c.expr("app", upstreamExpr)
	args := append(up.clientOptions(), "-A", "app", "--option", "builders-use-substitutes", "true")
	// The client's own Nix fetches the inputs from the cache too (Nix
	// realises inputs locally before it hands a build to a builder).
	r := c.exec(f, "nix-build", append([]string{"--store", c.store, "--max-jobs", "0", "--builders", f.builders("ssh-ng"), "--no-out-link", file}, args...)...)
	if r.err != nil {
		t.Fatalf("nix-build: %v\n%s\nfarm:\n%s", r.err, r.stderr, f.logs())
	}
	out := r.out
	lib2 := strings.TrimSpace(c.mustRun(nil, "nix-build", append([]string{"--store", c.store, "--no-out-link", file, "-A", "lib2"}, up.clientOptions()...)...))
	if got := c.read(out); strings.TrimSpace(got) != strings.TrimSpace(c.read(lib2+"/f")) {
		t.Errorf("app's output %q does not name lib1 as lib2's f does", got)
	}
	closure := c.closureOf(lib2)
	if len(closure) < 2 {
		t.Fatalf("lib2's closure %v", closure)
	}
	for p, how := range f.viewHow("alice", closure...) {
		if how == "upload" || how == "" {
			t.Errorf("%s entered alice's view by %q; want it fetched by the farm from upstream", p, how)
		}
	}
	if n := f.countBuilt("up-lib2") + f.countBuilt("up-lib1"); n != 0 {
		t.Errorf("the farm built upstream paths %d times", n)
	}
	if up.narRequests() == 0 {
		t.Errorf("the farm fetched no NAR from upstream")
	}
}

// A derivation whose output is upstream is substituted, not built, in
// remote-store mode and as a remote builder; the client is told what is
// copied from where.
func TestSubstitutesOutputs(t *testing.T) { forClients(t, testSubstitutesOutputs) }

func testSubstitutesOutputs(t *testing.T, v *nixVersion) {
	up := newUpstream(t, "lib2")
	f := startFarm(t, up.flags()...)
	c := newClientOf(t, v)
	file := c.expr("libs", upstreamExpr)
	_, stderr, err := c.nixErr(f, "build", "--store", f.storeURI(), "--eval-store", c.store, "--no-link", "-f", file, "lib2")
	if err != nil {
		t.Fatalf("nix build: %v\n%s\nfarm:\n%s", err, stderr, f.logs())
	}
	if strings.Contains(f.logs(), "build queued") {
		t.Errorf("a worker ran a build of an upstream path:\n%s", f.logs())
	}
	if !strings.Contains(stderr, "copying path '") || !strings.Contains(stderr, up.url) {
		t.Errorf("the client was not told of the paths copied from upstream:\n%s", stderr)
	}
	var substituted int
	f.db().QueryRow(`SELECT count(*) FROM builds WHERE status = 1`).Scan(&substituted)
	if substituted == 0 {
		t.Errorf("no build recorded as substituted")
	}

	// As a remote builder, with a fresh farm: lib1 and lib2 are each
	// answered with their upstream outputs.
	f2 := startFarm(t, up.flags()...)
	r := c.build(f2, "ssh-ng", file, "-A", "lib2")
	if r.err != nil {
		t.Fatalf("nix-build: %v\n%s\nfarm:\n%s", r.err, r.stderr, f2.logs())
	}
	if strings.Contains(f2.logs(), "build queued") {
		t.Errorf("a worker ran a build of an upstream path:\n%s", f2.logs())
	}
	if got := c.read(strings.TrimSpace(r.out) + "/f"); !strings.Contains(got, "-up-lib1") {
		t.Errorf("lib2's f: %q", got)
	}
}
