package e2e

import (
	"bytes"
	"database/sql"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/daemonproto"
	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// sshCmd runs the OpenSSH client with the farm's config.
func sshCmd(f *farm, extra ...string) (stdout, stderr string, code int) {
	args := append([]string{"-F", f.sshConfig, "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"}, extra...)
	cmd := exec.Command("ssh", args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.Stdin = strings.NewReader("")
	err := cmd.Run()
	code = 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		code = -1
	}
	return o.String(), e.String(), code
}

// An unknown key is refused with its fingerprint, to OpenSSH and to every
// Nix client; the known key goes on working.
func TestUnknownKeyRefused(t *testing.T) { forClients(t, testUnknownKeyRefused) }

func testUnknownKeyRefused(t *testing.T, v *nixVersion) {
	f := startFarm(t)
	other := filepath.Join(f.dir, "stranger_ed25519")
	pub := writeKey(t, other)
	cfg, err := os.ReadFile(f.sshConfig)
	if err != nil {
		t.Fatal(err)
	}
	stranger := farm{t: t, dir: f.dir, port: f.port, hostKeyB64: f.hostKeyB64, sshConfig: filepath.Join(f.dir, "stranger_ssh_config")}
	if err := os.WriteFile(stranger.sshConfig, []byte(strings.Replace(string(cfg), f.clientKey, other, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := sshCmd(&stranger, "nixfarm", "nix-store", "--serve", "--write")
	if code != 255 {
		t.Errorf("ssh exit status %d, want 255", code)
	}
	fp := ssh.FingerprintSHA256(pub)
	for _, want := range []string{"is not authorized", fp} {
		if !strings.Contains(stderr, want) {
			t.Errorf("ssh stderr lacks %q:\n%s", want, stderr)
		}
	}
	// A stock Nix client with that key fails, and shows why, over both
	// protocols and as a remote store.
	c := newClientOf(t, v)
	file := c.expr("stranger", `mk { name = "stranger"; args = ["-c" "echo > $out"]; }`)
	for _, scheme := range []string{"ssh", "ssh-ng"} {
		r := c.build(&stranger, scheme, file)
		if r.err == nil {
			t.Fatalf("a stranger built on the farm over %s", scheme)
		}
		if !strings.Contains(r.stderr, "is not authorized") || !strings.Contains(r.stderr, fp) {
			t.Errorf("nix-build over %s does not say the key is not authorized:\n%s", scheme, r.stderr)
		}
		// And the fix: the operator's command, with the key in it.
		if fix := "echo '" + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))) + "' | nixfarm keys add --account NAME -"; !strings.Contains(r.stderr, fix) {
			t.Errorf("nix-build over %s does not show how to add the key (%s):\n%s", scheme, fix, r.stderr)
		}
	}
	r := c.exec(&stranger, "nix", "store", "ping", "--store", stranger.storeURI())
	if r.err == nil || !strings.Contains(r.stderr, "is not authorized") || !strings.Contains(r.stderr, fp) {
		t.Errorf("nix store ping with a stranger's key: %v\n%s", r.err, r.stderr)
	}
	// The authorized key still works.
	assertServes(t, f)
}

func TestExecRefused(t *testing.T) {
	f := startFarm(t)
	for _, cmd := range [][]string{{"ls"}, {"nix-store", "--serve", "--write;", "ls"}, {"nix-store", "--query", "--references", "/"}, {"sh", "-c", "nix-store --serve"}} {
		_, stderr, code := sshCmd(f, append([]string{"nixfarm"}, cmd...)...)
		if code == 0 {
			t.Errorf("%v: exit status 0", cmd)
		}
		if !strings.Contains(stderr, "refused") || !strings.Contains(stderr, "nix-store --serve") {
			t.Errorf("%v: stderr does not explain the refusal:\n%s", cmd, stderr)
		}
	}
	// An interactive shell is refused too, with words.
	_, stderr, code := sshCmd(f, "-T", "nixfarm")
	if code == 0 || !strings.Contains(stderr, "no shell") {
		t.Errorf("shell: exit %d, stderr:\n%s", code, stderr)
	}
}

// serveSession opens an SSH session running command with the client's key,
// and performs the serve-protocol handshake. close ends the client's side
// and waits for the session's end.
type serveSession struct {
	client *serveproto.Client
	stdin  io.WriteCloser
	stderr *bytes.Buffer
	sess   *ssh.Session
}

func openServe(t *testing.T, f *farm, command string) *serveSession {
	t.Helper()
	sess := openSession(t, f)
	s := &serveSession{stderr: &bytes.Buffer{}, sess: sess}
	sess.Stderr = s.stderr
	s.stdin, _ = sess.StdinPipe()
	stdout, _ := sess.StdoutPipe()
	if err := sess.Start(command); err != nil {
		t.Fatal(err)
	}
	var err error
	if s.client, err = serveproto.NewClient(stdout, s.stdin); err != nil {
		t.Fatalf("serve handshake: %v\nstderr: %s", err, s.stderr)
	}
	return s
}

// wait returns the session's end (an *ssh.ExitError for a non-zero status).
func (s *serveSession) wait() error { return s.sess.Wait() }

// close ends the client's side and waits for the session's end.
func (s *serveSession) close() error {
	s.stdin.Close()
	return s.wait()
}

func exitStatus(err error) int {
	var exit *ssh.ExitError
	if errors.As(err, &exit) {
		return exit.ExitStatus()
	}
	if err == nil {
		return 0
	}
	return -1
}

func TestAddToStoreNarWrongHashRejected(t *testing.T) {
	f := startFarm(t)
	s := openServe(t, f, "nix-store --serve --write")
	var narBuf bytes.Buffer
	w := nar.NewWriter(&narBuf)
	contents := []byte("the real contents\n")
	w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(contents))})
	w.Write(contents)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	lie := nixhash.SHA256Of([]byte("some other NAR"))
	p := storepath.Path("/nix/store/" + strings.Repeat("1", 32) + "-lying-upload")
	info := &store.PathInfo{Path: p, NarHash: lie, NarSize: uint64(narBuf.Len())}
	if err := s.client.AddToStoreNar(info, bytes.NewReader(narBuf.Bytes())); err == nil {
		t.Fatal("the farm accepted a NAR that does not match its narHash")
	}
	if code := exitStatus(s.close()); code == 0 {
		t.Errorf("exit status 0 after a rejected upload")
	}
	if msg := s.stderr.String(); !strings.Contains(msg, "NAR hash mismatch") || !strings.Contains(msg, string(p)) {
		t.Errorf("stderr does not name the problem:\n%s", msg)
	}
	var n int
	if err := f.db().QueryRow(`SELECT count(*) FROM objects WHERE path = ?`, string(p)).Scan(&n); err != nil && err != sql.ErrNoRows {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("the lying upload was registered")
	}
	assertNoBlobs(t, f)
	assertServes(t, f)
}

