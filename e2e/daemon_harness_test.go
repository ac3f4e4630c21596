package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A client as a machine with Nix installed the usual way: its own
// nix-daemon, running as root and configured by the client's
// /etc/nix/nix.conf, and an ordinary user whose Nix goes through it.
// The daemon's remote builds reach the farm with what root's ssh finds in
// the client's /root/.ssh, as an administrator would set it up.

// daemonSocket is the client's daemon socket, inside its root: Nix's
// default, private to the client's overlay.
const daemonSocket = "/nix/var/nix/daemon-socket/socket"

// baseNixConf is what every client's /etc/nix/nix.conf holds (as
// scripts/nix-clients.sh writes it): no sandbox, no substituters (this
// machine has no internet), the nix command.
const baseNixConf = "sandbox = false\nsubstituters =\nexperimental-features = nix-command\n"

// setNixConf writes the client's /etc/nix/nix.conf: baseNixConf, then
// extra (whole lines). A running daemon reads it only when it starts
// (nixDaemon.restart).
func (c *client) setNixConf(extra string) {
	c.t.Helper()
	text := "# Written by the end-to-end tests.\n" + baseNixConf + extra
	if extra != "" && !strings.HasSuffix(extra, "\n") {
		text += "\n"
	}
	if err := os.WriteFile(c.realPath("/etc/nix/nix.conf"), []byte(text), 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// nixDaemon is a client's own nix-daemon, running as root in its root.
type nixDaemon struct {
	c      *client
	cmd    *exec.Cmd
	exited chan struct{}
	mu     sync.Mutex
	output bytes.Buffer // what the daemons of this value printed
}

// daemonEnv is clientEnv without NIX_CONFIG: the daemon's settings are
// the client's /etc/nix/nix.conf.
func daemonEnv() []string {
	var env []string
	for _, kv := range clientEnv {
		if !strings.HasPrefix(kv, "NIX_CONFIG=") {
			env = append(env, kv)
		}
	}
	return env
}

// startDaemon starts the client's nix-daemon as root, on the default
// socket, and returns once the socket accepts connections. The daemon
// stops when the test ends.
func (c *client) startDaemon() *nixDaemon {
	c.t.Helper()
	d := &nixDaemon{c: c}
	d.start()
	c.t.Cleanup(d.stop)
	return d
}

func (d *nixDaemon) start() {
	c := d.c
	c.t.Helper()
	socket := c.realPath(daemonSocket)
	// A socket left by a daemon before must not pass for this one.
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.t.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--target", c.pid, "--mount", "--root", "--wd", "--", "nix-daemon")
	cmd.Env = daemonEnv()
	cmd.Stdout, cmd.Stderr = (*lockedWriter)(d), (*lockedWriter)(d)
	// Its own process group, so stopping it stops the processes it forks
	// for each connection too; it dies with the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	d.cmd = cmd
	exited := make(chan struct{})
	d.exited = exited
	go func() {
		cmd.Wait()
		close(exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.Dial("unix", socket)
		if err == nil {
			conn.Close()
			return
		}
		select {
		case <-exited:
			c.t.Fatalf("the %s client's nix-daemon exited at start:\n%s", c.v.name, d.logs())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.stop()
			c.t.Fatalf("the %s client's nix-daemon did not accept connections on %s: %v\n%s", c.v.name, daemonSocket, err, d.logs())
		}
	}
}

// stop ends the daemon and the processes it forked, if it runs.
func (d *nixDaemon) stop() {
	if d.cmd == nil {
		return
	}
	pgid := d.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(15 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-d.exited
	}
	// Connections' processes may outlive the daemon by a moment.
	syscall.Kill(-pgid, syscall.SIGKILL)
	d.cmd = nil
	if d.c.t.Failed() {
		d.c.t.Logf("the %s client's nix-daemon:\n%s", d.c.v.name, d.logs())
	}
}

// restart stops the daemon and starts another, which reads nix.conf anew.
func (d *nixDaemon) restart() {
	d.c.t.Helper()
	d.stop()
	d.start()
}

// logs returns what the daemons printed.
func (d *nixDaemon) logs() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.output.String()
}

type lockedWriter nixDaemon

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.output.Write(p)
}

// testUserName is the ordinary user of the clients, a user of the host's
// (the clients see the host's /etc/passwd).
const testUserName = "nixfarm-e2e-user"

var testUserState struct {
	once     sync.Once
	uid, gid int
	created  bool // by this test binary, which removes it (removeTestUser)
	err      error
}

// testUser returns the clients' ordinary user, creating it on the host
// the first time if it is missing. Call it before newClientOf: a client
// sees the host's /etc/passwd as it was when the client started.
func testUser(t *testing.T) (name string, uid, gid int) {
	t.Helper()
	s := &testUserState
	s.once.Do(func() {
		if _, err := user.Lookup(testUserName); err != nil {
			out, err := exec.Command("useradd", "--no-create-home", "--home-dir", "/home/"+testUserName,
				"--shell", "/bin/sh", "--user-group", testUserName).CombinedOutput()
			if err != nil {
				s.err = fmt.Errorf("useradd %s: %w\n%s", testUserName, err, out)
				return
			}
			s.created = true
		}
		u, err := user.Lookup(testUserName)
		if err != nil {
			s.err = err
			return
		}
		s.uid, _ = strconv.Atoi(u.Uid)
		s.gid, _ = strconv.Atoi(u.Gid)
	})
	if s.err != nil {
		t.Fatal(s.err)
	}
	return testUserName, s.uid, s.gid
}

// removeTestUser removes the clients' user if this test binary created it.
func removeTestUser() {
	if !testUserState.created {
		return
	}
	if out, err := exec.Command("userdel", testUserName).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: userdel %s: %v\n%s", testUserName, err, out)
	}
}

