package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// nixVersion is one stock Nix client the suite drives: Debian's nix-bin of
// one release, installed in a chroot by scripts/nix-clients.sh.
type nixVersion struct {
	suite   string // bookworm
	name    string // nix-2.8: the subtest's name
	version string // 2.8.0
	minor   int    // 8
	root    string // the chroot: the lower layer of every client's root
}

// clientSuites are the Debian releases whose Nix the suite drives, oldest
// first. The first is the client of the tests of farm internals.
var clientSuites = []string{"bookworm", "trixie", "sid"}

var (
	nixVersions []*nixVersion
	// busyboxPath is where the busybox directory every client adds lands:
	// the same store path in every client, or the farm would see a
	// different builder from each.
	busyboxPath string
	busyboxDir  string // the directory every client adds
)

// clientsDir is where scripts/nix-clients.sh keeps the chroots.
func clientsDir() string {
	if d := os.Getenv("NIXFARM_CLIENTS_DIR"); d != "" {
		return d
	}
	return "/var/cache/nixfarm/nix-clients"
}

// setUpClients provides the clients (the script reuses its chroots, so a
// second run takes a fraction of a second), reads their versions, and
// prepares the busybox directory every client adds to its store.
func setUpClients(scratch string) error {
	script := exec.Command("../scripts/nix-clients.sh", clientSuites...)
	script.Stdout, script.Stderr = os.Stderr, os.Stderr
	if err := script.Run(); err != nil {
		return fmt.Errorf("scripts/nix-clients.sh: %w", err)
	}
	for _, suite := range clientSuites {
		root := filepath.Join(clientsDir(), suite)
		data, err := os.ReadFile(filepath.Join(root, ".nixfarm-client"))
		if err != nil {
			return fmt.Errorf("the %s client: %w", suite, err)
		}
		// "nix (Nix) 2.26.3"
		fields := strings.Fields(string(data))
		if len(fields) == 0 {
			return fmt.Errorf("the %s client: empty version file", suite)
		}
		version := fields[len(fields)-1]
		parts := strings.Split(version, ".")
		minor := 0
		if len(parts) >= 2 {
			minor, _ = strconv.Atoi(parts[1])
		}
		if len(parts) < 2 || parts[0] != "2" || minor == 0 {
			return fmt.Errorf("the %s client reports version %q", suite, version)
		}
		nixVersions = append(nixVersions, &nixVersion{suite: suite, name: "nix-2." + parts[1], version: version, minor: minor, root: root})
	}

	busyboxDir = filepath.Join(scratch, "busybox")
	if err := os.MkdirAll(filepath.Join(busyboxDir, "bin"), 0o755); err != nil {
		return err
	}
	data, err := os.ReadFile(busyboxBin)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(busyboxDir, "bin", "busybox"), data, 0o555); err != nil {
		return err
	}
	for _, tool := range []string{"sh", "echo", "cat", "mkdir", "head", "yes", "sleep", "dd", "printf", "ln", "id", "ls"} {
		if err := os.Symlink("busybox", filepath.Join(busyboxDir, "bin", tool)); err != nil {
			return err
		}
	}
	// What `nix-store --add` must answer: a source path named after the
	// directory, from the SHA-256 of its NAR.
	var narBuf bytes.Buffer
	if err := nar.DumpPath(&narBuf, busyboxDir); err != nil {
		return err
	}
	p, err := storepath.MakeFixedOutput("busybox", true, nixhash.SHA256Of(narBuf.Bytes()), nil, false)
	if err != nil {
		return err
	}
	busyboxPath = string(p)
	return nil
}

// daemonVersion is the worker-protocol version the client speaks, from
// Nix's sources: 1.34 in Nix 2.8; 1.38, the first with feature lists, in
// 2.26 and 2.34 (both offer no features).
func (v *nixVersion) daemonVersion() string {
	if v.minor >= 24 {
		return "1.38"
	}
	return "1.34"
}

