package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/account"
)

// cli runs the nixfarm binary's account commands on the farm's state.
func (f *farm) cli(args ...string) (string, error) {
	f.t.Helper()
	cmd := exec.Command(nixfarmBin, append(args, "--state-dir", f.stateDir)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (f *farm) mustCLI(args ...string) string {
	f.t.Helper()
	out, err := f.cli(args...)
	if err != nil {
		f.t.Fatalf("nixfarm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// asAccount returns the farm as reached with another key: a new key added
// to account with `nixfarm keys add`, and an ssh config using it.
func asAccount(t *testing.T, f *farm, name string) (*farm, ssh.PublicKey) {
	t.Helper()
	key := filepath.Join(f.dir, name+"_ed25519")
	pub := writeKey(t, key)
	if err := os.WriteFile(key+".pub", ssh.MarshalAuthorizedKey(pub), 0o600); err != nil {
		t.Fatal(err)
	}
	f.mustCLI("keys", "add", "--account", name, key+".pub")
	cfg, err := os.ReadFile(f.sshConfig)
	if err != nil {
		t.Fatal(err)
	}
	other := &farm{t: t, dir: f.dir, stateDir: f.stateDir, port: f.port, hostKeyB64: f.hostKeyB64, apiURL: f.apiURL,
		sshConfig: filepath.Join(f.dir, name+"_ssh_config")}
	if err := os.WriteFile(other.sshConfig, []byte(strings.Replace(string(cfg), f.clientKey, key, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	return other, pub
}

type whoami struct {
	Account     string `json:"account"`
	Fingerprint string `json:"fingerprint"`
	Limits      map[string]struct {
		Value   int64 `json:"value"`
		Default bool  `json:"default"`
	} `json:"limits"`
	Usage      account.Usage `json:"usage"`
	SigningKey string        `json:"signingKey"`
}

func whoamiJSON(t *testing.T, f *farm) whoami {
	t.Helper()
	out, stderr, code := sshCmd(f, "nixfarm", "nixfarm", "whoami", "--json")
	if code != 0 {
		t.Fatalf("whoami: exit %d\n%s", code, stderr)
	}
	var w whoami
	if err := json.Unmarshal([]byte(out), &w); err != nil {
		t.Fatalf("whoami --json: %v\n%s", err, out)
	}
	return w
}

// addFile adds a file of n bytes (named for its contents) to the client's
// store and returns its path.
func (c *client) addFile(name string, n int) string {
	c.t.Helper()
	p := filepath.Join(c.dir, name)
	data := bytes.Repeat([]byte(name+"\n"), n/(len(name)+1)+1)[:n]
	if err := os.WriteFile(p, data, 0o644); err != nil {
		c.t.Fatal(err)
	}
	return strings.TrimSpace(c.mustRun(nil, "nix-store", "--store", c.store, "--add", p))
}

// Accounts managed with the CLI: a key added with `nixfarm keys add`
// works, whoami shows the account, its key and limits, each limit set with
// `nixfarm accounts set-limits` is reached and reported to the client in
// words naming it, and a removed key is refused.
func TestAccountLimits(t *testing.T) {
	f := startFarm(t)
	f.mustCLI("accounts", "add", "carol")
	carol, pub := asAccount(t, f, "carol")
	f.mustCLI("accounts", "set-limits", "carol", "--max-upload-size", "4MiB", "--max-output-size", "64K",
		"--max-log-size", "4K", "--max-concurrent-builds", "1", "--max-queued-builds", "1")

	// whoami shows the account, the key of this connection and the limits.
	out, stderr, code := sshCmd(carol, "nixfarm", "nixfarm", "whoami")
	if code != 0 {
		t.Fatalf("whoami: exit %d\n%s", code, stderr)
	}
	for _, want := range []string{"account:      carol", ssh.FingerprintSHA256(pub), "max-upload-size        4 MiB      (account)",
		"max-log-size           4 KiB      (account)", "max-stored-bytes       unlimited  (default)"} {
		if !strings.Contains(out, want) {
			t.Errorf("whoami lacks %q:\n%s", want, out)
		}
	}
	if w := whoamiJSON(t, f); w.Account != "alice" || !w.Limits["max-upload-size"].Default {
		t.Errorf("alice's whoami: %+v", w)
	}

	c := newClient(t)
	t.Run("upload", func(t *testing.T) {
		big := c.addFile("big-upload", 6<<20)
		for _, scheme := range []string{"ssh-ng", "ssh"} {
			_, stderr, err := c.nixErr(carol, "copy", "--store", c.store, "--to", carol.storeURIFor(scheme), big)
			want := fmt.Sprintf("upload of %s refused: 6 MiB is over the account's upload limit (max-upload-size = 4 MiB); the farm's operator can raise it: nixfarm accounts set-limits ACCOUNT --max-upload-size N", big)
			if err == nil || !strings.Contains(stderr, want) {
				t.Errorf("nix copy over %s of a path over the limit: %v\n%s", scheme, err, stderr)
			}
		}
		// Alice has the default limit.
		c.nix(f, "copy", "--store", c.store, "--to", f.storeURI(), big)
	})
	t.Run("output", func(t *testing.T) {
		file := c.expr("big-output", `mk { name = "big-output"; args = ["-c" "yes big-output | head -c 200000 > $out"]; }`)
		r := c.build(carol, "ssh-ng", file)
		if r.err == nil || !strings.Contains(r.stderr, "is over the account's output limit (max-output-size = 64 KiB)") {
			t.Errorf("a build with an output over the limit: %v\n%s", r.err, r.stderr)
		}
		drv := c.instantiate(file)[0]
		var attempts int
		f.db().QueryRow(`SELECT count(*) FROM builds WHERE drv_path = ?`, drv).Scan(&attempts)
		if attempts != 1 || strings.Count(f.logs(), "build will be retried") > 0 {
			t.Errorf("the build over the output limit was recorded %d times or retried", attempts)
		}
	})
	t.Run("log", func(t *testing.T) {
		file := c.expr("long-log", `mk { name = "long-log"; args = ["-c" "i=0; while [ $i -lt 400 ]; do echo log-line-$i; i=$((i+1)); done; echo done > $out"]; }`)
		c.mustBuild(carol, "ssh-ng", file)
		log := c.nixLog(c.instantiate(file)[0])
		if !strings.Contains(log, "log-line-0\n") || strings.Contains(log, "log-line-399") ||
			!strings.Contains(log, "nixfarm: log truncated at 4 KiB (the account's log limit, max-log-size)") {
			t.Errorf("nix log of a build over the log limit:\n%s", log)
		}
	})
	t.Run("queued", func(t *testing.T) {
		// A blocks the account's one running slot until it is killed;
		// B waits in the queue; C is over the queue cap.
		marker := fmt.Sprintf("nixfarm-queue-blocker-%d", time.Now().UnixNano())
		blocker := c.expr("blocker", fmt.Sprintf(`mk { name = "blocker"; args = ["-c" "sleep 600 # %s\necho > $out"]; }`, marker))
		waiter := c.expr("waiter", `mk { name = "waiter"; args = ["-c" "echo waited > $out"]; }`)
		refused := c.expr("refused", `mk { name = "refused"; args = ["-c" "echo > $out"]; }`)
		done := make(chan result, 2)
		go func() { done <- c.build(carol, "ssh-ng", blocker) }()
		waitUntil(t, f, "the blocker runs", func() bool { return whoamiJSON(t, carol).Usage.Running == 1 })
		go func() { done <- c.build(carol, "ssh-ng", waiter) }()
		waitUntil(t, f, "the waiter is queued", func() bool { return whoamiJSON(t, carol).Usage.Queued == 1 })
		r := c.build(carol, "ssh-ng", refused)
		if r.err == nil || !strings.Contains(r.stderr, "refused: the account has 1 builds queued already, its limit (max-queued-builds = 1); wait for some to finish, or ask the farm's operator to raise it: nixfarm accounts set-limits ACCOUNT --max-queued-builds N") {
			t.Errorf("a build over the queue cap: %v\n%s", r.err, r.stderr)
		}
		killMarked(t, marker)
		results := []result{<-done, <-done}
		var ok int
		for _, r := range results {
			if r.err == nil {
				ok++
				if got := c.read(r.out); got != "waited\n" {
					t.Errorf("the queued build's output: %q", got)
				}
			}
		}
		if ok != 1 {
			t.Errorf("%d of the blocker and the queued build succeeded, want the queued one", ok)
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		// Two builds sent at once run one after the other: each writes
		// the machine's uptime when it starts and stops.
		file := c.expr("serial", `map (i: mk { name = "serial-${toString i}"; args = ["-c" "cut -d' ' -f1 /proc/uptime > $out; sleep 1; cut -d' ' -f1 /proc/uptime >> $out"]; }) [ 1 2 ]`)
		outs := c.mustBuild(carol, "ssh-ng", file)
		type span struct{ start, stop float64 }
		var spans []span
		for _, o := range outs {
			fields := strings.Fields(c.read(o))
			if len(fields) != 2 {
				t.Fatalf("output %q", c.read(o))
			}
			a, _ := strconv.ParseFloat(fields[0], 64)
			b, _ := strconv.ParseFloat(fields[1], 64)
			spans = append(spans, span{a, b})
		}
		sort.Slice(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
		if spans[1].start < spans[0].stop {
			t.Errorf("two builds of an account with max-concurrent-builds 1 overlapped: %v", spans)
		}
	})
	t.Run("stored", func(t *testing.T) {
		used := whoamiJSON(t, carol).Usage.StoredBytes
		if used < 1<<20 {
			t.Fatalf("carol stores %d bytes; busybox at least was uploaded", used)
		}
		f.mustCLI("accounts", "set-limits", "carol", "--max-stored-bytes", strconv.FormatInt(used+1024, 10))
		if w := whoamiJSON(t, carol); w.Limits["max-stored-bytes"].Value != used+1024 {
			t.Fatalf("whoami after set-limits: %+v", w.Limits)
		}
		small := c.addFile("small-upload", 512)
		c.nix(carol, "copy", "--store", c.store, "--to", carol.storeURI(), small)
		more := c.addFile("one-more-upload", 4096)
		_, stderr, err := c.nixErr(carol, "copy", "--store", c.store, "--to", carol.storeURI(), more)
		if err == nil || !strings.Contains(stderr, "upload of "+more+" refused") || !strings.Contains(stderr, "over its limit (max-stored-bytes = ") {
			t.Errorf("an upload over the stored-bytes limit: %v\n%s", err, stderr)
		}
	})

	// A removed key is refused from the next connection on.
	f.mustCLI("keys", "remove", "--account", "carol", ssh.FingerprintSHA256(pub))
	if _, stderr, code := sshCmd(carol, "nixfarm", "nixfarm", "whoami"); code == 0 || !strings.Contains(stderr, "is not authorized") {
		t.Errorf("a removed key: exit %d\n%s", code, stderr)
	}
	// CLI errors are clear.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"accounts", "add", "Bad/Name"}, "invalid account name"},
		{[]string{"keys", "add", "--account", "nobody", filepath.Join(f.dir, "carol_ed25519.pub")}, `no such account "nobody"`},
		{[]string{"accounts", "set-limits", "carol", "--max-upload-size", "lots"}, "invalid max-upload-size"},
	} {
		if out, err := f.cli(tc.args...); err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("nixfarm %v: %v\n%s", tc.args, err, out)
		}
	}
}

// waitUntil polls cond for up to a minute.
func waitUntil(t *testing.T, f *farm, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within a minute\n%s", what, f.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// killMarked kills the processes whose command line holds marker.
func killMarked(t *testing.T, marker string) {
	t.Helper()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	killed := 0
	for _, d := range dirs {
		cmdline, err := os.ReadFile(d + "/cmdline")
		if err != nil || !strings.Contains(string(cmdline), marker) || strings.Contains(string(cmdline), "nix-build") {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(d)); err == nil && syscall.Kill(pid, syscall.SIGKILL) == nil {
			killed++
		}
	}
	if killed == 0 {
		t.Fatalf("no process with %s to kill", marker)
	}
}
