package e2e

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
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
	if len(outs) > 0 {
		// The builder (busybox) is upstream too, as stdenv is for nixpkgs.
		outs = append(outs, c.bb)
		c.mustRun(nil, "nix", append([]string{"store", "sign", "--store", c.store, "--key-file", keyFile, "--recursive"}, outs...)...)
		c.mustRun(nil, "nix", append([]string{"copy", "--store", c.store, "--to", "file://" + u.dir + "?compression=zstd"}, outs...)...)
	} else {
		os.MkdirAll(u.dir, 0o755)
		if err := os.WriteFile(filepath.Join(u.dir, "nix-cache-info"), []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
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

var bytesInRE = regexp.MustCompile(`msg="exec finished".* bytes_in=(\d+)`)

// bytesIn sums the bytes clients sent the farm in the sessions that have
// ended (the farm logs them at debug level).
func (f *farm) bytesIn() int64 {
	var n int64
	for _, m := range bytesInRE.FindAllStringSubmatch(f.logs(), -1) {
		k, _ := strconv.ParseInt(m[1], 10, 64)
		n += k
	}
	return n
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
	// lib2 holds 4 MiB; what the client sent is the protocol's chatter.
	if n := f.bytesIn(); n == 0 || n > 256<<10 {
		t.Errorf("the client sent the farm %d bytes", n)
	}

	// The same over ssh://, the serve protocol.
	f3 := startFarm(t, up.flags()...)
	c3 := newClientOf(t, v)
	r = c3.exec(f3, "nix-build", append([]string{"--store", c3.store, "--max-jobs", "0", "--builders", f3.builders("ssh"), "--no-out-link", c3.expr("app", upstreamExpr)}, args...)...)
	if r.err != nil {
		t.Fatalf("nix-build over ssh://: %v\n%s\nfarm:\n%s", r.err, r.stderr, f3.logs())
	}
	for p, how := range f3.viewHow("alice", closure...) {
		if how == "upload" || how == "" {
			t.Errorf("over ssh://, %s entered alice's view by %q", p, how)
		}
	}

	// Remote-store mode: the client uploads the .drv files, the farm
	// fetches app's input from upstream and builds app.
	f2 := startFarm(t, up.flags()...)
	c2 := newClientOf(t, v)
	file2 := c2.expr("app", upstreamExpr)
	if _, stderr, err := c2.nixErr(f2, "build", "--store", f2.storeURI(), "--eval-store", c2.store, "--no-link", "-f", file2, "app"); err != nil {
		t.Fatalf("nix build: %v\n%s\nfarm:\n%s", err, stderr, f2.logs())
	}
	if f2.countBuilt("up-app") != 1 || f2.countBuilt("up-lib2") != 0 {
		t.Errorf("built app %d times and lib2 %d times, want 1 and 0", f2.countBuilt("up-app"), f2.countBuilt("up-lib2"))
	}
	drv := strings.TrimSpace(c2.mustRun(nil, "nix-instantiate", "--store", c2.store, file2, "-A", "app"))
	outs := c2.outputsOnFarm(f2, drv)
	if len(outs) != 1 {
		t.Fatalf("app's outputs on the farm: %+v", outs)
	}
	if got := c2.mustRun(f2, "nix", "store", "cat", "--store", f2.storeURI(), outs[0].Path); !strings.Contains(got, "-up-lib1") {
		t.Errorf("app's output: %q", got)
	}
	for p, how := range f2.viewHow("alice", closure...) {
		if how == "upload" || how == "" {
			t.Errorf("remote-store mode: %s entered alice's view by %q", p, how)
		}
	}
	// The .drv files go up, with the builder they name as a source
	// (busybox); nothing of lib1 or lib2 does.
	bbSize, _ := strconv.ParseInt(strings.TrimSpace(c2.mustRun(nil, "nix-store", "--store", c2.store, "-q", "--size", c2.bb)), 10, 64)
	if n := f2.bytesIn(); n == 0 || n > bbSize+256<<10 {
		t.Errorf("in remote-store mode the client sent the farm %d bytes; busybox is %d", n, bbSize)
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

// refusalExpr makes three independent paths, one per way an upstream copy
// can be wrong.
const refusalExpr = `
  {
    unsigned  = mk { name = "up-unsigned";  args = ["-c" "echo unsigned > $out"]; };
    untrusted = mk { name = "up-untrusted"; args = ["-c" "echo untrusted > $out"]; };
    corrupt   = mk { name = "up-corrupt";   args = ["-c" "echo corrupt > $out"]; };
  }`

// tamper rewrites the narinfo of store path p in u's cache with edit.
func (u *upstream) tamper(p string, edit func(lines []string) []string) {
	u.t.Helper()
	file := filepath.Join(u.dir, strings.TrimPrefix(p, "/nix/store/")[:32]+".narinfo")
	data, err := os.ReadFile(file)
	if err != nil {
		u.t.Fatal(err)
	}
	lines := edit(strings.Split(strings.TrimSpace(string(data)), "\n"))
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		u.t.Fatal(err)
	}
}

// field returns the value of a narinfo's key.
func field(lines []string, key string) string {
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, key+": "); ok {
			return v
		}
	}
	return ""
}

// resign replaces a narinfo's signatures with one by key over its
// (possibly edited) fingerprint.
func resign(lines []string, key signature.SecretKey) []string {
	var out []string
	for _, l := range lines {
		if !strings.HasPrefix(l, "Sig: ") {
			out = append(out, l)
		}
	}
	var refs []string
	for _, r := range strings.Fields(field(out, "References")) {
		refs = append(refs, "/nix/store/"+r)
	}
	fp := "1;" + field(out, "StorePath") + ";" + field(out, "NarHash") + ";" + field(out, "NarSize") + ";" + strings.Join(refs, ",")
	return append(out, "Sig: "+key.Sign(fp))
}

// An unsigned upstream path, one signed by a key the farm does not trust,
// and one whose NAR does not match its narHash are each refused with a
// message naming what was wrong, and nothing of them is registered.
func TestUpstreamRefusals(t *testing.T) {
	up := newUpstream(t)
	c := newClient(t)
	file := c.expr("refusals", refusalExpr)
	builder := newClient(t)
	paths := map[string]string{}
	for _, a := range []string{"unsigned", "untrusted", "corrupt"} {
		out := strings.TrimSpace(builder.mustRun(nil, "nix-build", "--store", builder.store, "--no-out-link", builder.expr("refusals", refusalExpr), "-A", a))
		keyFile := filepath.Join(builder.dir, "up.sec")
		os.WriteFile(keyFile, []byte(up.key.String()), 0o600)
		builder.mustRun(nil, "nix", "store", "sign", "--store", builder.store, "--key-file", keyFile, out)
		builder.mustRun(nil, "nix", "copy", "--store", builder.store, "--to", "file://"+up.dir+"?compression=zstd", out)
		paths[a] = out
	}
	other, _, _ := signature.Generate("someone-else-1")
	up.tamper(paths["unsigned"], func(lines []string) []string {
		var out []string
		for _, l := range lines {
			if !strings.HasPrefix(l, "Sig: ") {
				out = append(out, l)
			}
		}
		return out
	})
	up.tamper(paths["untrusted"], func(lines []string) []string { return resign(lines, other) })
	up.tamper(paths["corrupt"], func(lines []string) []string {
		// Another path's NAR hash, signed by the trusted key: only the
		// NAR's own bytes can tell.
		var out []string
		for _, l := range lines {
			switch {
			case strings.HasPrefix(l, "NarHash: "):
				out = append(out, "NarHash: sha256:1p1pf4zh1d6nkbh14p4xxdp607qxrhkmkc016rj2fyc39dm95ggd")
			case strings.HasPrefix(l, "FileHash: "), strings.HasPrefix(l, "FileSize: "):
			default:
				out = append(out, l)
			}
		}
		return resign(out, up.key)
	})

	f := startFarm(t, up.flags()...)
	want := map[string]string{"unsigned": "not signed", "untrusted": "no valid signature by a trusted key", "corrupt": "hash mismatch"}
	for a, p := range paths {
		r := c.exec(f, "nix-store", "--store", f.storeURI(), "--realise", p)
		if r.err == nil {
			t.Errorf("%s: the farm served a path it should have refused", a)
			continue
		}
		if !strings.Contains(r.stderr, want[a]) || !strings.Contains(r.stderr, up.url) {
			t.Errorf("%s: the client was told\n%s\nwant a message with %q and the cache's URL\nfarm:\n%s", a, r.stderr, want[a], f.logs())
		}
		var n int
		f.db().QueryRow(`SELECT count(*) FROM objects WHERE path = ?`, p).Scan(&n)
		if n != 0 {
			t.Errorf("%s: %d objects registered for %s", a, n, p)
		}
	}
	// Asked to build the corrupt path's derivation, the farm refuses the
	// cache's copy and builds it.
	r := c.build(f, "ssh-ng", file, "-A", "corrupt")
	if r.err != nil {
		t.Fatalf("nix-build of the corrupt path's derivation: %v\n%s\nfarm:\n%s", r.err, r.stderr, f.logs())
	}
	if got := c.read(strings.TrimSpace(r.out)); got != "corrupt\n" || f.countBuilt("up-corrupt") != 1 {
		t.Errorf("built %q, %d times", got, f.countBuilt("up-corrupt"))
	}
}

// An upstream that cannot be reached is skipped: the next one serves, or
// the farm builds, and the farm says so once rather than stalling.
func TestUpstreamDown(t *testing.T) {
	up := newUpstream(t, "lib2")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()

	f := startFarm(t, "--substituter", dead, "--substituter", up.url, "--trusted-public-key", up.pub)
	c := newClient(t)
	file := c.expr("libs", upstreamExpr)
	r := c.build(f, "ssh-ng", file, "-A", "lib2")
	if r.err != nil {
		t.Fatalf("nix-build: %v\n%s\nfarm:\n%s", r.err, r.stderr, f.logs())
	}
	if strings.Contains(f.logs(), "build queued") || up.narRequests() == 0 {
		t.Errorf("the farm did not fetch from the second cache:\n%s", f.logs())
	}
	if n := strings.Count(f.logs(), "unreachable"); n != 1 {
		t.Errorf("the dead cache was reported %d times, want once:\n%s", n, f.logs())
	}

	// Only a dead cache: the farm builds.
	f2 := startFarm(t, "--substituter", dead, "--trusted-public-key", up.pub)
	c2 := newClient(t)
	r = c2.build(f2, "ssh-ng", c2.expr("libs", upstreamExpr), "-A", "lib2")
	if r.err != nil {
		t.Fatalf("nix-build with a dead cache: %v\n%s\nfarm:\n%s", r.err, r.stderr, f2.logs())
	}
	if n := f2.countBuilt("up-lib2"); n != 1 {
		t.Errorf("lib2 built %d times with only a dead cache, want 1", n)
	}
}