// serveVersion is the serve-protocol version: 2.7 in every tested client.
func (v *nixVersion) serveVersion() string { return "2.7" }

// defaultVersion is the client of the tests of farm internals, which need
// only one.
func defaultVersion() *nixVersion { return nixVersions[0] }

// forClients runs a client-facing test once per Nix client, as subtests
// named after the version: /nix-2.8, /nix-2.26, /nix-2.34.
func forClients(t *testing.T, test func(t *testing.T, v *nixVersion)) {
	for _, v := range nixVersions {
		t.Run(v.name, func(t *testing.T) { test(t, v) })
	}
}

// forClientsAndSchemes runs a build test per client and per remote-build
// protocol: ssh:// (nix-store --serve) and ssh-ng:// (nix-daemon --stdio).
func forClientsAndSchemes(t *testing.T, test func(t *testing.T, v *nixVersion, scheme string)) {
	forClients(t, func(t *testing.T, v *nixVersion) {
		for _, scheme := range []string{"ssh", "ssh-ng"} {
			t.Run(scheme, func(t *testing.T) { test(t, v, scheme) })
		}
	})
}

// client is one stock Nix client with a fresh root of its own, made by
// scripts/nix-client.sh: an overlay of its version's chroot, so its store
// is that root's /nix/store, as on a real machine. The overlay and the
// mounts it needs exist only in a private mount namespace held by one
// process; every command enters it. Nothing is mounted where the host can
// see it, so nothing is left behind however a test ends.
//
// Inside, the host's temporary directory is at the same path (so
// expressions, ssh configs and keys need no translation), and so are the
// host's users and Nix's pool of build users (/nix/var/nix/userpool): the
// client is another Nix on the same machine as the farm.
//
// The client's root is its mount namespace's root (the script pivots
// into it rather than chrooting), which matters to Nix 2.8: running as
// root, it starts ssh from the root of its mount namespace
// (restoreMountNamespace sets the namespace back, which resets the root;
// later Nix restores the root too). So every client's ssh is its own, and
// reads the client's /root/.ssh, never the host's (TestClientRootIsNamespaceRoot).
type client struct {
	t     *testing.T
	v     *nixVersion
	store string // the store URI of the client's own store
	bb    string // busybox's store path in the client's store
	dir   string // scratch directory, at the same path inside
	root  string // the client's root as the host sees it
	pid   string // the process holding the client's mount namespace
	// sshConfig, if set, replaces the farm's ssh config: the client
	// reaches the farm as another account (see tenant).
	sshConfig string
}

// newClient returns a client of the version the tests of farm internals use.
func newClient(t *testing.T) *client { return newClientOf(t, defaultVersion()) }

// newClientOf returns a fresh client of version v, with busybox added to
// its store.
func newClientOf(t *testing.T, v *nixVersion) *client {
	t.Helper()
	dir := t.TempDir()
	c := &client{t: t, v: v, store: "local", dir: dir}
	// scripts/nix-client.sh makes the root and keeps it while this holder
	// lives; it is ready once inside.
	holder := exec.Command("../scripts/nix-client.sh", "--upper", dir, v.suite, "/bin/sh", "-c", "echo ready; exec sleep infinity")
	// The holder dies with the test binary, and its namespace with it.
	holder.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	holder.Stderr = &stderr
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		holder.Process.Kill()
		holder.Wait()
	})
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		if line != "ready\n" {
			holder.Process.Kill()
			holder.Wait()
			t.Fatalf("setting up the %s client's root: %q\n%s", v.name, line, stderr.String())
		}
	case <-time.After(time.Minute):
		// Held up, perhaps by nix-clients.sh rebuilding the chroot.
		holder.Process.Kill()
		holder.Wait()
		t.Fatalf("the %s client's root was not ready within a minute\n%s", v.name, stderr.String())
	}
	go io.Copy(io.Discard, stdout)
	c.pid = strconv.Itoa(holder.Process.Pid)
	c.root = "/proc/" + c.pid + "/root"

	out := c.mustRun(nil, "nix-store", "--store", c.store, "--add", busyboxDir)
	c.bb = strings.TrimSpace(out)
	if c.bb != busyboxPath {
		t.Fatalf("the %s client added busybox at %s, but it belongs at %s", v.name, c.bb, busyboxPath)
	}
	return c
}

