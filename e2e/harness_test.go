// Package e2e runs stock Nix clients against the nixfarm binary. These tests
// are the heart of the suite: they need nix-build (Debian's nix-bin),
// busybox-static and openssh-client. Locally they skip with a loud message
// when those are missing; under CI=true they fail instead.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/db"
)

var (
	nixfarmBin string // built once in TestMain
	busyboxBin = "/bin/busybox"
)

func TestMain(m *testing.M) {
	missing := checkTools()
	if missing != "" {
		if os.Getenv("CI") == "true" {
			fmt.Fprintf(os.Stderr, "e2e: FAIL: %s is missing, and CI must run the end-to-end tests (.ci/run installs it)\n", missing)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "\n*** e2e: SKIPPING the end-to-end tests: %s is missing.\n*** Install it (apt-get install nix-bin busybox-static openssh-client) to run them.\n\n", missing)
		os.Exit(0)
	}
	// No client may wait for cache.nixos.org: this machine has no internet.
	os.Setenv("NIX_CONFIG", "substituters =\nexperimental-features = nix-command")
	dir, err := os.MkdirTemp("", "nixfarm-e2e-bin-")
	if err != nil {
		panic(err)
	}
	nixfarmBin = filepath.Join(dir, "nixfarm")
	build := exec.Command("go", "build", "-o", nixfarmBin, "../cmd/nixfarm")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building nixfarm: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func checkTools() string {
	for _, tool := range []string{"nix-build", "nix-store", "ssh"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool
		}
	}
	if _, err := os.Stat(busyboxBin); err != nil {
		return busyboxBin + " (busybox-static)"
	}
	return ""
}

// farm is a running `nixfarm serve` process and the files a client needs
// to reach it.
type farm struct {
	t           *testing.T
	dir         string
	stateDir    string
	workerStore string
	keysFile    string
	clientKey   string
	sshConfig   string
	port        string
	hostKeyB64  string
	extraArgs   []string
	env         []string // extra environment for the farm process
	apiURL      string   // the HTTP API
	tokenFile   string   // the workers' join token
	workerAddr  string   // where agents dial, if enabled

	cmd    *exec.Cmd
	mu     sync.Mutex
	output bytes.Buffer // the process's stdout and stderr
	exited chan struct{}
}

// startFarm starts nixfarm serve on 127.0.0.1 with a fresh state dir, a
// client key authorized for account "alice", and a chroot worker store.
func startFarm(t *testing.T, extraArgs ...string) *farm {
	t.Helper()
	return startFarmEnv(t, nil, extraArgs...)
}

// startFarmEnv is startFarm with extra environment for the farm process.
func startFarmEnv(t *testing.T, env []string, extraArgs ...string) *farm {
	t.Helper()
	dir := t.TempDir()
	f := &farm{
		t:           t,
		dir:         dir,
		stateDir:    filepath.Join(dir, "state"),
		workerStore: filepath.Join(dir, "worker-store"),
		keysFile:    filepath.Join(dir, "authorized_keys"),
		clientKey:   filepath.Join(dir, "client_ed25519"),
		sshConfig:   filepath.Join(dir, "ssh_config"),
		port:        "0",
		extraArgs:   extraArgs,
		env:         env,
	}
	pub := writeKey(t, f.clientKey)
	authorize(t, f.keysFile, pub, "alice")
	f.start()
	t.Cleanup(f.stop)
	return f
}

// writeKey writes a new ed25519 private key in OpenSSH format and returns
// its public key.
func writeKey(t *testing.T, path string) ssh.PublicKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return sshPub
}

func authorize(t *testing.T, file string, key ssh.PublicKey, account string) {
	t.Helper()
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))) + " " + account + "\n"
	fh, err := os.OpenFile(file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.WriteString(line); err != nil {
		t.Fatal(err)
	}
}

var (
	builderLineRE = regexp.MustCompile(`(?m)^ssh://nixfarm (\S+) - (\d+) 1 - - (\S+)$`)
	portRE        = regexp.MustCompile(`(?m)^\s+Port (\d+)$`)
	apiRE         = regexp.MustCompile(`msg="serving the API" url=(\S+)`)
	workerAddrRE  = regexp.MustCompile(`msg="listening for workers" addr=(\S+)`)
)

