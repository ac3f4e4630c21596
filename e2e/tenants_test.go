package e2e

// Accounts that cannot hurt each other: two real clients, of two Nix
// versions, under two keys, against one farm, with one of the accounts
// also speaking the protocol itself as a hostile tenant would.

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/daemonproto"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// tenant is another account on a farm: its key and its ssh config.
type tenant struct {
	name, key, sshConfig string
}

// addTenant authorizes a new key for account name and waits until the
// farm admits it.
func (f *farm) addTenant(name string) *tenant {
	t := f.t
	t.Helper()
	tn := &tenant{name: name, key: filepath.Join(f.dir, name+"_ed25519"), sshConfig: filepath.Join(f.dir, name+"_ssh_config")}
	authorize(t, f.keysFile, writeKey(t, tn.key), name)
	cfg := fmt.Sprintf("Host nixfarm\n    HostName 127.0.0.1\n    Port %s\n    User %s\n    IdentityFile %s\n    IdentitiesOnly yes\n    HostKeyAlias nixfarm\n    BatchMode yes\n",
		f.port, name, tn.key)
	if err := os.WriteFile(tn.sshConfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// The farm re-reads authorized_keys when it changes.
	return tn
}

// as returns the client reaching the farm as tn.
func (c *client) as(tn *tenant) *client {
	other := *c
	other.sshConfig = tn.sshConfig
	return &other
}

// forged uploads contents, as account key's holder, under path p with no
// content address, as a hostile tenant's own client can: the farm must
// take it as that account's claim only.
func forged(t *testing.T, d *daemonproto.Client, p, contents string) {
	t.Helper()
	n := testutil.FileNar(contents)
	info := &store.PathInfo{Path: storepath.Path(p), NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}
	if err := d.AddToStoreNar(info, bytes.NewReader(n)); err != nil {
		t.Fatalf("uploading forged %s: %v", p, err)
	}
}

// uploadBusybox uploads the busybox directory at its store path.
func uploadBusybox(t *testing.T, d *daemonproto.Client) {
	t.Helper()
	var n bytes.Buffer
	if err := nar.DumpPath(&n, busyboxDir); err != nil {
		t.Fatal(err)
	}
	info := &store.PathInfo{Path: storepath.Path(busyboxPath), NarHash: nixhash.SHA256Of(n.Bytes()), NarSize: uint64(n.Len())}
	if err := d.AddToStoreNar(info, bytes.NewReader(n.Bytes())); err != nil {
		t.Fatalf("uploading busybox: %v", err)
	}
}

// forgedBuild has the farm build, for d's account, a derivation that
// copies src into its output.
func forgedBuild(t *testing.T, d *daemonproto.Client, src string) *build.Result {
	t.Helper()
	out := "/nix/store/" + strings.Repeat("p", 32) + "-reader-of-forged"
	drv := &derivation.Basic{
		Name:      "reader-of-forged",
		Outputs:   map[string]derivation.Output{"out": {Path: out}},
		InputSrcs: []string{busyboxPath, src},
		Platform:  "x86_64-linux",
		Builder:   busyboxPath + "/bin/sh",
		Args:      []string{"-c", "cat " + src + " > $out"},
		Env:       map[string]string{"out": out, "PATH": busyboxPath + "/bin"},
	}
	drvPath := storepath.Path("/nix/store/" + strings.Repeat("q", 32) + "-reader-of-forged.drv")
	res, err := d.BuildDerivation(drvPath, drv)
	if err != nil {
		t.Fatalf("forged build: %v", err)
	}
	return res
}

// Poisoning fails through an output path, a source path and a .drv: A's
// builds never see B's bytes, though B uploads them first under A's paths
// and has the farm's worker build with them.
func TestTenantsCannotPoison(t *testing.T) {
	f := startFarm(t)
	bob := f.addTenant("bob")
	a := newClientOf(t, nixVersions[len(nixVersions)-1]) // alice, the newest Nix
	b := newClientOf(t, nixVersions[len(nixVersions)/2]).as(bob)
	hostile, closeHostile := openDaemonWith(t, f, bob.key)
	defer closeHostile()
	uploadBusybox(t, hostile)

	// A source path: A's expression reads a file added from its own store.
	file := a.expr("victim", `{
  out = mk { name = "victim-out"; args = ["-c" "echo genuine output > $out"]; };
  reader = mk { name = "victim-reader"; args = ["-c" "cat ${builtins.toFile "victim-input" "genuine input"} > $out"]; };
}`)
	drvs := a.instantiate(file) // out, reader
	outPath := strings.TrimSpace(a.mustRun(nil, "nix-store", "--store", a.store, "-q", "--outputs", drvs[0]))
	srcPath := ""
	for _, r := range strings.Fields(a.mustRun(nil, "nix-store", "--store", a.store, "-q", "--references", drvs[1])) {
		if strings.HasSuffix(r, "-victim-input") {
			srcPath = r
		}
	}
	if srcPath == "" {
		t.Fatal("the reader's source is not among its references")
	}

	// B claims A's output and A's source with bytes of its own, and has
	// the farm's worker build with its source, so the worker's store
	// holds B's version.
	forged(t, hostile, outPath, "poison output\n")
	forged(t, hostile, srcPath, "poison input")
	if res := forgedBuild(t, hostile, srcPath); !res.Status.Success() {
		t.Fatalf("B's build of its own source: %+v", res)
	}
	// B's own view holds what B uploaded.
	if info := b.pathInfo(f, f.storeURI(), outPath); len(info) != 1 || info[0].NarHash == "" {
		t.Fatalf("B does not see its own upload: %+v", info)
	}

	// .drv: B's bytes under A's .drv path are refused, and a .drv that
	// names A's output path without deriving it is refused when built.
	aDrv := drvs[0]
	n := testutil.FileNar("Derive([(\"out\",\"" + outPath + "\",\"\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[],[])")
	err := hostile.AddToStoreNar(&store.PathInfo{Path: storepath.Path(aDrv), NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}, bytes.NewReader(n))
	if err == nil || !strings.Contains(err.Error(), "path of its text") {
		t.Errorf("B's bytes under A's .drv path: %v", err)
	}
	text := a.read(aDrv)
	lying := strings.Replace(text, "echo genuine output", "echo poison output", 1)
	if lying == text {
		t.Fatalf("A's derivation does not hold its builder's command:\n%s", text)
	}
	lyingPath, err := hostile.AddTextToStore("victim-out.drv", lying, []storepath.Path{storepath.Path(busyboxPath)})
	if err != nil {
		t.Fatalf("uploading a .drv under the path of its text: %v", err)
	}
	_, err = hostile.BuildPathsWithResults([]build.DerivedPath{{Path: lyingPath, Built: true}})
	if err == nil || !strings.Contains(err.Error(), outPath) || !strings.Contains(err.Error(), "but Nix computes") {
		t.Errorf("building a .drv whose output path is not its own: %v", err)
	}

	// A builds over ssh-ng (output path, source path), and in remote-store
	// mode (.drv): always A's bytes.
	outs := a.mustBuild(f, "ssh-ng", file)
	if got := a.read(outs[0]); got != "genuine output\n" {
		t.Errorf("A's output holds %q", got)
	}
	if got := a.read(outs[1]); got != "genuine input" {
		t.Errorf("A's build read %q from its source", got)
	}
	remote := a.expr("victim-remote", `mk { name = "victim-remote"; args = ["-c" "echo genuine remote > $out"]; }`)
	a.nix(f, "build", "--store", f.storeURI(), "--eval-store", a.store, "--no-link", "-f", remote)
	rdrv := a.instantiate(remote)[0]
	ro := a.outputsOnFarm(f, rdrv)
	var cat bytes.Buffer
	if _, err := hostileAsAlice(t, f).NarFromPath(storepath.Path(ro[0].Path), &cat); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cat.String(), "genuine remote") {
		t.Errorf("A's remote build holds %q", cat.String())
	}
	// The farm signed what it built from a .drv it checked, and the
	// signature travels with the path: Nix verifies it against the key
	// the farm printed, and not against another.
	m := regexp.MustCompile(`public_key="?([^" \n]+)`).FindStringSubmatch(f.logs())
	if m == nil {
		t.Fatalf("the farm printed no signing key:\n%s", f.logs())
	}
	a.nix(f, "store", "verify", "--no-contents", "--store", f.storeURI(), "--trusted-public-keys", m[1], "--sigs-needed", "1", ro[0].Path)
	if r := a.exec(f, "nix", "store", "verify", "--no-contents", "--store", f.storeURI(), "--trusted-public-keys", "other-1:"+strings.Repeat("A", 43)+"=", "--sigs-needed", "1", ro[0].Path); r.err == nil {
		t.Errorf("the output verifies against a key that did not sign it")
	}
	// B, built with its own source, got its own bytes: the two were
	// built apart.
	if n := f.countBuiltLike("reader-of-forged"); n != 1 {
		t.Errorf("B's reader built %d times", n)
	}
	if n := f.countBuilt("victim-reader"); n != 1 {
		t.Errorf("A's reader built %d times", n)
	}
	if !strings.Contains(f.logs(), "removing paths whose contents differ") {
		t.Errorf("the worker's store was not cleared of B's source before A's build:\n%s", f.logs())
	}
	// Clearing it cost no attempt, and nothing against the worker.
	if strings.Contains(f.logs(), "build will be retried") {
		t.Errorf("a build was retried:\n%s", f.logs())
	}
}

