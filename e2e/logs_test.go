package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/records"
)

// recordOf waits for the record of the build of the derivation named
// name to appear, and returns it.
func recordOf(t *testing.T, f *farm, name string) records.Record {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		out, err := f.cli("builds", "--json", "--drv", name)
		if err != nil {
			continue // the database may be busy
		}
		if list := byName(decodePage(t, "nixfarm builds", out), name); len(list) > 0 {
			return list[0]
		}
	}
	t.Fatalf("no record of %s\nfarm:\n%s", name, f.logs())
	return records.Record{}
}

// A build's log is kept compressed (zstd) and read back by `nixfarm logs`
// (state dir, by id or derivation; over SSH, the account's own only) and
// GET /api/v1/builds/{id}/log; `nixfarm logs --follow` streams a build
// under way and exits with its status.
func TestBuildLogs(t *testing.T) {
	f := startFarm(t)
	c := newClient(t)
	bad := c.expr("log-bad", `mk { name = "log-bad"; args = ["-c" "echo known line one; echo known line two >&2; exit 1"]; }`)
	if r := c.build(f, "ssh-ng", bad); r.err == nil {
		t.Fatal("the failing build succeeded")
	}
	rec := recordOf(t, f, "log-bad")
	id := strconv.FormatInt(rec.ID, 10)
	hasLines := func(what, log string) {
		t.Helper()
		if !strings.Contains(log, "known line one\n") || !strings.Contains(log, "known line two\n") {
			t.Errorf("%s:\n%s", what, log)
		}
	}
	hasLines("nixfarm logs ID", f.mustCLI("logs", id))
	hasLines("nixfarm logs DRV", f.mustCLI("logs", rec.DrvPath))
	raw, err := os.ReadFile(filepath.Join(f.stateDir, "logs", id+".log"))
	if err != nil || !bytes.HasPrefix(raw, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
		t.Errorf("the log file (%v) starts with %x, not the zstd magic", err, raw[:min(len(raw), 4)])
	}
	// --follow of a build that ended: its log, and exit 1 (it failed).
	out, err := f.cli("logs", "--follow", id)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Errorf("nixfarm logs --follow of a failed build: %v", err)
	}
	hasLines("nixfarm logs --follow ID", out)

	token, err := os.ReadFile(filepath.Join(f.stateDir, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	code, body := get(t, f.apiURL+"/api/v1/builds/"+id+"/log", strings.TrimSpace(string(token)))
	if code != 200 {
		t.Errorf("GET /api/v1/builds/%s/log: %d %s", id, code, body)
	}
	hasLines("/api/v1/builds/ID/log", body)

	// Over SSH: alice reads hers; bob's key finds no such build.
	sout, serr, scode := sshCmd(f, "nixfarm", "nixfarm", "logs", id)
	if scode != 0 {
		t.Errorf("alice's ssh nixfarm logs: exit %d\n%s", scode, serr)
	}
	hasLines("alice's ssh nixfarm logs", sout)
	f.mustCLI("accounts", "add", "bob")
	bob, _ := asAccount(t, f, "bob")
	if sout, serr, scode := sshCmd(bob, "nixfarm", "nixfarm", "logs", id); scode == 0 || !strings.Contains(serr, "not found") || strings.Contains(sout, "known line") {
		t.Errorf("bob's ssh nixfarm logs of alice's build: exit %d\n%s%s", scode, sout, serr)
	}

	// A slow build, followed while it runs: its first line arrives before
	// it ends, and the follower exits when it does.
	slow := c.expr("log-slow", `mk { name = "log-slow"; args = ["-c" "echo slow first line; sleep 3; echo slow last line; echo > $out"]; }`)
	built := make(chan result, 1)
	go func() { built <- c.build(f, "ssh-ng", slow) }()
	srec := recordOf(t, f, "log-slow")
	cmd := exec.Command(nixfarmBin, "logs", "--state-dir", f.stateDir, "--follow", strconv.FormatInt(srec.ID, 10))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	var lines []string
	sawFirstWhileRunning := false
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if strings.Contains(sc.Text(), "slow first line") {
			// Its record says it runs still (it sleeps 3 s more).
			if now := recordOf(t, f, "log-slow"); now.Status.Final() {
				t.Errorf("the first line arrived after the build ended (%s)", now.Status)
			} else {
				sawFirstWhileRunning = true
			}
		}
	}
	err = cmd.Wait()
	r := <-built
	if r.err != nil {
		t.Fatalf("the slow build failed: %v\n%s", r.err, r.stderr)
	}
	log := strings.Join(lines, "\n")
	if err != nil || !sawFirstWhileRunning || !strings.Contains(log, "slow last line") {
		t.Errorf("nixfarm logs --follow: %v, first line while running %v\n%s\nstderr:\n%s", err, sawFirstWhileRunning, log, stderr.String())
	}
}