func (f *farm) start() {
	t := f.t
	t.Helper()
	args := append([]string{"serve",
		"--state-dir", f.stateDir,
		"--ssh-listen", "127.0.0.1:" + f.port,
		"--authorized-keys", f.keysFile,
		"--local-store", f.workerStore,
		"--local-jobs", "4",
		"--http-listen", "127.0.0.1:0",
		"--log-level", "debug",
	}, f.extraArgs...)
	cmd := exec.Command(nixfarmBin, args...)
	cmd.Env = append(os.Environ(), f.env...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.cmd = cmd
	f.exited = make(chan struct{})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		var once sync.Once
		for sc.Scan() {
			f.mu.Lock()
			f.output.WriteString(sc.Text() + "\n")
			out := f.output.String()
			f.mu.Unlock()
			if builderLineRE.MatchString(out) && portRE.MatchString(out) && apiRE.MatchString(out) {
				once.Do(func() { close(ready) })
			}
		}
	}()
	go func() {
		cmd.Wait()
		pw.Close()
		close(f.exited)
	}()
	select {
	case <-ready:
	case <-f.exited:
		t.Fatalf("nixfarm serve exited at start:\n%s", f.logs())
	case <-time.After(30 * time.Second):
		t.Fatalf("nixfarm serve did not print its builders line:\n%s", f.logs())
	}
	out := f.logs()
	m := builderLineRE.FindAllStringSubmatch(out, -1)
	f.hostKeyB64 = m[len(m)-1][3]
	ports := portRE.FindAllStringSubmatch(out, -1)
	f.port = ports[len(ports)-1][1]
	if m := apiRE.FindAllStringSubmatch(out, -1); m != nil {
		f.apiURL = m[len(m)-1][1]
	}
	if m := workerAddrRE.FindAllStringSubmatch(out, -1); m != nil {
		f.workerAddr = m[len(m)-1][1]
	}
	cfg := fmt.Sprintf(`Host nixfarm
    HostName 127.0.0.1
    Port %s
    User alice
    IdentityFile %s
    IdentitiesOnly yes
    HostKeyAlias nixfarm
    BatchMode yes
`, f.port, f.clientKey)
	if err := os.WriteFile(f.sshConfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// stop ends the process gracefully.
func (f *farm) stop() {
	if f.cmd == nil || f.cmd.Process == nil {
		return
	}
	f.cmd.Process.Signal(os.Interrupt)
	select {
	case <-f.exited:
	case <-time.After(15 * time.Second):
		f.cmd.Process.Kill()
		<-f.exited
	}
	f.cmd = nil
	for _, bad := range []string{"reference scan disagrees", "level=ERROR", "panic:"} {
		if strings.Contains(f.logs(), bad) {
			f.t.Errorf("nixfarm logged %q", bad)
		}
	}
	if f.t.Failed() {
		f.t.Logf("nixfarm output:\n%s", f.logs())
	}
}

// restart stops the farm and starts it again on the same state and port.
func (f *farm) restart() {
	f.stop()
	f.start()
}

func (f *farm) logs() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.output.String()
}

// builders returns a builders line for the given scheme.
func (f *farm) builders(scheme string) string {
	return fmt.Sprintf("%s://nixfarm x86_64-linux - 4 1 - - %s", scheme, f.hostKeyB64)
}

func (f *farm) addr() string { return net.JoinHostPort("127.0.0.1", f.port) }

// db opens the farm's database for inspection.
func (f *farm) db() *sql.DB {
	d, err := db.Open(context.Background(), filepath.Join(f.stateDir, "nixfarm.db"))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { d.Close() })
	return d
}

// builtCount returns how many builds of drvPath a worker ran successfully.
func (f *farm) builtCount(drvPath string) int {
	var n int
	if err := f.db().QueryRow(`SELECT count(*) FROM builds WHERE drv_path = ? AND status = 0`, drvPath).Scan(&n); err != nil {
		f.t.Fatal(err)
	}
	return n
}

