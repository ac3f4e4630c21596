package e2e

import (
	"bytes"
	"encoding/binary"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// waitOutput waits until an agent has printed want.
func (a *agent) waitOutput(want string) {
	a.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(a.output(), want) {
		if time.Now().After(deadline) {
			a.t.Fatalf("worker %s did not print %q:\n%s\nfarm:\n%s", a.name, want, a.output(), a.f.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// workersCmd runs `nixfarm workers ARGS --state-dir` on the farm's state.
func (f *farm) workersCmd(args ...string) (string, error) {
	out, err := exec.Command(nixfarmBin, append(append([]string{"workers"}, args...), "--state-dir", f.stateDir)...).CombinedOutput()
	return string(out), err
}

// exportOf is `nix-store --export` of p holding nar, with no references:
// Nix's import computes the NAR's hash itself.
func exportOf(p storepath.Path, nar []byte) []byte {
	var b bytes.Buffer
	num := func(n uint64) { binary.Write(&b, binary.LittleEndian, n) }
	str := func(s string) {
		num(uint64(len(s)))
		b.WriteString(s)
		b.Write(make([]byte, (8-len(s)%8)%8))
	}
	num(1) // a path follows
	b.Write(nar)
	num(0x4558494e) // the export magic
	str(string(p))
	num(0)  // references
	str("") // deriver
	num(0)  // no signature
	num(0)  // no more paths
	return b.Bytes()
}

// Nobody takes a worker's name: not the built-in worker's, even with a
// valid credential for another name, nor a connected agent's, even with
// its own credential. The refused agents are told why, the farm logs it,
// and the holders keep serving. Revoking a credential disconnects its
// agent.
func TestWorkerNameTakeover(t *testing.T) {
	f := startFarm(t, "--worker-listen", "127.0.0.1:0")
	if out, err := f.workersCmd("add", "local"); err == nil || !strings.Contains(out, "reserved for the built-in worker") {
		t.Errorf("nixfarm workers add local: %v\n%s", err, out)
	}
	alphaCred := f.issue("alpha")
	alpha := startAgentWith(t, f, "alpha", alphaCred, "--max-jobs", "1")
	f.waitWorkers("local", "alpha")
	var joined time.Time
	for _, w := range f.workers() {
		if w.Name == "alpha" {
			joined = w.Joined
		}
	}

	asLocal := startAgentWith(t, f, "local", alphaCred)
	asLocal.waitOutput("is reserved for the built-in worker")
	twin := startAgentWith(t, f, "alpha", alphaCred)
	twin.waitOutput("worker name alpha is taken by a connected worker; it is not replaced")
	borrowed := startAgentWith(t, f, "alpha", f.issue("beta"))
	borrowed.waitOutput("the credential was issued for another worker name: beta, not alpha")
	for _, want := range []string{`msg="worker refused" worker=local`, `msg="worker refused" worker=alpha`} {
		if !strings.Contains(f.logs(), want) {
			t.Errorf("the farm's log lacks %q", want)
		}
	}

	kinds := map[string]string{}
	for _, w := range f.workers() {
		kinds[w.Name] = w.Kind
		if w.Name == "alpha" && !w.Joined.Equal(joined) {
			t.Errorf("alpha was replaced: joined %v, then %v", joined, w.Joined)
		}
	}
	if len(kinds) != 2 || kinds["local"] != "local" || kinds["alpha"] != "agent" {
		t.Errorf("workers after the attempts: %v", kinds)
	}
	// Both holders still build, and the farm's builds are theirs.
	c := newClient(t)
	file := c.expr("held", `map (n: mk { name = "held-${n}"; args = ["-c" "sleep 1; echo ${n} > $out"]; }) [ "1" "2" "3" "4" ]`)
	r := c.buildWith(f, f.buildersLine("ssh-ng", "x86_64-linux", "", 4), file)
	if r.err != nil {
		t.Fatalf("nix-build: %v\n%s\nfarm:\n%s", r.err, r.stderr, f.logs())
	}
	for w := range f.builtBy() {
		if w != "local" && w != "alpha" {
			t.Errorf("built by %s", w)
		}
	}

	// Revoked: alpha is disconnected and cannot come back.
	if out, err := f.workersCmd("revoke", "alpha"); err != nil {
		t.Fatalf("nixfarm workers revoke alpha: %v\n%s", err, out)
	}
	alpha.waitOutput("credential was revoked")
	deadline := time.Now().Add(30 * time.Second)
	for {
		gone := true
		for _, w := range f.workers() {
			gone = gone && w.Name != "alpha"
		}
		if gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alpha is still a worker after its credential was revoked:\n%s", f.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	alpha.waitOutput("the credential is not valid for worker alpha")
	out, err := f.workersCmd("list")
	if err != nil {
		t.Fatalf("nixfarm workers list: %v\n%s", err, out)
	}
	lines := strings.Split(out, "\n")
	if !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(out, "beta") {
		t.Errorf("nixfarm workers list:\n%s", out)
	}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "alpha" && strings.Count(l, "-") < 4 { // dates have 2 dashes each
			t.Errorf("alpha listed as never revoked or never seen: %q", l)
		}
	}
}

// An agent whose store holds forged bytes under the output's path,
// imported as valid (they mention busybox, and it declares no
// references), fails the attempt: it holds the output before building it,
// which nothing explains, and cannot remove it. Nothing of it is
// registered, and the build completes on the built-in worker, whose
// output the client gets. (An agent that returns a wrong output after
// building is the worker package's TestWrongOutputs: a machine that
// builds nothing and lies about what it returns.)
func TestLyingWorker(t *testing.T) {
	f := startFarm(t, "--worker-listen", "127.0.0.1:0")
	c := newClient(t)
	file := c.expr("lied", `mk { name = "lied-about"; args = ["-c" "echo honest > $out"]; }`)
	drvPath := c.instantiate(file)[0]
	d, err := derivation.Parse([]byte(c.read(drvPath)))
	if err != nil {
		t.Fatal(err)
	}
	out := storepath.Path(d.Outputs["out"].Path)

	// The liar's store holds a forged output, registered as valid with
	// no references; Nix computes its hash from the forged bytes, so
	// only the references betray it.
	liarStore := filepath.Join(t.TempDir(), "liar-store")
	imp := exec.Command("nix-store", "--store", liarStore, "--import")
	imp.Stdin = bytes.NewReader(exportOf(out, testutil.FileNar("forged, mentioning "+c.bb+"\n")))
	if b, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("importing the forged output: %v\n%s", err, b)
	}

	// Fastest by far, so it is asked first.
	liar := startAgent(t, f, "liar", "--store", liarStore, "--speed-factor", "100", "--max-jobs", "1")
	f.waitWorkers("local", "liar")
	r := c.buildWith(f, f.buildersLine("ssh-ng", "x86_64-linux", "", 4), file)
	if r.err != nil {
		t.Fatalf("nix-build: %v\n%s\nfarm:\n%s\nliar:\n%s", r.err, r.stderr, f.logs(), liar.output())
	}
	if got := c.read(r.out); got != "honest\n" {
		t.Errorf("the client got %q", got)
	}
	c.verify(r.out)
	if got := f.workerOf("lied-about"); got != "local" {
		t.Errorf("built by %s", got)
	}
	logs := f.logs()
	for _, want := range []string{"the worker holds other contents under a path of the build: " + string(out), "build will be retried"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the farm's log lacks %q", want)
		}
	}
	for _, w := range f.workers() {
		if w.Name == "liar" && w.ConsecutiveFailures != 1 {
			t.Errorf("the liar has %d consecutive failures, want 1", w.ConsecutiveFailures)
		}
	}
}
