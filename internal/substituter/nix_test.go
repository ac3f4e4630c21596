package substituter

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// realNixCache makes a binary cache with the machine's Nix: a path built
// with busybox in a chroot store, referring to itself and to an added
// (content-addressed) file, copied with `nix copy --to
// file://…?compression=xz` and signed with `nix store sign`. It returns
// the cache's directory, the built path and the key's public half.
func realNixCache(t *testing.T) (string, storepath.Path, storepath.Path, signature.PublicKey) {
	t.Helper()
	testutil.RequireTools(t, "nix", "nix-store", "nix-instantiate")
	testutil.RequireFile(t, "/bin/busybox")
	work := t.TempDir()
	st := filepath.Join(work, "store")
	env := append(os.Environ(), "NIX_CONFIG=substituters =\nexperimental-features = nix-command",
		"XDG_CACHE_HOME="+filepath.Join(work, "cache-home"), "HOME="+work)
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env, cmd.Dir = env, work
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %q: %v\n%s", name, args, err, stderr.String())
		}
		return strings.TrimSpace(string(out))
	}
	write := func(rel, data string, mode os.FileMode) {
		p := filepath.Join(work, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
	}
	bbData, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	write("bb/bin/busybox", string(bbData), 0o755)
	if err := os.Symlink("busybox", filepath.Join(work, "bb/bin/sh")); err != nil {
		t.Fatal(err)
	}
	write("data", "some data\n", 0o644)
	write("out.nix", `{ bbPath, dataPath }:
let bb = builtins.storePath bbPath; in
derivation {
  name = "built";
  system = builtins.currentSystem;
  builder = "${bb}/bin/sh";
  PATH = "${bb}/bin";
  data = builtins.storePath dataPath;
  args = [ "-c" "mkdir $out; echo $data > $out/ref; echo $out > $out/self" ];
}
`, 0o644)
	data := run("nix-store", "--store", st, "--add", "data")
	bb := run("nix-store", "--store", st, "--add", "bb")
	drv := run("nix-instantiate", "--store", st, "--argstr", "bbPath", bb, "--argstr", "dataPath", data, "out.nix")
	built := run("nix-store", "--store", st, "--realise", drv)
	sk, pk, err := signature.Generate("real-nix-1")
	if err != nil {
		t.Fatal(err)
	}
	write("key.sec", sk.String(), 0o600)
	cache := filepath.Join(work, "binary-cache")
	run("nix", "copy", "--store", st, "--to", "file://"+cache+"?compression=xz", built)
	run("nix", "store", "sign", "--store", "file://"+cache, "--key-file", filepath.Join(work, "key.sec"), "--recursive", built)
	return cache, storepath.Path(built), storepath.Path(data), pk
}

// TestRealNixCache substitutes from a cache made by the real Nix, over
// file:// and over HTTP, and refuses its signed paths without its key.
func TestRealNixCache(t *testing.T) {
	dir, built, data, pk := realNixCache(t)
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer srv.Close()
	for _, url := range []string{"file://" + dir, srv.URL} {
		t.Run(url[:4], func(t *testing.T) {
			s, st, _ := newSub(t, Config{URLs: []string{url}, Keys: []signature.PublicKey{pk}})
			got, err := s.Substitute(context.Background(), []storepath.Path{built}, nil)
			if err != nil || len(got) != 1 {
				t.Fatalf("Substitute: %v, %v", got, err)
			}
			mustValid(t, st, true, built, data)
			info, err := st.QueryPathInfo(context.Background(), built)
			if err != nil {
				t.Fatal(err)
			}
			if len(info.References) != 2 || info.Deriver == "" || !signature.VerifyAny([]signature.PublicKey{pk}, signature.Fingerprint(info.Path, info.NarHash, info.NarSize, info.References), info.Sigs) {
				t.Errorf("registered %+v", info)
			}
			// Without the key, both are refused, the content-addressed one
			// too.
			s2, st2, _ := newSub(t, Config{URLs: []string{url}})
			got, err = s2.Substitute(context.Background(), []storepath.Path{built, data}, nil)
			if len(got) != 0 || err == nil || !strings.Contains(err.Error(), "no valid signature") {
				t.Errorf("Substitute without the key: %v, %v", got, err)
			}
			mustValid(t, st2, false, built, data)
		})
	}
}
