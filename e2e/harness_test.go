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
		fmt.Fprintf(os.Stderr, "\n*** e2e: SKIPPING the end-to-end tests: %s is missing.\n*** Install it (apt-get install nix-bin busybox-static openssh-client debootstrap; run as root) to run them.\n\n", missing)
		os.Exit(0)
	}
	// No Nix of the farm's may wait for cache.nixos.org: this machine has
	// no internet. (Clients get their own environment: clientEnv.)
	os.Setenv("NIX_CONFIG", "substituters =\nexperimental-features = nix-command")
	dir, err := os.MkdirTemp("", "nixfarm-e2e-bin-")
	if err != nil {
		panic(err)
	}
	if err := setUpClients(dir); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: the Nix clients: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	nixfarmBin = filepath.Join(dir, "nixfarm")
	build := exec.Command("go", "build", "-o", nixfarmBin, "../cmd/nixfarm")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building nixfarm: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	removeTestUser()
	os.RemoveAll(dir)
	os.Exit(code)
}

func checkTools() string {
	if os.Geteuid() != 0 {
		return "root (the clients run in chroots)"
	}
	for _, tool := range []string{"nix-store", "ssh", "unshare", "nsenter"} {
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
	prefix      []string // a command that execs nixfarm (e.g. prlimit …)
	apiURL      string   // the HTTP API
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
	f := newFarm(t, env, extraArgs...)
	f.start()
	t.Cleanup(f.stop)
	return f
}

// newFarm prepares a farm like startFarmEnv's without starting it.
func newFarm(t *testing.T, env []string, extraArgs ...string) *farm {
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
	if len(f.prefix) > 0 {
		cmd = exec.Command(f.prefix[0], append(append(f.prefix[1:len(f.prefix):len(f.prefix)], nixfarmBin), args...)...)
	}
	cmd.Env = append(os.Environ(), f.env...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.cmd = cmd
	f.exited = make(chan struct{})
	ready := make(chan struct{})
	// Only this process's output says it is ready: after a restart, the
	// output holds the last one's lines too.
	f.mu.Lock()
	since := f.output.Len()
	f.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(pr)
		var once sync.Once
		for sc.Scan() {
			f.mu.Lock()
			f.output.WriteString(sc.Text() + "\n")
			out := f.output.String()[since:]
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
	out := f.logs()[since:]
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