// hostileAsAlice opens a daemon session with alice's own key, to read the
// farm store as alice sees it.
func hostileAsAlice(t *testing.T, f *farm) *daemonproto.Client {
	t.Helper()
	d, closeFn := openDaemon(t, f)
	t.Cleanup(func() { closeFn() })
	return d
}

// B cannot see A's paths through any query operation, nor through the
// API; logs are served to nobody over the protocols.
func TestTenantsCannotSeeEachOther(t *testing.T) {
	f := startFarm(t)
	bob := f.addTenant("bob")
	a := newClientOf(t, nixVersions[len(nixVersions)-1])
	b := newClientOf(t, nixVersions[0]).as(bob)
	file := a.expr("private", `mk { name = "private"; args = ["-c" "sleep 2; echo ${bb} secret > $out"]; }`)
	drv := a.instantiate(file)[0]

	// While A's build runs, the API tells anyone only that a build runs.
	done := make(chan []string, 1)
	go func() { done <- a.mustBuild(f, "ssh-ng", file) }()
	deadline := time.Now().Add(20 * time.Second)
	sawRunning := false
	for !sawRunning && time.Now().Before(deadline) {
		resp, err := http.Get(f.apiURL + "/api/v1/workers")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), "private") || strings.Contains(string(body), "alice") {
			t.Fatalf("the API shows A's build to anyone:\n%s", body)
		}
		sawRunning = strings.Contains(string(body), `"attempt"`)
		time.Sleep(50 * time.Millisecond)
	}
	if !sawRunning {
		t.Errorf("the API never listed the running build")
	}
	out := (<-done)[0]

	// Every query of B's answers as if A's paths did not exist.
	for _, scheme := range []string{"ssh", "ssh-ng"} {
		uri := f.storeURIFor(scheme)
		if r := b.exec(f, "nix", "path-info", "--store", uri, out); r.err == nil {
			t.Errorf("%s: B sees A's output: %s", scheme, r.out)
		}
		if r := b.exec(f, "nix", "path-info", "--store", uri, drv); r.err == nil && strings.Contains(r.out, drv) {
			t.Errorf("%s: B sees A's .drv: %s", scheme, r.out)
		}
		if r := b.exec(f, "nix", "copy", "--store", b.store, "--from", uri, out); r.err == nil {
			t.Errorf("%s: B downloaded A's output", scheme)
		}
	}
	if r := b.exec(f, "nix", "store", "cat", "--store", f.storeURI(), out); r.err == nil || strings.Contains(r.out, "secret") {
		t.Errorf("B read A's output: %q %v", r.out, r.err)
	}
	refs := b.exec(f, "nix-store", "--store", f.storeURI(), "-q", "--referrers", a.bb)
	if strings.Contains(refs.out, out) {
		t.Errorf("B lists A's output among busybox's referrers:\n%s", refs.out)
	}
	if r := b.exec(f, "nix", "log", "--store", f.storeURI(), drv); r.err == nil && strings.Contains(r.out, "secret") {
		t.Errorf("B read A's build log: %s", r.out)
	}
	hostile, closeHostile := openDaemonWith(t, f, bob.key)
	defer closeHostile()
	if valid, err := hostile.QueryValidPaths([]storepath.Path{storepath.Path(out), storepath.Path(drv), storepath.Path(a.bb)}, false); err != nil || len(valid) != 0 {
		t.Errorf("QueryValidPaths for B: %v %v", valid, err)
	}
	if info, err := hostile.QueryPathInfo(storepath.Path(out)); info != nil {
		t.Errorf("QueryPathInfo answers B for A's output: %+v %v", info, err)
	}
	if _, err := hostile.NarFromPath(storepath.Path(out), io.Discard); err == nil {
		t.Errorf("NarFromPath serves A's output to B")
	}
	if _, err := hostile.QueryDerivationOutputMap(storepath.Path(drv)); err == nil {
		t.Errorf("QueryDerivationOutputMap reads A's .drv for B")
	}
	if err := daemonproto.CallRaw(hostile, daemonproto.OpQueryPathFromHashPart, func(w *wire.Writer) { w.String(storepath.Path(out).HashPart()) }); err != nil {
		t.Fatal(err)
	}
	if p, _ := daemonproto.ClientReader(hostile).String(1024); p != "" {
		t.Errorf("QueryPathFromHashPart names A's output to B: %s", p)
	}
	// A sees its own.
	if info := a.pathInfo(f, f.storeURI(), out); len(info) != 1 || info[0].NarHash == "" {
		t.Errorf("A does not see its output: %+v", info)
	}
}