// clientEnv is the whole environment of a client's commands: nothing of
// the test's own leaks in.
var clientEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"USER=root",
	// No client may wait for cache.nixos.org: this machine has no internet.
	"NIX_CONFIG=substituters =\nexperimental-features = nix-command",
}

// command returns a command run inside the client's root, with env added
// to its environment.
func (c *client) command(ctx context.Context, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--target", c.pid, "--mount", "--root", "--wd", "--", name}, args...)...)
	cmd.Env = append(append([]string{}, clientEnv...), env...)
	return cmd
}

type result struct {
	out    string // stdout without surrounding space
	raw    string // stdout as it came
	stderr string
	err    error
}

// exec runs a client command with the farm's ssh config, and kills it
// after five minutes.
func (c *client) exec(f *farm, name string, args ...string) result {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var env []string
	switch {
	case c.sshConfig != "":
		env = []string{"NIX_SSHOPTS=-F " + c.sshConfig}
	case f != nil:
		env = []string{"NIX_SSHOPTS=-F " + f.sshConfig}
	}
	return c.runCmd(ctx, c.command(ctx, env, name, args...))
}

// runCmd runs cmd, made with ctx, and returns what it printed; a run cut
// off by ctx fails the test.
func (c *client) runCmd(ctx context.Context, cmd *exec.Cmd) result {
	c.t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		c.t.Errorf("%s timed out", strings.Join(cmd.Args, " "))
	}
	return result{out: strings.TrimSpace(stdout.String()), raw: stdout.String(), stderr: stderr.String(), err: err}
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

// build runs nix-build with the farm as the only builder (--max-jobs 0).
func (c *client) build(f *farm, scheme, file string, extra ...string) result {
	c.t.Helper()
	return c.buildWith(f, f.builders(scheme), file, extra...)
}

// buildWith runs nix-build with an explicit builders line and no local
// builds.
func (c *client) buildWith(f *farm, builders, file string, extra ...string) result {
	c.t.Helper()
	return c.run(f, builders, "nix-build", append([]string{"--no-out-link", file}, extra...)...)
}

// run runs a Nix command with builders as the only builders (--max-jobs 0).
func (c *client) run(f *farm, builders, prog string, extra ...string) result {
	c.t.Helper()
	args := append([]string{
		"--store", c.store,
		"--option", "substituters", "",
		"--max-jobs", "0",
		"--builders", builders,
	}, extra...)
	return c.exec(f, prog, args...)
}

func (c *client) mustBuild(f *farm, scheme, file string, extra ...string) []string {
	c.t.Helper()
	r := c.build(f, scheme, file, extra...)
	if r.err != nil {
		c.t.Fatalf("%s: nix-build %s failed: %v\nstderr:\n%s\nfarm:\n%s", c.v.name, file, r.err, r.stderr, f.logs())
	}
	return strings.Fields(r.out)
}

// mustRun runs a client command and returns its stdout, failing the test
// on error.
func (c *client) mustRun(f *farm, name string, args ...string) string {
	c.t.Helper()
	r := c.exec(f, name, args...)
	if r.err != nil {
		c.t.Fatalf("%s: %s %s: %v\n%s", c.v.name, name, strings.Join(args, " "), r.err, r.stderr)
	}
	return r.raw
}

// realPath maps a store path to where the host sees it.
func (c *client) realPath(p string) string { return filepath.Join(c.root, p) }

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
	return c.mustRun(nil, "nix", "log", "--store", c.store, drv)
}

// instantiate instantiates an expression and returns the .drv paths.
func (c *client) instantiate(file string) []string {
	c.t.Helper()
	return strings.Fields(c.mustRun(nil, "nix-instantiate", "--store", c.store, file))
}
