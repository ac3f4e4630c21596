package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// The doctor's tests set a client up for real, break one thing at a time,
// and check that nixfarm doctor names the cause and the fix, and exits
// non-zero. Each client is a machine of its own: its own nix-daemon, an
// ordinary user, and root's ssh in its own /root (daemon_harness_test.go).

// doctorReport is nixfarm doctor --json.
type doctorReport struct {
	OK     bool `json:"ok"`
	Checks []struct {
		ID      string `json:"id"`
		Status  string `json:"status"`
		AsUser  string `json:"asUser"`
		ForUser string `json:"forUser"`
		Detail  string `json:"detail"`
		Problem string `json:"problem"`
		Why     string `json:"why"`
		Fix     string `json:"fix"`
	} `json:"checks"`
}

type doctorRun struct {
	report doctorReport
	text   string // the whole JSON, for messages
	code   int
}

// check returns the first check with id, failing the test if none.
func (r *doctorRun) check(t *testing.T, id string) (status, problem, fix string) {
	t.Helper()
	for _, c := range r.report.Checks {
		if c.ID == id {
			return c.Status, c.Problem + "\n" + c.Why + "\n" + c.Detail, c.Fix
		}
	}
	t.Fatalf("doctor ran no %q check:\n%s", id, r.text)
	return
}

// mustFail checks that the check id failed (status want: "fail" or
// "warn") naming each of problem, with a fix naming each of fix, and that
// doctor's exit status says remote builds will not work.
func (r *doctorRun) mustFail(t *testing.T, id string, problem, fix []string) {
	t.Helper()
	if r.code != 1 || r.report.OK {
		t.Errorf("doctor exited %d (ok %v), want 1:\n%s", r.code, r.report.OK, r.text)
	}
	status, p, f := r.check(t, id)
	if status != "fail" {
		t.Errorf("check %s is %q, want fail:\n%s", id, status, r.text)
	}
	for _, w := range problem {
		if !strings.Contains(p, w) {
			t.Errorf("check %s does not say %q:\n%s", id, w, p)
		}
	}
	for _, w := range fix {
		if !strings.Contains(f, w) {
			t.Errorf("check %s's fix does not say %q:\n%s", id, w, f)
		}
	}
}

// doctor runs nixfarm doctor --json in the client, as root checking the
// test user's builds (asUser: as the test user itself).
func (c *client) doctor(asUser bool, args ...string) *doctorRun {
	c.t.Helper()
	return c.doctorEnv(asUser, nil, args...)
}

// doctorEnv is doctor with env added to the user's environment.
func (c *client) doctorEnv(asUser bool, env []string, args ...string) *doctorRun {
	c.t.Helper()
	bin := c.installNixfarm()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var cmd *exec.Cmd
	args = append([]string{"doctor", "--json", "--timeout", "60s"}, args...)
	if asUser {
		cmd = c.userCommand(ctx, env, bin, args...)
	} else {
		cmd = c.command(ctx, nil, bin, append(args, "--user", testUserName)...)
	}
	out, err := cmd.Output()
	r := &doctorRun{text: string(out)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
		r.text += "\n" + string(ee.Stderr)
	} else if err != nil {
		c.t.Fatalf("nixfarm doctor: %v", err)
	}
	if err := json.Unmarshal(out, &r.report); err != nil {
		c.t.Fatalf("nixfarm doctor --json printed no report (%v):\n%s", err, r.text)
	}
	return r
}

// clientConfig runs nixfarm client-config --apply on the client's root from
// outside it (--root), as an image builder would, and returns its output.
func (c *client) clientConfig(f *farm, extra ...string) string {
	c.t.Helper()
	args := append([]string{"client-config", "--farm", f.addr(), "--account", "alice", "--apply", "--root", c.root}, extra...)
	out, err := exec.Command(nixfarmBin, args...).CombinedOutput()
	if err != nil {
		c.t.Fatalf("nixfarm client-config: %v\n%s", err, out)
	}
	return string(out)
}

