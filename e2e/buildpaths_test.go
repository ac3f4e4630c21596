package e2e

import (
	"bytes"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// A stock client uploads a .drv closure (nix copy --derivation), and a
// serve-protocol BuildPaths, as Hydra sends it, builds the chain on the
// farm in dependency order.
func TestSSHBuildPathsOfUploadedDerivations(t *testing.T) { forClients(t, testSSHBuildPaths) }

func testSSHBuildPaths(t *testing.T, v *nixVersion) {
	f := startFarm(t)
	c := newClientOf(t, v)
	file := c.expr("bp", `let a = mk { name = "bp-a"; args = ["-c" "echo a > $out"]; }; in mk { name = "bp-b"; args = ["-c" "echo b ${a} > $out"]; }`)
	drv := c.instantiate(file)[0]
	c.nix(f, "copy", "--store", c.store, "--derivation", "--to", "ssh://nixfarm?base64-ssh-public-host-key="+f.hostKeyB64, drv)

	s := openServe(t, f, "nix-store --serve --write")
	sc := s.client
	res, err := sc.BuildPaths([]build.DerivedPath{{Path: storepath.Path(drv), Built: true, Outputs: []string{"out"}}}, build.Options{})
	if err != nil || !res.Status.Success() {
		t.Fatalf("BuildPaths: %v %+v\nstderr: %s\nfarm: %s", err, res, s.stderr, f.logs())
	}
	closure, err := sc.QueryClosure([]storepath.Path{storepath.Path(drv)}, true)
	if err != nil {
		t.Fatal(err)
	}
	var outB storepath.Path
	for _, p := range closure {
		if strings.HasSuffix(string(p), "-bp-b") {
			outB = p
		}
	}
	if outB == "" {
		t.Fatalf("closure with outputs lacks bp-b's output: %v", closure)
	}
	var narBuf bytes.Buffer
	if _, err := sc.DumpStorePath(outB, &narBuf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(narBuf.Bytes(), []byte("b /nix/store/")) {
		t.Errorf("bp-b's output does not hold what the builder wrote")
	}
	if err := s.close(); err != nil {
		t.Errorf("session: %v\n%s", err, s.stderr)
	}
	if n := f.builtCount(drv); n != 1 {
		t.Errorf("bp-b built %d times", n)
	}
}