// client is a stock Nix client with its own chroot store.
type client struct {
	t     *testing.T
	store string // chroot store directory
	bb    string // busybox store path in the client's store
	dir   string
}

func newClient(t *testing.T) *client {
	t.Helper()
	dir := t.TempDir()
	c := &client{t: t, store: filepath.Join(dir, "store"), dir: dir}
	bbDir := filepath.Join(dir, "busybox")
	if err := os.MkdirAll(filepath.Join(bbDir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(busyboxBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bbDir, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"sh", "echo", "cat", "mkdir", "head", "yes", "sleep", "dd", "printf", "ln"} {
		if err := os.Symlink("busybox", filepath.Join(bbDir, "bin", tool)); err != nil {
			t.Fatal(err)
		}
	}
	out := c.mustRun(nil, "nix-store", "--store", c.store, "--add", bbDir)
	c.bb = strings.TrimSpace(out)
	return c
}

// expr writes a Nix file whose first line binds bb to the client's busybox
// and returns its path.
func (c *client) expr(name, body string) string {
	c.t.Helper()
	text := fmt.Sprintf("let bb = builtins.storePath %s;\n  mk = args: derivation ({ system = \"x86_64-linux\"; builder = \"${bb}/bin/sh\"; PATH = \"${bb}/bin\"; } // args);\nin %s\n", c.bb, body)
	p := filepath.Join(c.dir, name+".nix")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return p
}

type result struct {
	out    string
	stderr string
	err    error
}

// build runs nix-build with the farm as the only builder (--max-jobs 0).
func (c *client) build(f *farm, scheme, file string, extra ...string) result {
	c.t.Helper()
	return c.run(f, scheme, "nix-build", append([]string{"--no-out-link", file}, extra...)...)
}

// run runs a Nix command with the farm as the only builder (--max-jobs 0).
func (c *client) run(f *farm, scheme, prog string, extra ...string) result {
	c.t.Helper()
	args := append([]string{
		"--store", c.store,
		"--option", "substituters", "",
		"--max-jobs", "0",
		"--builders", f.builders(scheme),
	}, extra...)
	cmd := exec.Command(prog, args...)
	cmd.Env = append(os.Environ(), "NIX_SSHOPTS=-F "+f.sshConfig)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		cmd.Process.Kill()
		err = <-done
		c.t.Errorf("%s timed out", prog)
	}
	return result{out: strings.TrimSpace(stdout.String()), stderr: stderr.String(), err: err}
}

func (c *client) mustBuild(f *farm, scheme, file string, extra ...string) []string {
	c.t.Helper()
	r := c.build(f, scheme, file, extra...)
	if r.err != nil {
		c.t.Fatalf("nix-build %s failed: %v\nstderr:\n%s\nfarm:\n%s", file, r.err, r.stderr, f.logs())
	}
	return strings.Fields(r.out)
}

func (c *client) mustRun(env []string, name string, args ...string) string {
	c.t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		c.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// realPath maps a store path to where the chroot store keeps it.
func (c *client) realPath(p string) string { return filepath.Join(c.store, p) }

func (c *client) read(p string) string {
	c.t.Helper()
	data, err := os.ReadFile(c.realPath(p))
	if err != nil {
		c.t.Fatal(err)
	}
	return string(data)
}

// verify checks that the client's Nix considers the path valid and intact,
// and returns its references as Nix sees them.
func (c *client) verify(p string) []string {
	c.t.Helper()
	c.mustRun(nil, "nix-store", "--store", c.store, "--verify-path", p)
	return strings.Fields(c.mustRun(nil, "nix-store", "--store", c.store, "-q", "--references", p))
}

// nixLog returns what `nix log` shows for a derivation built remotely.
func (c *client) nixLog(drv string) string {
	c.t.Helper()
	return c.mustRun(nil, "nix", "--extra-experimental-features", "nix-command", "log", "--store", c.store, drv)
}

// drvPath instantiates an expression and returns the .drv paths.
func (c *client) instantiate(file string) []string {
	c.t.Helper()
	return strings.Fields(c.mustRun(nil, "nix-instantiate", "--store", c.store, file))
}