// configured is a client set up the documented way: client-config, the
// operator adds the key it made, client-config again (the farm's real
// systems), and the daemon restarted.
func configured(t *testing.T, f *farm, v *nixVersion) (*client, *nixDaemon) {
	t.Helper()
	testUser(t)
	c := newClientOf(t, v)
	c.setNixConf("")
	d := c.startDaemon()
	c.userHome()
	first := c.clientConfig(f)
	if !strings.Contains(first, "nixfarm keys add --account alice -") {
		t.Fatalf("client-config does not give the operator's command for a new key:\n%s", first)
	}
	pub, err := os.ReadFile(c.realPath("/root/.ssh/nixfarm_ed25519.pub"))
	if err != nil {
		t.Fatalf("client-config made no key for root: %v\n%s", err, first)
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(first, "echo '"+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))) {
		t.Errorf("client-config's command does not carry the new key:\n%s", first)
	}
	authorize(t, f.keysFile, key, "alice")
	// The operator gave the fingerprint: a farm with another key is refused.
	hostKeyLine, _ := base64.StdEncoding.DecodeString(f.hostKeyB64)
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey(hostKeyLine)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(nixfarmBin, "client-config", "--farm", f.addr(), "--root", c.root, "--apply", "--host-key", "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "refusing it") {
		t.Errorf("client-config took a host key other than --host-key's: %v\n%s", err, out)
	}
	second := c.clientConfig(f, "--host-key", ssh.FingerprintSHA256(hostKey))
	if !strings.Contains(second, "The farm accepts the key") || !strings.Contains(second, "updated /etc/nix/nix.conf") {
		t.Fatalf("the second client-config did not take the farm's pool:\n%s", second)
	}
	d.restart()
	return c, d
}

// With client-config's set-up, a stock Nix builds through the farm and
// doctor passes, test builds included; a third client-config changes
// nothing.
func TestDoctorPasses(t *testing.T) { forClients(t, testDoctorPasses) }

func testDoctorPasses(t *testing.T, v *nixVersion) {
	f := startFarm(t)
	c, _ := configured(t, f, v)

	conf := c.read("/etc/nix/nix.conf")
	if !regexp.MustCompile(`(?m)^builders = ssh-ng://nixfarm \S*x86_64-linux\S* /root/.ssh/nixfarm_ed25519 4 1 \S+ - ` + regexp.QuoteMeta(f.hostKeyB64) + `$`).MatchString(conf) {
		t.Errorf("nix.conf's builders line:\n%s", conf)
	}
	sshConf := c.read("/root/.ssh/config")
	for _, want := range []string{"Host nixfarm", "Port " + f.port, "ServerAliveInterval 15", "ServerAliveCountMax 4", "BatchMode yes"} {
		if !strings.Contains(sshConf, want) {
			t.Errorf("root's ssh config lacks %q:\n%s", want, sshConf)
		}
	}

	// A stock build, as the user, through the daemon.
	file := c.userExpr("doctor-stock", `mk { name = "doctor-stock"; args = ["-c" "echo via client-config > $out"]; }`)
	drv := strings.TrimSpace(c.mustUserRun(nil, "nix-instantiate", file))
	out := strings.TrimSpace(c.mustUserRun(nil, "nix-build", "--no-out-link", "--max-jobs", "0", file))
	if got := c.read(out); got != "via client-config\n" {
		t.Errorf("the output holds %q", got)
	}
	if n := f.builtCount(drv); n != 1 {
		t.Errorf("the farm built %s %d times, want 1", drv, n)
	}

	r := c.doctor(false)
	if r.code != 0 || !r.report.OK {
		t.Fatalf("doctor fails a working set-up (exit %d):\n%s", r.code, r.text)
	}
	for _, id := range []string{"nix", "settings", "trust", "key", "reach", "hostkey", "login", "account", "offer", "build-remote"} {
		if status, p, _ := r.check(t, id); status != "ok" {
			t.Errorf("check %s: %s\n%s", id, status, p)
		}
	}
	if status, _, _ := r.check(t, "build-store"); status == "fail" || status == "skip" {
		t.Errorf("the remote-store test build: %s\n%s", status, r.text)
	}
	for _, c := range r.report.Checks {
		if c.ID == "key" && (c.ForUser != "root" || !strings.Contains(c.Detail, "/root/.ssh/nixfarm_ed25519")) {
			t.Errorf("the key check is not about root's key: %+v", c)
		}
		if c.ID == "build-remote" && c.AsUser != testUserName {
			t.Errorf("the test build ran as %s, not the user", c.AsUser)
		}
	}
	if n := strings.Count(f.logs(), "nixfarm-doctor-probe.drv"); n == 0 {
		t.Errorf("the farm saw no test build")
	}

	// For people: the same checks, one line each, and the verdict.
	bin := c.installNixfarm()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	text, err := c.command(ctx, nil, bin, "doctor", "--user", testUserName).CombinedOutput()
	if err != nil || !strings.Contains(string(text), "Remote builds work") || !strings.Contains(string(text), "[ok  ] 1. Nix is installed") {
		t.Errorf("doctor's report (%v):\n%s", err, text)
	}
	t.Logf("nixfarm doctor on %s:\n%s", v.name, text)

	// Again: nothing changes, no backup is made.
	before, _ := os.ReadDir(c.realPath("/etc/nix"))
	again := c.clientConfig(f)
	after, _ := os.ReadDir(c.realPath("/etc/nix"))
	if strings.Contains(again, "updated") || strings.Contains(again, "wrote") || len(before) != len(after) {
		t.Errorf("a third client-config changed files:\n%s", again)
	}
}