// Sharing without trust: identical derivations on identical inputs are
// built once for both accounts; with one input's bytes different, twice.
func TestTenantsShareIdenticalBuilds(t *testing.T) {
	f := startFarm(t)
	bob := f.addTenant("bob")
	a := newClientOf(t, nixVersions[len(nixVersions)-1])
	b := newClientOf(t, nixVersions[0]).as(bob)
	body := `{
  same = mk { name = "same"; args = ["-c" "echo same for everyone > $out"]; };
  reads = mk { name = "reads"; args = ["-c" "cat ${builtins.toFile "shared-input" "genuine"} > $out"]; };
}`
	fileA, fileB := a.expr("shared", body), b.expr("shared", body)
	outA := a.mustBuild(f, "ssh-ng", fileA)
	// B reaches its source first with bytes of its own, under the same
	// path.
	src := ""
	// Attributes come in name order: reads, same.
	for _, r := range strings.Fields(a.mustRun(nil, "nix-store", "--store", a.store, "-q", "--references", a.instantiate(fileA)[0])) {
		if strings.HasSuffix(r, "-shared-input") {
			src = r
		}
	}
	hostile, closeHostile := openDaemonWith(t, f, bob.key)
	forged(t, hostile, src, "different")
	closeHostile()
	outB := b.mustBuild(f, "ssh", fileB)
	if outA[1] != outB[1] || b.read(outB[1]) != "same for everyone\n" {
		t.Errorf("A has %s, B has %s (%q)", outA[1], outB[1], b.read(outB[1]))
	}
	if n := f.countBuilt("same"); n != 1 {
		t.Errorf("the identical derivation was built %d times, want once", n)
	}
	if n := f.countBuilt("reads"); n != 2 {
		t.Errorf("the derivation whose input differs was built %d times, want twice", n)
	}
	if got := b.read(outB[0]); got != "different" {
		t.Errorf("B's build read %q, want its own input", got)
	}
	// An output built from a BasicDerivation a client sent is not signed:
	// its path could be anyone's.
	if sigs := a.nix(f, "path-info", "--sigs", "--store", f.storeURI(), outA[1]); strings.Contains(sigs, "nixfarm-1:") {
		t.Errorf("the farm signed an output whose path it could not check: %s", sigs)
	}
	if got := a.read(outA[0]); got != "genuine" {
		t.Errorf("A's build read %q", got)
	}
}