// assertNoBlobs checks that no NAR blob or upload file was left behind.
func assertNoBlobs(t *testing.T, f *farm) {
	t.Helper()
	filepath.Walk(filepath.Join(f.stateDir, "nar"), func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			t.Errorf("file left in the blob store: %s", path)
		}
		return nil
	})
}

// assertServes checks that the farm still answers a fresh connection.
func assertServes(t *testing.T, f *farm) {
	t.Helper()
	s := openServe(t, f, "nix-store --serve")
	if _, err := s.client.QueryValidPaths([]storepath.Path{storepath.Path("/nix/store/" + strings.Repeat("2", 32) + "-x")}, false, false); err != nil {
		t.Fatalf("query after bad input: %v", err)
	}
	if err := s.close(); err != nil {
		t.Errorf("clean session ended with %v; stderr:\n%s", err, s.stderr)
	}
}

// Bad input on ssh-ng:// (nix-daemon --stdio): each gets an error that names
// it, nothing half-written is registered, and the farm goes on serving.
func TestDaemonBadInput(t *testing.T) {
	f := startFarm(t)

	// A wrong magic number: the session ends with a message on stderr.
	sess := openSession(t, f)
	stdin, _ := sess.StdinPipe()
	var stderr bytes.Buffer
	sess.Stderr = &stderr
	if err := sess.Start("nix-daemon --stdio"); err != nil {
		t.Fatal(err)
	}
	stdin.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	stdin.Close()
	if code := exitStatus(sess.Wait()); code == 0 || !strings.Contains(stderr.String(), "bad magic number") {
		t.Errorf("wrong magic: exit %d, stderr %q", code, stderr.String())
	}

	// A client version below 1.10.
	sess = openSession(t, f)
	stdin, _ = sess.StdinPipe()
	stderr.Reset()
	sess.Stderr = &stderr
	sess.Start("nix-daemon --stdio")
	w := wire.NewWriter(stdin)
	w.Uint64(daemonproto.Magic1)
	w.Uint64(0x109)
	w.Flush()
	stdin.Close()
	if code := exitStatus(sess.Wait()); code == 0 || !strings.Contains(stderr.String(), "1.9") {
		t.Errorf("old client: exit %d, stderr %q", code, stderr.String())
	}

	// Over a good connection: a framed NAR cut short, a NAR that does not
	// match its narHash, an unknown opcode.
	c, closeFn := openDaemon(t, f)
	var n bytes.Buffer
	nw := nar.NewWriter(&n)
	contents := "daemon upload\n"
	nw.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(contents))})
	nw.Write([]byte(contents))
	nw.Close()
	p := storepath.Path("/nix/store/" + strings.Repeat("3", 32) + "-daemon-upload")
	info := &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n.Bytes()), NarSize: uint64(n.Len())}
	cut := *info
	cut.NarSize = uint64(n.Len() / 2)
	var re *daemonproto.RemoteError
	if err := c.AddToStoreNar(&cut, bytes.NewReader(n.Bytes())); !errors.As(err, &re) {
		t.Errorf("cut-short NAR: %v", err)
	}
	lie := *info
	lie.NarHash = nixhash.SHA256Of([]byte("lie"))
	if err := c.AddToStoreNar(&lie, bytes.NewReader(n.Bytes())); !errors.As(err, &re) || !strings.Contains(re.Message, "NAR hash mismatch") {
		t.Errorf("wrong narHash: %v", err)
	}
	if ok, err := c.IsValidPath(p); err != nil || ok {
		t.Errorf("after bad uploads: valid=%v err=%v", ok, err)
	}
	if err := daemonproto.CallRaw(c, 250, nil); !errors.As(err, &re) || !strings.Contains(re.Message, "unknown operation 250") {
		t.Errorf("unknown opcode: %v", err)
	}
	closeFn()
	var count int
	f.db().QueryRow(`SELECT count(*) FROM objects WHERE path = ?`, string(p)).Scan(&count)
	if count != 0 {
		t.Errorf("a bad upload was registered")
	}
	assertNoBlobs(t, f)

	// The farm still serves others.
	c2, close2 := openDaemon(t, f)
	if err := c2.AddToStoreNar(info, bytes.NewReader(n.Bytes())); err != nil {
		t.Errorf("good upload: %v", err)
	}
	close2()
}

