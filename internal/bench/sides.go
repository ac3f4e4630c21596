package bench

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// env is the benchmark's world: the sides, their client stores, and the
// processes behind them.
type env struct {
	cfg       Config
	dir       string
	bbDir     string
	clientKey string
	clientPub string
	sshConfig string
	nixEnv    []string
	sides     map[string]*side
	procs     []*exec.Cmd
	nonce     atomic.Int64
	stamp     string
	// sshCfg is the client's ssh config, rewritten when a side is added.
	sshCfg strings.Builder
	// stockDir and stockHostKey are the stock sshd's directory and its
	// host key (base64, as in a builders line), for S9's stock builder.
	stockDir, stockHostKey string
	// farm is the nixfarm side's serve process.
	farm *farmProc
	// warnedCaches: the page cache could not be dropped (once said).
	warnedCaches bool
}

// side is one way of building.
type side struct {
	name string
	// builders maps "ssh-ng" and "ssh" to a builders line (none for local).
	builders map[string]string
	// storeURI is the side as a remote store (remote-store mode).
	storeURI string
	// client is this side's client store, and bb busybox's path in it.
	client string
	bb     string
}

const jobs = 8

func setup(ctx context.Context, cfg Config) (*env, error) {
	dir := cfg.WorkDir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "nixfarm-bench-"); err != nil {
			return nil, err
		}
	}
	e := &env{cfg: cfg, dir: dir, sides: map[string]*side{}, stamp: fmt.Sprint(time.Now().Unix())}
	e.sshConfig = filepath.Join(dir, "ssh_config")
	e.nixEnv = []string{"NIX_CONFIG=substituters =\nexperimental-features = nix-command", "NIX_SSHOPTS=-F " + e.sshConfig}
	ok := false
	defer func() {
		if !ok {
			e.close()
		}
	}()
	if err := e.makeBusybox(); err != nil {
		return nil, err
	}
	pub, err := writeKey(filepath.Join(dir, "client_ed25519"))
	if err != nil {
		return nil, err
	}
	e.clientKey = filepath.Join(dir, "client_ed25519")
	e.clientPub = keyLine(pub)
	want := func(s string) bool { return slices.Contains(cfg.Sides, s) }
	if want(Stock) || want(StockTuned) {
		if err := e.startStock(ctx, pub); err != nil {
			return nil, fmt.Errorf("starting the stock side (OpenSSH sshd): %w", err)
		}
	}
	if want(Nixfarm) {
		if err := e.startNixfarm(); err != nil {
			return nil, fmt.Errorf("starting nixfarm serve: %w", err)
		}
	}
	if want(Local) {
		e.sides[Local] = &side{name: Local}
	}
	if err := e.writeSSHConfig(); err != nil {
		return nil, err
	}
	for _, name := range cfg.Sides {
		s := e.sides[name]
		if s == nil {
			return nil, fmt.Errorf("unknown side %q (have %s)", name, strings.Join(AllSides, ", "))
		}
		s.client = filepath.Join(dir, "client-"+name)
		if s.bb, err = e.addBusybox(ctx, s.client); err != nil {
			return nil, err
		}
	}
	// Warm up: every remote side gets busybox once, as a real builder
	// would have it after its first build.
	for _, name := range cfg.Sides {
		s := e.sides[name]
		for proto := range s.builders {
			if _, err := e.build(ctx, s, proto, "s1.nix", e.next(name+"-warmup-"+proto)); err != nil {
				return nil, fmt.Errorf("warming up %s over %s: %w", name, proto, err)
			}
		}
	}
	ok = true
	return e, nil
}

func (e *env) close() {
	for _, p := range e.procs {
		if p.Process != nil {
			p.Process.Signal(os.Interrupt)
			done := make(chan struct{})
			go func() { p.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				p.Process.Kill()
			}
		}
	}
	// ControlMaster connections of the tuned side.
	exec.Command("ssh", "-F", e.sshConfig, "-O", "exit", "stock-tuned").Run()
	if e.cfg.WorkDir == "" {
		exec.Command("chmod", "-R", "u+w", e.dir).Run()
		os.RemoveAll(e.dir)
	}
}

// next returns a fresh nonce, so that every build is new.
func (e *env) next(label string) string {
	return fmt.Sprintf("%s-%d-%s", e.stamp, e.nonce.Add(1), label)
}

func (e *env) makeBusybox() error {
	e.bbDir = filepath.Join(e.dir, "busybox")
	if err := os.MkdirAll(filepath.Join(e.bbDir, "bin"), 0o755); err != nil {
		return err
	}
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("the benchmark builds with a static busybox: %w (apt-get install busybox-static)", err)
	}
	if err := os.WriteFile(filepath.Join(e.bbDir, "bin", "busybox"), data, 0o755); err != nil {
		return err
	}
	for _, tool := range []string{"sh", "sleep", "cat", "cp", "echo", "head", "mkdir"} {
		if err := os.Symlink("busybox", filepath.Join(e.bbDir, "bin", tool)); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	return nil
}

