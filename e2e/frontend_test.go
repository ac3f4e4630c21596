package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// addAccount authorizes a new key for account and returns an ssh config
// file, like the farm's, that connects as it.
func (f *farm) addAccount(t *testing.T, account string) string {
	t.Helper()
	key := filepath.Join(f.dir, account+"_ed25519")
	authorize(t, f.keysFile, writeKey(t, key), account)
	cfg := filepath.Join(f.dir, account+"_ssh_config")
	text := fmt.Sprintf("Host nixfarm\n    HostName 127.0.0.1\n    Port %s\n    User %s\n    IdentityFile %s\n"+
		"    IdentitiesOnly yes\n    HostKeyAlias nixfarm\n    BatchMode yes\n", f.port, account, key)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// buildCommand returns nix-build of file with the farm as its only
// builder over ssh-ng://, connecting with sshConfig.
func (c *client) buildCommand(ctx context.Context, f *farm, sshConfig, file string) *exec.Cmd {
	return c.command(ctx, []string{"NIX_SSHOPTS=-F " + sshConfig}, "nix-build",
		"--no-out-link", file, "--store", c.store, "--option", "substituters", "",
		"--max-jobs", "0", "--builders", f.builders("ssh-ng"))
}

// timedBuild builds file as the account of sshConfig and returns how long
// it took; it gives up after limit.
func (c *client) timedBuild(f *farm, sshConfig, file string, limit time.Duration) time.Duration {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := c.buildCommand(ctx, f, sshConfig, file)
	cmd.WaitDelay = 5 * time.Second // ssh may outlive a killed nix-build
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if ctx.Err() != nil {
		c.t.Fatalf("building %s took more than %s\nstderr:\n%s", file, limit, stderr.String())
	}
	if err != nil {
		c.t.Fatalf("building %s: %v\nstderr:\n%s\nfarm:\n%s", file, err, stderr.String(), f.logs())
	}
	return took
}

// processTree returns pid and its descendants.
func processTree(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at ')'.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(fields[1]); err == nil {
			children[ppid] = append(children[ppid], p)
		}
	}
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree
}

func signalAll(pids []int, sig syscall.Signal) {
	for _, p := range pids {
		syscall.Kill(p, sig)
	}
}