// openSession opens an SSH session with the client's key.
func openSession(t *testing.T, f *farm) *ssh.Session {
	t.Helper()
	return openSessionWith(t, f, f.clientKey)
}

// openSessionWith opens an SSH session with the private key in keyFile.
func openSessionWith(t *testing.T, f *farm, keyFile string) *ssh.Session {
	t.Helper()
	keyData, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(keyData)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := ssh.Dial("tcp", f.addr(), &ssh.ClientConfig{
		User:            "alice",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		Timeout:         10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	sess, err := conn.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// openDaemon starts `nix-daemon --stdio` and returns a client at 1.38.
func openDaemon(t *testing.T, f *farm) (*daemonproto.Client, func() error) {
	t.Helper()
	return openDaemonWith(t, f, f.clientKey)
}

// openDaemonWith is openDaemon with the private key in keyFile.
func openDaemonWith(t *testing.T, f *farm, keyFile string) (*daemonproto.Client, func() error) {
	t.Helper()
	sess := openSessionWith(t, f, keyFile)
	stdin, _ := sess.StdinPipe()
	stdout, _ := sess.StdoutPipe()
	if err := sess.Start("nix-daemon --stdio"); err != nil {
		t.Fatal(err)
	}
	c, err := daemonproto.NewClient(stdout, stdin, 0)
	if err != nil {
		t.Fatal(err)
	}
	return c, func() error { stdin.Close(); return sess.Wait() }
}

func TestGarbageAfterHandshake(t *testing.T) {
	f := startFarm(t)
	s := openServe(t, f, "nix-store --serve --write")
	garbage := make([]byte, 64)
	binary.LittleEndian.PutUint64(garbage, 0xdeadbeefcafe)
	copy(garbage[8:], "this is not the serve protocol")
	s.stdin.Write(garbage)
	done := make(chan error, 1)
	go func() { done <- s.wait() }()
	select {
	case err := <-done:
		if exitStatus(err) == 0 {
			t.Errorf("garbage: exit status 0")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the farm did not close a connection that sent garbage")
	}
	if !strings.Contains(s.stderr.String(), "unknown serve command") {
		t.Errorf("stderr does not name the problem:\n%s", s.stderr)
	}
	assertServes(t, f)
}
