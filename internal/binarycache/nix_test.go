package binarycache_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/binarycache"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// addInputAddressed puts an input-addressed single-file path into view,
// signed by key, so Nix takes it only with the signature.
func addInputAddressed(t *testing.T, view store.Store, key signature.SecretKey, name, contents string, refs []storepath.Path, deriver storepath.Path) *store.PathInfo {
	t.Helper()
	p, err := storepath.Make("output:out", nixhash.SHA256Of([]byte(name+contents)), name)
	if err != nil {
		t.Fatal(err)
	}
	n := testutil.FileNar(contents)
	info := &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)), References: refs, Deriver: deriver}
	ctx := context.Background()
	if err := view.AddToStore(ctx, info, bytes.NewReader(n)); err != nil {
		t.Fatal(err)
	}
	sig := key.Sign(signature.Fingerprint(p, info.NarHash, info.NarSize, refs))
	if err := view.AddSignatures(ctx, p, []string{sig}); err != nil {
		t.Fatal(err)
	}
	return info
}

// TestRealNix: host Nix (2.8) substitutes from the cache into a chroot
// store with a netrc file, and fails to without it; `nix path-info` and
// `nix log` read it as an http:// store.
func TestRealNix(t *testing.T) {
	testutil.RequireTools(t, "nix-store", "nix")
	for _, compression := range []string{"zstd", "xz", "none"} {
		t.Run(compression, func(t *testing.T) { testRealNix(t, compression) })
	}
}

func testRealNix(t *testing.T, compression string) {
	f := newFixture(t, func(c *binarycache.Config) { c.Compression = compression })
	sk, pk, err := signature.Generate("farm-test-1")
	if err != nil {
		t.Fatal(err)
	}
	drv := storepath.Path(storepath.Dir + "/" + strings.Repeat("2", 32) + "-hello.drv")
	dep := addInputAddressed(t, f.alice, sk, "dep", "the dependency\n", nil, "")
	top := addInputAddressed(t, f.alice, sk, "hello", "hello from the farm, see "+string(dep.Path)+"\n",
		[]storepath.Path{dep.Path}, drv)
	f.logs["alice "+string(drv)] = "building hello\nhello built\n"

	// The handler behind a listener of its own, on 127.0.0.1.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(f.cache)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	cacheURL := srv.URL

	tmp := t.TempDir()
	netrc := filepath.Join(tmp, "netrc")
	if err := os.WriteFile(netrc, []byte(fmt.Sprintf("machine 127.0.0.1 login alice password %s\n", f.aliceTok)), 0o600); err != nil {
		t.Fatal(err)
	}
	confDir := filepath.Join(tmp, "conf")
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(home string, args ...string) (string, error) {
		cmd := exec.Command(args[0], args[1:]...)
		// No host configuration, and a narinfo cache of the run's own.
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, "cache"),
			"NIX_CONF_DIR=" + confDir}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	common := []string{"--option", "substituters", cacheURL, "--option", "trusted-public-keys", pk.String(),
		"--option", "narinfo-cache-negative-ttl", "0"}

	// Without the netrc file: refused.
	noAuth := filepath.Join(tmp, "store-noauth")
	out, err := run(filepath.Join(tmp, "home1"), append([]string{"nix-store", "-r", string(top.Path), "--store", noAuth}, common...)...)
	if err == nil {
		t.Fatalf("substituted without credentials:\n%s", out)
	}
	t.Logf("without credentials (as wanted, it fails):\n%s", out)

	// With it: the path and its dependency arrive, signature checked.
	dir := filepath.Join(tmp, "store")
	out, err = run(filepath.Join(tmp, "home2"), append([]string{"nix-store", "-r", string(top.Path), "--store", dir, "--option", "netrc-file", netrc}, common...)...)
	if err != nil {
		t.Fatalf("nix-store -r: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, string(top.Path)))
	if err != nil || !strings.Contains(string(got), "hello from the farm") {
		t.Fatalf("substituted path: %q %v\n%s", got, err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, string(dep.Path))); err != nil {
		t.Fatalf("dependency not substituted: %v", err)
	}

	// A key Nix does not trust: refused.
	_, otherPK, _ := signature.Generate("other-1")
	out, err = run(filepath.Join(tmp, "home3"), "nix-store", "-r", string(top.Path), "--store", filepath.Join(tmp, "store-untrusted"),
		"--option", "netrc-file", netrc, "--option", "substituters", cacheURL, "--option", "trusted-public-keys", otherPK.String())
	if err == nil {
		t.Fatalf("substituted with an untrusted signature:\n%s", out)
	}

	// The cache as an http:// store.
	nixCmd := []string{"--store", cacheURL, "--option", "netrc-file", netrc, "--extra-experimental-features", "nix-command"}
	out, err = run(filepath.Join(tmp, "home4"), append([]string{"nix", "path-info", "--json", string(top.Path)}, nixCmd...)...)
	if err != nil || !strings.Contains(out, string(top.Path)) || !strings.Contains(out, "farm-test-1:") || !strings.Contains(out, string(dep.Path)) {
		t.Fatalf("nix path-info: %v\n%s", err, out)
	}
	out, err = run(filepath.Join(tmp, "home5"), append([]string{"nix", "log", string(top.Path)}, nixCmd...)...)
	if err != nil || !strings.Contains(out, "building hello\nhello built\n") {
		t.Fatalf("nix log: %v\n%s", err, out)
	}
}
