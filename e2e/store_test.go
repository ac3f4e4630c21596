package e2e

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
)

// storeURI names the farm as a Nix store over ssh-ng://.
func (f *farm) storeURI() string { return f.storeURIFor("ssh-ng") }

// storeURIFor names the farm as a Nix store over ssh:// or ssh-ng://.
func (f *farm) storeURIFor(scheme string) string {
	return scheme + "://nixfarm?base64-ssh-public-host-key=" + f.hostKeyB64
}

// nix runs the nix command with the farm's ssh config and returns its
// stdout, failing the test on error.
func (c *client) nix(f *farm, args ...string) string {
	c.t.Helper()
	out, stderr, err := c.nixErr(f, args...)
	if err != nil {
		c.t.Fatalf("nix %s: %v\n%s\nfarm:\n%s", strings.Join(args, " "), err, stderr, f.logs())
	}
	return out
}

func (c *client) nixErr(f *farm, args ...string) (string, string, error) {
	r := c.exec(f, "nix", args...)
	return r.raw, r.stderr, r.err
}

type pathInfo struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Valid      *bool    `json:"valid"`
}

func (c *client) pathInfo(f *farm, store string, paths ...string) []pathInfo {
	c.t.Helper()
	out := c.nix(f, append([]string{"path-info", "--json", "--store", store}, paths...)...)
	infos, err := parsePathInfo(out)
	if err != nil {
		c.t.Fatalf("path-info output %q: %v", out, err)
	}
	return infos
}

// parsePathInfo reads `nix path-info --json` in either of its forms: a list
// of objects with a "path" (Nix 2.8 to 2.18), or an object keyed by path
// (Nix 2.19 on).
func parsePathInfo(out string) ([]pathInfo, error) {
	var infos []pathInfo
	if err := json.Unmarshal([]byte(out), &infos); err == nil {
		return infos, nil
	}
	var byPath map[string]*pathInfo
	if err := json.Unmarshal([]byte(out), &byPath); err != nil {
		return nil, err
	}
	for p, info := range byPath {
		if info == nil {
			info = &pathInfo{Valid: new(bool)}
		}
		info.Path = p
		infos = append(infos, *info)
	}
	slices.SortFunc(infos, func(a, b pathInfo) int { return strings.Compare(a.Path, b.Path) })
	return infos, nil
}

// nix store ping, and from Nix 2.19 on its new name nix store info, reach
// the farm and report it.
func TestStorePing(t *testing.T) { forClients(t, testStorePing) }

func testStorePing(t *testing.T, v *nixVersion) {
	f := startFarm(t)
	c := newClientOf(t, v)
	commands := [][]string{{"store", "ping"}}
	if v.minor >= 19 {
		commands = append(commands, []string{"store", "info"})
	}
	for _, cmd := range commands {
		out, stderr, err := c.nixErr(f, append(cmd, "--store", f.storeURI())...)
		if err != nil {
			t.Fatalf("nix %s: %v\n%s\nfarm:\n%s", strings.Join(cmd, " "), err, stderr, f.logs())
		}
		// The version is the farm's own. (Nix 2.26 prints the store URL
		// without its host: a bug of that client.)
		if !strings.Contains(out+stderr, "ssh-ng://") || !strings.Contains(out+stderr, "nixfarm-") {
			t.Errorf("nix %s output: %s %s", strings.Join(cmd, " "), out, stderr)
		}
		// Over ssh:// it reaches the farm too (the serve protocol has no
		// version string to show).
		out, stderr, err = c.nixErr(f, append(cmd, "--store", f.storeURIFor("ssh"))...)
		if err != nil || !strings.Contains(out+stderr, "ssh://nixfarm") {
			t.Errorf("nix %s over ssh://: %v\n%s %s", strings.Join(cmd, " "), err, out, stderr)
		}
	}
}

// nix copy to the farm and back, over both protocols, keeps a path's
// narHash and references, and nix path-info on the farm shows them.
func TestCopyRoundTrip(t *testing.T) { forClientsAndSchemes(t, testCopyRoundTrip) }