// userHome makes the user's home directory in the client's root, owned
// by the user, and returns its path inside.
func (c *client) userHome() string {
	c.t.Helper()
	name, uid, gid := testUser(c.t)
	if !strings.Contains(c.read("/etc/passwd"), "\n"+name+":") {
		c.t.Fatalf("the %s client does not know %s: call testUser before newClientOf", c.v.name, name)
	}
	home := "/home/" + name
	if err := os.MkdirAll(c.realPath(home), 0o755); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Chown(c.realPath(home), uid, gid); err != nil {
		c.t.Fatal(err)
	}
	return home
}

// userCommand returns a command run in the client's root as the clients'
// user, in its home directory, with its own HOME and USER, NIX_REMOTE=daemon
// (its Nix goes through the client's daemon) and env added.
func (c *client) userCommand(ctx context.Context, env []string, name string, args ...string) *exec.Cmd {
	c.t.Helper()
	home := c.userHome()
	user, uid, gid := testUser(c.t)
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--target", c.pid, "--mount", "--root",
		"--wdns=" + home, "--setuid", strconv.Itoa(uid), "--setgid", strconv.Itoa(gid), "--", name}, args...)...)
	cmd.Env = append([]string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + home,
		"USER=" + user,
		"LOGNAME=" + user,
		"NIX_REMOTE=daemon",
	}, env...)
	return cmd
}

// userRun runs a command as the clients' user (userCommand), and kills it
// after five minutes.
func (c *client) userRun(env []string, name string, args ...string) result {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return c.runCmd(ctx, c.userCommand(ctx, env, name, args...))
}

// mustUserRun is userRun failing the test on error; it returns stdout.
func (c *client) mustUserRun(env []string, name string, args ...string) string {
	c.t.Helper()
	r := c.userRun(env, name, args...)
	if r.err != nil {
		c.t.Fatalf("%s: %s %s as %s: %v\n%s", c.v.name, name, strings.Join(args, " "), testUserName, r.err, r.stderr)
	}
	return r.raw
}

// userExpr is expr for the user: the file is in the user's home (the
// test's scratch directory is root's alone), and its path inside is
// returned.
func (c *client) userExpr(name, body string) string {
	c.t.Helper()
	data, err := os.ReadFile(c.expr(name, body))
	if err != nil {
		c.t.Fatal(err)
	}
	return c.userFile(name+".nix", string(data))
}