// A path another account uploaded is visible to an account that trusts
// a key it is signed with, and to nobody else.
func TestTenantsSeeWhatTheirTrustedKeysSigned(t *testing.T) {
	f := startFarm(t)
	bob := f.addTenant("bob")
	carol := f.addTenant("carol")
	a := newClientOf(t, nixVersions[len(nixVersions)-1])
	b := newClientOf(t, nixVersions[0]).as(bob)
	// bob signs a path of his and uploads it with its signature.
	sk, pk := filepath.Join(b.dir, "sk"), filepath.Join(b.dir, "pk")
	b.mustRun(nil, "nix-store", "--generate-binary-cache-key", "bobs-cache-1", sk, pk)
	p := strings.TrimSpace(b.mustRun(nil, "nix-store", "--store", b.store, "--add", b.expr("signed-by-bob", "1")))
	b.mustRun(nil, "nix", "store", "sign", "--store", b.store, "--key-file", sk, p)
	b.nix(f, "copy", "--store", b.store, "--to", f.storeURI(), p)

	key, err := os.ReadFile(pk)
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"accounts", "add", "alice"}, {"accounts", "trust", "alice", strings.TrimSpace(string(key))}} {
		if out, err := execNixfarm(f, args...); err != nil {
			t.Fatalf("nixfarm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if info := a.pathInfo(f, f.storeURI(), p); len(info) != 1 || info[0].NarHash == "" {
		t.Errorf("alice, who trusts bob's key, does not see his signed path: %+v", info)
	}
	if r := a.as(carol).exec(f, "nix", "path-info", "--store", f.storeURI(), p); r.err == nil {
		t.Errorf("carol, who trusts no key, sees bob's signed path: %s", r.out)
	}
	// What bob uploaded unsigned stays his.
	q := strings.TrimSpace(b.mustRun(nil, "nix-store", "--store", b.store, "--add", b.expr("unsigned-by-bob", "2")))
	b.nix(f, "copy", "--store", b.store, "--to", f.storeURI(), q)
	if r := a.exec(f, "nix", "path-info", "--store", f.storeURI(), q); r.err == nil {
		t.Errorf("alice sees bob's unsigned path: %s", r.out)
	}
}

// execNixfarm runs the nixfarm binary on the farm's state directory.
func execNixfarm(f *farm, args ...string) (string, error) {
	out, err := exec.Command(nixfarmBin, append(args, "--state-dir", f.stateDir)...).CombinedOutput()
	return string(out), err
}