func testCopyRoundTrip(t *testing.T, v *nixVersion, scheme string) {
	f := startFarm(t)
	c := newClientOf(t, v)
	uri := f.storeURIFor(scheme)
	// A path with a reference: a text file naming busybox.
	file := c.expr("copied", `builtins.toFile "copied.txt" "busybox is ${bb}"`)
	var p string
	if err := json.Unmarshal([]byte(c.mustRun(nil, "nix-instantiate", "--store", c.store, "--read-write-mode", "--eval", "--json", file)), &p); err != nil {
		t.Fatal(err)
	}
	want := c.pathInfo(f, c.store, p)[0]
	if len(want.References) != 1 || want.References[0] != c.bb {
		t.Fatalf("test path has references %v", want.References)
	}
	c.nix(f, "copy", "--store", c.store, "--to", uri, p)

	got := c.pathInfo(f, uri, p)[0]
	if got.NarHash != want.NarHash || got.NarSize != want.NarSize || !slices.Equal(got.References, want.References) {
		t.Errorf("on the farm: %+v, on the client: %+v", got, want)
	}

	c2 := newClientOf(t, v)
	c2.nix(f, "copy", "--no-check-sigs", "--store", c2.store, "--from", uri, p)
	back := c2.pathInfo(f, c2.store, p)[0]
	if back.NarHash != want.NarHash || back.NarSize != want.NarSize || !slices.Equal(back.References, want.References) {
		t.Errorf("copied back: %+v, original: %+v", back, want)
	}
	c2.verify(p)
	if got := c2.read(p); got != "busybox is "+c.bb {
		t.Errorf("contents %q", got)
	}
}

const chainExpr = `
  let a = mk { name = "rs-a"; args = ["-c" "echo building-rs-a; echo a > $out"]; };
      b = mk { name = "rs-b"; args = ["-c" "echo building-rs-b; echo b ${a} > $out"]; };
  in mk { name = "rs-c"; args = ["-c" "echo building-rs-c; echo c ${b} > $out"]; }`

// Remote-store mode: the client evaluates, the farm builds the whole chain,
// and nothing is downloaded.
func TestRemoteStoreBuild(t *testing.T) { forClients(t, testRemoteStoreBuild) }

func testRemoteStoreBuild(t *testing.T, v *nixVersion) {
	f := startFarm(t)
	c := newClientOf(t, v)
	file := c.expr("remote-store", chainExpr)
	_, stderr, err := c.nixErr(f, "build", "--store", f.storeURI(), "--eval-store", c.store, "--no-link", "-L", "-f", file)
	if err != nil {
		t.Fatalf("nix build: %v\n%s\nfarm:\n%s", err, stderr, f.logs())
	}
	// -L shows each build's log, prefixed with the derivation's name.
	for _, name := range []string{"rs-a", "rs-b", "rs-c"} {
		if !strings.Contains(stderr, name+"> building-"+name) {
			t.Errorf("nix build -L does not show %s's log:\n%s", name, stderr)
		}
	}
	drv := c.instantiate(file)[0]
	outs := c.outputsOnFarm(f, drv)
	if len(outs) != 1 || !strings.HasSuffix(outs[0].Path, "-rs-c") {
		t.Fatalf("outputs on the farm: %+v", outs)
	}
	if _, err := os.Stat(c.realPath(outs[0].Path)); err == nil {
		t.Errorf("the output was downloaded to the client")
	}
	for _, name := range []string{"rs-a", "rs-b", "rs-c"} {
		if n := f.countBuilt(name); n != 1 {
			t.Errorf("%s built %d times on the farm", name, n)
		}
	}
}

// Without an eval store: instantiate locally, copy the derivations, and
// realise them through the store URI.
func TestRemoteStoreRealise(t *testing.T) { forClients(t, testRemoteStoreRealise) }

func testRemoteStoreRealise(t *testing.T, v *nixVersion) {
	f := startFarm(t)
	c := newClientOf(t, v)
	file := c.expr("realise", chainExpr)
	drv := c.instantiate(file)[0]
	c.nix(f, "copy", "--store", c.store, "--derivation", "--to", f.storeURI(), drv)
	r := c.exec(f, "nix-store", "--store", f.storeURI(), "--realise", drv)
	if r.err != nil {
		t.Fatalf("nix-store --realise: %v\n%s\nfarm:\n%s", r.err, r.stderr, f.logs())
	}
	paths := strings.Fields(r.out)
	if len(paths) != 1 || !strings.HasSuffix(paths[0], "-rs-c") {
		t.Fatalf("realised %v", paths)
	}
	outs := c.outputsOnFarm(f, drv)
	if len(outs) != 1 || outs[0].Path != paths[0] || outs[0].NarSize == 0 {
		t.Errorf("path-info on the farm: %+v", outs)
	}
}

// outputsOnFarm lists a derivation's outputs with nix path-info on the farm.
func (c *client) outputsOnFarm(f *farm, drv string) []pathInfo {
	c.t.Helper()
	outs := strings.Fields(c.mustRun(nil, "nix-store", "--store", c.store, "--query", "--outputs", drv))
	return c.pathInfo(f, f.storeURI(), outs...)
}

// countBuilt counts successful builds of derivations named name.
func (f *farm) countBuilt(name string) int {
	var n int
	if err := f.db().QueryRow(`SELECT count(*) FROM builds WHERE drv_path LIKE ? AND status = 0`, "%-"+name+".drv").Scan(&n); err != nil {
		f.t.Fatal(err)
	}
	return n
}