// userFile writes a file of the user's, in its home, and returns its path
// inside the client.
func (c *client) userFile(name, text string) string {
	c.t.Helper()
	_, uid, gid := testUser(c.t)
	p := filepath.Join(c.userHome(), name)
	if err := os.WriteFile(c.realPath(p), []byte(text), 0o644); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Chown(c.realPath(p), uid, gid); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// rootSSHKey is where rootSSH puts the client key, inside the client.
const rootSSHKey = "/root/.ssh/nixfarm_ed25519"

// rootSSH sets up root's ssh in the client as an administrator would for
// the farm: the farm's client key (account alice) at rootSSHKey, and a
// "Host nixfarm" block in /root/.ssh/config. It returns a builders line
// for scheme that names the key and the farm's host key, and needs no
// NIX_SSHOPTS.
func (c *client) rootSSH(f *farm, scheme string) string {
	c.t.Helper()
	key, err := os.ReadFile(f.clientKey)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := os.MkdirAll(c.realPath("/root/.ssh"), 0o700); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(c.realPath(rootSSHKey), key, 0o600); err != nil {
		c.t.Fatal(err)
	}
	cfg := fmt.Sprintf(`Host nixfarm
    HostName 127.0.0.1
    Port %s
    User alice
    IdentityFile %s
    IdentitiesOnly yes
    HostKeyAlias nixfarm
    BatchMode yes
`, f.port, rootSSHKey)
	if err := os.WriteFile(c.realPath("/root/.ssh/config"), []byte(cfg), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return fmt.Sprintf("%s://nixfarm x86_64-linux %s 4 1 - - %s", scheme, rootSSHKey, f.hostKeyB64)
}

// installNixfarm copies the nixfarm binary into the client, where every
// user can run it (the test binary's own copy is root's alone), and
// returns its path inside.
func (c *client) installNixfarm() string {
	c.t.Helper()
	const p = "/usr/local/bin/nixfarm"
	data, err := os.ReadFile(nixfarmBin)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(c.realPath(p), data, 0o755); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// A Nix 2.8 client running as root starts ssh after setting its mount
// namespace again, which resets its root to the namespace's: the client's
// ssh must still be the client's, reading the client's /root/.ssh (with no
// NIX_SSHOPTS to point it elsewhere), and the host's /root is never read.
func TestClientRootIsNamespaceRoot(t *testing.T) {
	f := startFarm(t)
	c := newClientOf(t, defaultVersion())
	hostSSH, hostErr := os.Stat("/root/.ssh")
	for _, scheme := range []string{"ssh", "ssh-ng"} {
		builders := c.rootSSH(f, scheme)
		name := "namespace-root-" + strings.ReplaceAll(scheme, "-", "")
		file := c.expr(name, fmt.Sprintf(`mk { name = %q; args = ["-c" "echo %s > $out"]; }`, name, scheme))
		drv := c.instantiate(file)[0]
		// f is nil: no NIX_SSHOPTS.
		r := c.run(nil, builders, "nix-build", "--no-out-link", file)
		if r.err != nil {
			t.Fatalf("%s: nix-build over %s with root's ssh config in the client failed: %v\n%s", c.v.name, scheme, r.err, r.stderr)
		}
		if got := c.read(r.out); got != scheme+"\n" {
			t.Errorf("%s: the output holds %q", scheme, got)
		}
		if n := f.builtCount(drv); n != 1 {
			t.Errorf("%s: the farm built %s %d times, want 1", scheme, drv, n)
		}
	}
	st, err := os.Stat("/root/.ssh")
	if (hostErr == nil) != (err == nil) || (err == nil && !st.ModTime().Equal(hostSSH.ModTime())) {
		t.Errorf("the host's /root/.ssh changed")
	}
}

// The clients' user builds through the client's daemon: locally with no
// builders, and on the farm once the daemon's nix.conf lists it.
func TestDaemonClient(t *testing.T) { forClients(t, testDaemonClient) }

func testDaemonClient(t *testing.T, v *nixVersion) {
	_, uid, _ := testUser(t)
	f := startFarm(t)
	c := newClientOf(t, v)
	c.setNixConf("")
	d := c.startDaemon()

	if out := c.mustUserRun(nil, "nix-store", "--version"); !strings.Contains(out, v.version) {
		t.Errorf("nix-store --version as the user says %q, want %s", out, v.version)
	}
	if out := c.mustUserRun(nil, "id", "-u"); strings.TrimSpace(out) != strconv.Itoa(uid) {
		t.Fatalf("the user's commands run as uid %q, want %d", out, uid)
	}

	// A local build, through the daemon: the builder runs as one of the
	// daemon's build users, and the output is root's, in the client's store.
	file := c.userExpr("daemon-local", `mk { name = "daemon-local"; args = ["-c" "echo built as $(id -u) > $out"]; }`)
	drv := strings.TrimSpace(c.mustUserRun(nil, "nix-instantiate", file))
	out := strings.TrimSpace(c.mustUserRun(nil, "nix-build", "--no-out-link", file))
	if !strings.HasPrefix(out, "/nix/store/") {
		t.Fatalf("nix-build printed %q", out)
	}
	st, err := os.Stat(c.realPath(out))
	if err != nil {
		t.Fatalf("the output is not in the client's store: %v", err)
	}
	if owner := st.Sys().(*syscall.Stat_t).Uid; owner != 0 {
		t.Errorf("the output belongs to uid %d, not root: the daemon did not build it", owner)
	}
	builtAs := strings.TrimPrefix(strings.TrimSpace(c.read(out)), "built as ")
	if builtAs == strconv.Itoa(uid) || builtAs == "0" {
		t.Errorf("the builder ran as uid %s, not as a build user of the daemon's", builtAs)
	}
	if h := c.mustUserRun(nil, "nix-store", "-q", "--hash", out); !strings.HasPrefix(h, "sha256:") {
		t.Errorf("nix-store -q --hash as the user says %q", h)
	}
	if n := f.builtCount(drv); n != 0 {
		t.Errorf("the farm built the local derivation %d times", n)
	}

	// The farm as the daemon's only builder: root's ssh in the client
	// reaches it with root's key.
	builders := c.rootSSH(f, "ssh-ng")
	c.setNixConf("builders = " + builders + "\nmax-jobs = 0\n")
	d.restart()
	file = c.userExpr("daemon-farm", `mk { name = "daemon-farm"; args = ["-c" "echo from the farm > $out"]; }`)
	drv = strings.TrimSpace(c.mustUserRun(nil, "nix-instantiate", file))
	r := c.userRun(nil, "nix-build", "--no-out-link", file)
	if r.err != nil {
		t.Fatalf("%s: nix-build through the daemon to the farm: %v\n%s\ndaemon:\n%s", v.name, r.err, r.stderr, d.logs())
	}
	if got := c.read(r.out); got != "from the farm\n" {
		t.Errorf("the output holds %q", got)
	}
	if n := f.builtCount(drv); n != 1 {
		t.Errorf("the farm built %s %d times, want 1", drv, n)
	}
}