// waitForLog waits until the farm's output matches s.
func (f *farm) waitForLog(s string, within time.Duration) {
	f.t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(f.logs(), s) {
		if time.Now().After(deadline) {
			f.t.Fatalf("the farm did not log %q within %s:\n%s", s, within, f.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A client that stops reading does not delay another account's build:
// its log stream is cut once it falls behind, its build goes on (the one
// job slot is freed), and its result still reaches it when it reads again.
func TestStalledClientDoesNotDelayOthers(t *testing.T) {
	f := startFarm(t, "--local-jobs", "1")
	bobConfig := f.addAccount(t, "bob")
	alice, bob := newClient(t), newClient(t)

	// Bob's baseline, on an idle farm.
	baseline := bob.timedBuild(f, bobConfig, bob.expr("baseline", `mk { name = "baseline"; args = ["-c" "echo base > $out"]; }`), 5*time.Minute)

	// Alice's build prints 32 MiB of log, more than the farm queues for a
	// client and the SSH and TCP windows hold, after a pause in which
	// her client stops reading.
	const lines, lineLen = 32 << 10, 1024
	hog := alice.expr("hog", fmt.Sprintf(`mk { name = "hog"; args = ["-c" "sleep 2; yes %s | head -n %d; echo done > $out"]; }`,
		strings.Repeat("x", lineLen-1), lines))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := alice.buildCommand(ctx, f, f.sshConfig, hog)
	var aliceErr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &bytes.Buffer{}, &aliceErr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if stopped {
			signalAll(processTree(cmd.Process.Pid), syscall.SIGCONT)
		}
	}()
	f.waitForLog(`msg="build queued" drv=`+alice.instantiate(hog)[0], 2*time.Minute)
	signalAll(processTree(cmd.Process.Pid), syscall.SIGSTOP)
	stopped = true

	// Bob's build waits at most for alice's (the farm builds one at a
	// time), never for her client.
	limit := 5*baseline + 30*time.Second
	took := bob.timedBuild(f, bobConfig, bob.expr("other", `mk { name = "other"; args = ["-c" "echo other > $out"]; }`), limit)
	t.Logf("bob's build: %s alone, %s while alice's client did not read", baseline, took)

	signalAll(processTree(cmd.Process.Pid), syscall.SIGCONT)
	stopped = false
	if err := cmd.Wait(); err != nil {
		t.Fatalf("alice's build, once her client read again: %v\n%s", err, tail(aliceErr.String(), 2000))
	}
	// She was told her log was cut; the farm kept all of it.
	said := aliceErr.String() + alice.nixLog(alice.instantiate(hog)[0])
	if !strings.Contains(said, "log stream of this build was cut") {
		t.Errorf("alice was not told her log stream was cut:\n%s", tail(said, 2000))
	}
	var logBytes int64
	if err := f.db().QueryRow(`SELECT log_bytes FROM builds WHERE drv_path LIKE '%-hog.drv'`).Scan(&logBytes); err != nil {
		t.Fatal(err)
	}
	if logBytes < lines*lineLen {
		t.Errorf("the farm kept %d bytes of alice's log, want at least %d", logBytes, lines*lineLen)
	}
}

func tail(s string, n int) string { return s[max(0, len(s)-n):] }

// raiseNoFile raises this process's soft limit on open files to at least n.
func raiseNoFile(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	if lim.Max < n {
		t.Skipf("the hard limit on open files, %d, is below the %d this test needs", lim.Max, n)
	}
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
}

// With `ulimit -n 1024` and 1,100 idle connections, the farm runs out of
// file descriptors; once they close, it serves again.
func TestServesAgainAfterRunningOutOfFiles(t *testing.T) {
	const conns = 1100
	raiseNoFile(t, 4096)
	f := newFarm(t, nil,
		// The caps would refuse this flood first; here the accept loop
		// itself is put to the test.
		"--max-connections", "5000", "--max-unauthenticated-per-source", "5000", "--handshake-timeout", "10m")
	f.prefix = []string{"prlimit", "--nofile=1024:1024", "--"}
	f.start()
	t.Cleanup(f.stop)
	c := newClient(t)

	var open []net.Conn
	defer func() {
		for _, nc := range open {
			nc.Close()
		}
	}()
	d := net.Dialer{Timeout: 10 * time.Second}
	for i := 0; i < conns; i++ {
		nc, err := d.Dial("tcp", f.addr())
		if err != nil {
			break // the listen queue is full: the farm holds all it can
		}
		open = append(open, nc)
	}
	// The farm runs out of file descriptors (and says so, if it survives).
	for wait := time.Now().Add(30 * time.Second); time.Now().Before(wait) && !strings.Contains(f.logs(), "too many open files"); {
		time.Sleep(50 * time.Millisecond)
	}
	for _, nc := range open {
		nc.Close()
	}
	open = nil

	deadline := time.Now().Add(2 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := c.command(ctx, []string{"NIX_SSHOPTS=-F " + f.sshConfig}, "nix", "store", "ping", "--store", f.storeURI())
		cmd.WaitDelay = 5 * time.Second // ssh may outlive a killed nix
		out, err := cmd.CombinedOutput()
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the farm does not serve after the connections closed: %v\n%s\nfarm:\n%s", err, out, tail(f.logs(), 5000))
		}
		time.Sleep(time.Second)
	}
	if !strings.Contains(f.logs(), "too many open files") {
		t.Errorf("the farm never ran out of file descriptors: the test tested nothing")
	}
	// The line is logged as the accept that succeeds is served: it may
	// reach the farm's output a moment after the client's answer.
	for wait := time.Now().Add(10 * time.Second); !strings.Contains(f.logs(), "accepting connections again"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(wait) {
			t.Errorf("the farm did not log that it accepts connections again")
			break
		}
	}
}