func (e *env) addBusybox(ctx context.Context, store string) (string, error) {
	out, err := e.nix(ctx, "nix-store", "--store", store, "--add", e.bbDir)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// nix runs a Nix command with the benchmark's environment.
func (e *env) nix(ctx context.Context, name string, args ...string) (string, error) {
	return e.nixWith(ctx, nil, name, args...)
}

// nixWith runs a Nix command with the benchmark's environment and extra
// variables (which win over the benchmark's).
func (e *env) nixWith(ctx context.Context, extraEnv []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(append(os.Environ(), e.nixEnv...), extraEnv...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tail := stderr.String()
		if len(tail) > 3000 {
			tail = "…" + tail[len(tail)-3000:]
		}
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail)
	}
	return string(out), nil
}

func writeKey(path string) (ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	return ssh.NewPublicKey(pub)
}

func keyLine(k ssh.PublicKey) string { return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) }

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	_, port, err := net.SplitHostPort(ln.Addr().String())
	return port, err
}

func waitPort(port string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startStock starts OpenSSH's sshd serving nix-daemon --stdio and
// nix-store --serve --write on a chroot store. The remote programs are
// wrappers that give the remote Nix the settings a builder would have:
// no substituter (this machine reaches none) and max-jobs 8.
func (e *env) startStock(ctx context.Context, clientPub ssh.PublicKey) error {
	const sshd = "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		return fmt.Errorf("%s is missing (apt-get install openssh-server)", sshd)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	dir := filepath.Join(e.dir, "stock")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	hostPub, err := writeKey(filepath.Join(dir, "host_ed25519"))
	if err != nil {
		return err
	}
	auth := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(auth, []byte(keyLine(clientPub)+"\n"), 0o600); err != nil {
		return err
	}
	remote := filepath.Join(dir, "store")
	for name, prog := range map[string]string{"nix-daemon-remote": "nix-daemon", "nix-store-remote": "nix-store"} {
		script := fmt.Sprintf("#!/bin/sh\nexport NIX_CONFIG='substituters =\nmax-jobs = %d'\nexec %s \"$@\"\n", jobs, prog)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			return err
		}
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	cfg := filepath.Join(dir, "sshd_config")
	err = os.WriteFile(cfg, []byte(fmt.Sprintf(`Port %s
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
MaxStartups 200:30:400
MaxSessions 100
LogLevel ERROR
`, port, filepath.Join(dir, "host_ed25519"), auth)), 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(sshd, "-D", "-e", "-f", cfg)
	logf, _ := os.Create(filepath.Join(dir, "sshd.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	e.procs = append(e.procs, cmd)
	if err := waitPort(port, 10*time.Second); err != nil {
		return fmt.Errorf("sshd did not start (see %s): %w", logf.Name(), err)
	}
	hk := base64.StdEncoding.EncodeToString([]byte(keyLine(hostPub)))
	e.stockDir, e.stockHostKey = dir, hk
	for _, name := range []string{Stock, StockTuned} {
		fmt.Fprintf(&e.sshCfg, "Host %s\n  HostName 127.0.0.1\n  Port %s\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n  HostKeyAlias %s\n  BatchMode yes\n",
			name, port, e.clientKey, name)
		if name == StockTuned {
			fmt.Fprintf(&e.sshCfg, "  ControlMaster auto\n  ControlPath %s/cm-%%C\n  ControlPersist 600\n", e.dir)
		}
		params := fmt.Sprintf("remote-store=%s&remote-program=%s", remote, filepath.Join(dir, "nix-daemon-remote"))
		serveParams := fmt.Sprintf("remote-store=%s&remote-program=%s", remote, filepath.Join(dir, "nix-store-remote"))
		e.sides[name] = &side{
			name: name,
			builders: map[string]string{
				"ssh-ng": fmt.Sprintf("ssh-ng://%s?%s x86_64-linux - %d 1 - - %s", name, params, jobs, hk),
				"ssh":    fmt.Sprintf("ssh://%s?%s x86_64-linux - %d 1 - - %s", name, serveParams, jobs, hk),
			},
			storeURI: fmt.Sprintf("ssh-ng://%s?%s&base64-ssh-public-host-key=%s", name, params, hk),
		}
	}
	return nil
}

var (
	farmHostKeyRE = regexp.MustCompile(`(?m)^ssh-ng://nixfarm \S+ - \d+ 1 - - (\S+)$`)
	farmPortRE    = regexp.MustCompile(`(?m)^\s+Port (\d+)$`)
)

// writeSSHConfig writes the client's ssh config.
func (e *env) writeSSHConfig() error {
	return os.WriteFile(e.sshConfig, []byte(e.sshCfg.String()), 0o600)
}

// farmProc is a running `nixfarm serve`.
type farmProc struct {
	cmd      *exec.Cmd
	dir      string
	stateDir string
	// hostKey is its SSH host key (base64, as in a builders line), port
	// its SSH port, and http its --http-listen address ("" if none).
	hostKey, port, http string
}

// launchFarm starts `nixfarm serve` with its built-in worker (eight
// builds at a time) and a fresh state directory under dir, listening for
// SSH on sshListen and for HTTP on httpListen ("" for none). The client's
// key is account bench's.
func (e *env) launchFarm(dir, sshListen, httpListen, cpuProfile string, extra ...string) (*farmProc, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	keys := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(keys, []byte(e.clientPub+" bench\n"), 0o600); err != nil {
		return nil, err
	}
	f := &farmProc{dir: dir, stateDir: filepath.Join(dir, "state"), http: httpListen}
	cmd := exec.Command(e.cfg.Nixfarm, "serve", "--state-dir", f.stateDir, "--ssh-listen", sshListen,
		"--authorized-keys", keys, "--local-jobs", fmt.Sprint(jobs), "--http-listen", httpListen, "--log-level", e.cfg.FarmLogLevel)
	if cpuProfile != "" {
		cmd.Args = append(cmd.Args, "--cpu-profile", cpuProfile)
	}
	cmd.Args = append(cmd.Args, extra...)
	cmd.Args = append(cmd.Args, e.cfg.FarmArgs...)
	logf, _ := os.Create(filepath.Join(dir, "nixfarm.log"))
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	f.cmd = cmd
	e.procs = append(e.procs, cmd)
	var out strings.Builder
	found := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		closed := false
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if !closed && farmHostKeyRE.MatchString(out.String()) && farmPortRE.MatchString(out.String()) {
				closed = true
				close(found)
			}
		}
		if !closed {
			close(found)
		}
	}()
	select {
	case <-found:
	case <-time.After(30 * time.Second):
	}
	hk := farmHostKeyRE.FindStringSubmatch(out.String())
	port := farmPortRE.FindStringSubmatch(out.String())
	if hk == nil || port == nil {
		e.stop(cmd)
		tail, _ := os.ReadFile(logf.Name())
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return nil, fmt.Errorf("nixfarm serve printed no builders line (see %s):\n%s", logf.Name(), tail)
	}
	f.hostKey, f.port = hk[1], port[1]
	return f, nil
}

// stop interrupts one of the processes started, waits for it (5 s at
// most, then kills it) and forgets it.
func (e *env) stop(cmd *exec.Cmd) {
	e.procs = slices.DeleteFunc(e.procs, func(p *exec.Cmd) bool { return p == cmd })
	if cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// startNixfarm starts the nixfarm side: `nixfarm serve` with its
// built-in worker on its own chroot store, eight builds at a time, and
// its HTTP listener (the binary cache S8 measures) on a free port.
func (e *env) startNixfarm() error {
	httpPort, err := freePort()
	if err != nil {
		return err
	}
	// No upstream cache: this machine reaches none, and the stock
	// sides have none either.
	f, err := e.launchFarm(filepath.Join(e.dir, "nixfarm"), "127.0.0.1:0", "127.0.0.1:"+httpPort, e.cfg.FarmCPUProfile, "--substituter", "")
	if err != nil {
		return err
	}
	e.farm = f
	e.addFarmHost(Nixfarm, f)
	e.sides[Nixfarm] = &side{
		name: Nixfarm,
		builders: map[string]string{
			"ssh-ng": fmt.Sprintf("ssh-ng://nixfarm x86_64-linux - %d 1 - - %s", jobs, f.hostKey),
			"ssh":    fmt.Sprintf("ssh://nixfarm x86_64-linux - %d 1 - - %s", jobs, f.hostKey),
		},
		storeURI: "ssh-ng://nixfarm?base64-ssh-public-host-key=" + f.hostKey,
	}
	return nil
}

// addFarmHost adds an ssh config entry for a farm as user bench.
func (e *env) addFarmHost(alias string, f *farmProc) {
	fmt.Fprintf(&e.sshCfg, "Host %s\n  HostName 127.0.0.1\n  Port %s\n  User bench\n  IdentityFile %s\n  IdentitiesOnly yes\n  HostKeyAlias %s\n  BatchMode yes\n",
		alias, f.port, e.clientKey, alias)
}