// Each broken set-up, on the clients in turn.
func TestDoctorDiagnoses(t *testing.T) {
	f := startFarm(t)
	version := func(i int) *nixVersion { return nixVersions[i%len(nixVersions)] }
	cases := []struct {
		name string
		test func(t *testing.T, v *nixVersion)
	}{
		{"root-has-no-key", func(t *testing.T, v *nixVersion) {
			c, _ := configured(t, f, v)
			os.Remove(c.realPath("/root/.ssh/nixfarm_ed25519"))
			os.Remove(c.realPath("/root/.ssh/nixfarm_ed25519.pub"))
			// The user's own key, which the daemon never uses.
			home := c.userHome()
			os.MkdirAll(c.realPath(home+"/.ssh"), 0o700)
			writeKey(t, c.realPath(home+"/.ssh/id_ed25519"))
			r := c.doctor(false)
			r.mustFail(t, "key", []string{"root has no SSH key", home + "/.ssh/id_ed25519", "nix-daemon runs ssh as root"},
				[]string{"ssh-keygen -t ed25519 -N ''", "client-config --farm"})
			status, p, _ := r.check(t, "build-remote")
			if status != "fail" {
				t.Errorf("the test build: %s\n%s", status, p)
			}
		}},
		{"passphrase", func(t *testing.T, v *nixVersion) {
			c, _ := configured(t, f, v)
			_, priv, _ := ed25519.GenerateKey(rand.Reader)
			block, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("secret"))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(c.realPath("/root/.ssh/nixfarm_ed25519"), pem.EncodeToMemory(block), 0o600); err != nil {
				t.Fatal(err)
			}
			r := c.doctor(false, "--no-build")
			r.mustFail(t, "key", []string{"has a passphrase", "/root/.ssh/nixfarm_ed25519", "no terminal"}, []string{"without a passphrase", "ssh-keygen"})
		}},
		{"unknown-host-key", func(t *testing.T, v *nixVersion) {
			c, d := configured(t, f, v)
			// The builders line without its 8th field, and no known_hosts.
			conf := c.read("/etc/nix/nix.conf")
			c.setNixConf(regexp.MustCompile(`(?m)^(builders = .*) \S+$`).ReplaceAllString(extractBlock(conf), "$1"))
			os.Remove(c.realPath("/root/.ssh/known_hosts"))
			d.restart()
			r := c.doctor(false)
			r.mustFail(t, "hostkey", []string{"does not know the farm's host key", "Host key verification failed"}, []string{"8th field", f.hostKeyB64})
		}},
		{"key-not-authorized", func(t *testing.T, v *nixVersion) {
			c, _ := configured(t, f, v)
			// A new key, which the farm's operator has not added.
			os.Remove(c.realPath("/root/.ssh/nixfarm_ed25519"))
			pub := writeKey(t, c.realPath("/root/.ssh/nixfarm_ed25519"))
			os.WriteFile(c.realPath("/root/.ssh/nixfarm_ed25519.pub"), ssh.MarshalAuthorizedKey(pub), 0o644)
			line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
			r := c.doctor(false)
			r.mustFail(t, "login", []string{"the farm does not know root's key", "/root/.ssh/nixfarm_ed25519"},
				[]string{"echo '" + line, "nixfarm keys add --account NAME -"})
		}},
		{"farm-not-running", func(t *testing.T, v *nixVersion) {
			c, _ := configured(t, f, v)
			port := deadPort(t)
			setSSHPort(t, c, f.port, port)
			r := c.doctor(false)
			r.mustFail(t, "reach", []string{"nothing listens at 127.0.0.1:" + port, "refused"}, []string{"start the farm"})
		}},
		{"port-never-answers", func(t *testing.T, v *nixVersion) {
			c, _ := configured(t, f, v)
			port := silentPort(t)
			setSSHPort(t, c, f.port, port)
			r := c.doctor(false)
			r.mustFail(t, "reach", []string{"did not answer as an SSH server", "hangs"}, []string{"the farm's SSH port"})
		}},
		{"system-and-feature-not-offered", func(t *testing.T, v *nixVersion) {
			c, _ := configured(t, f, v)
			for _, tc := range []struct{ name, attrs, want string }{
				{"arm", `system = "aarch64-linux";`, "aarch64-linux machine"},
				{"cuda", `requiredSystemFeatures = [ "cuda" ];`, "features {cuda}"},
			} {
				file := c.userExpr("doctor-"+tc.name, fmt.Sprintf(`mk { name = "doctor-%s"; %s args = ["-c" "true"]; }`, tc.name, tc.attrs))
				drv := strings.TrimSpace(c.mustUserRun(nil, "nix-instantiate", file))
				r := c.doctor(false, "--no-build", "--drv", drv)
				r.mustFail(t, "drv", []string{"no farm worker can build it", tc.want, "x86_64-linux"}, []string{"ask the farm's operator for such a worker"})
			}
		}},
		{"untrusted-builders", func(t *testing.T, v *nixVersion) {
			testUser(t)
			c := newClientOf(t, v)
			c.setNixConf("max-jobs = 0\n")
			c.startDaemon()
			builders := c.rootSSH(f, "ssh-ng")
			r := c.doctorEnv(true, []string{"NIX_CONFIG=builders-use-substitutes = true"}, "--builders", builders)
			r.mustFail(t, "trust", []string{"your builders setting", "--builders", "not a trusted user", "ignored too: builders-use-substitutes = true"}, []string{"/etc/nix/nix.conf", "trusted-users"})
			if status, _, _ := r.check(t, "key"); status != "skip" {
				t.Errorf("doctor, not root, claims to have checked root's key: %s", status)
			}
			if status, _, _ := r.check(t, "build-remote"); status != "fail" {
				t.Errorf("the test build with ignored --builders: %s\n%s", status, r.text)
			}
		}},
		{"daemon-not-restarted", func(t *testing.T, v *nixVersion) {
			c, d := configured(t, f, v)
			conf := extractBlock(c.read("/etc/nix/nix.conf"))
			c.setNixConf("")
			d.restart()
			// doctor allows a second between a daemon's start and an edit
			// it missed: set-up tools edit and restart at once.
			time.Sleep(1500 * time.Millisecond)
			c.setNixConf(conf) // the set-up, but the daemon still has none
			r := c.doctor(false)
			r.mustFail(t, "settings", []string{"/etc/nix/nix.conf changed at", "after nix-daemon (pid", "reads nix.conf only when it starts"}, []string{"nix-daemon"})
			if status, _, _ := r.check(t, "build-remote"); status != "fail" {
				t.Errorf("the test build with a stale daemon: %s\n%s", status, r.text)
			}
			d.restart()
			if r := c.doctor(false, "--no-build"); !r.report.OK {
				t.Errorf("doctor still fails after the restart:\n%s", r.text)
			}
		}},
		{"max-jobs-foreign-system", func(t *testing.T, v *nixVersion) {
			c, d := configured(t, f, v)
			// This machine now calls itself aarch64-linux, and may build.
			c.setNixConf(extractBlock(c.read("/etc/nix/nix.conf")) + "system = aarch64-linux\nextra-platforms =\nmax-jobs = 2\n")
			d.restart()
			file := c.userExpr("doctor-foreign", `mk { name = "doctor-foreign"; args = ["-c" "true"]; }`)
			drv := strings.TrimSpace(c.mustUserRun(nil, "nix-instantiate", file))
			r := c.doctor(false, "--no-build", "--drv", drv)
			r.mustFail(t, "drv", []string{"max-jobs is 2", "aarch64-linux", "is required to build", "the farm takes it"}, []string{"--max-jobs 0"})
		}},
	}
	for i, tc := range cases {
		v := version(i)
		t.Run(tc.name+"/"+v.name, func(t *testing.T) { tc.test(t, v) })
	}
}

// extractBlock is client-config's managed block of a nix.conf.
func extractBlock(conf string) string {
	i := strings.Index(conf, "# nixfarm client-config: begin")
	if i < 0 {
		return ""
	}
	return conf[i:]
}

// setSSHPort points root's "Host nixfarm" at another port.
func setSSHPort(t *testing.T, c *client, from, to string) {
	t.Helper()
	p := c.realPath("/root/.ssh/config")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(data), "Port "+from+"\n", "Port "+to+"\n", 1)
	if changed == string(data) {
		t.Fatalf("root's ssh config has no Port %s:\n%s", from, data)
	}
	if err := os.WriteFile(p, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
}

// deadPort is a loopback port nothing listens on.
func deadPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	return port
}

// silentPort accepts connections and never says a word.
func silentPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}
