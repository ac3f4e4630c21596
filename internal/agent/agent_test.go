package agent_test

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/agent"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/worker"
)

const token = "a-join-token-for-tests-0123456789"

// registry records what the agent server tells the scheduler.
type registry struct {
	mu      sync.Mutex
	added   []scheduler.Worker
	removed []string
	beats   int
	changed chan struct{}
}

func newRegistry() *registry { return &registry{changed: make(chan struct{}, 100)} }

func (r *registry) AddWorker(w scheduler.Worker) error {
	r.mu.Lock()
	r.added = append(r.added, w)
	r.mu.Unlock()
	r.changed <- struct{}{}
	return nil
}

func (r *registry) RemoveWorker(name string, reason error) {
	r.mu.Lock()
	r.removed = append(r.removed, name+": "+reason.Error())
	r.mu.Unlock()
	r.changed <- struct{}{}
}

func (r *registry) Heartbeat(name string, load scheduler.Load) {
	r.mu.Lock()
	r.beats++
	r.mu.Unlock()
}

func (r *registry) wait(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ok := cond()
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.changed:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatalf("condition not met: added %v, removed %v", r.added, r.removed)
		}
	}
}

func startServer(t *testing.T, reg *registry, interval time.Duration) (string, ssh.PublicKey) {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	st, _, _ := testutil.Store(t)
	srv, err := agent.NewServer(agent.ServerConfig{HostKey: signer, Token: token, Farm: st, Registry: reg,
		HeartbeatInterval: interval, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String(), signer.PublicKey()
}

var caps = worker.Capabilities{Systems: []string{"x86_64-linux"}, SupportedFeatures: []string{"kvm"}, MaxJobs: 2, SpeedFactor: 1}

func runAgent(t *testing.T, addr, name, tok string, hostKey ssh.PublicKey) (func() string, context.CancelFunc) {
	t.Helper()
	var logs strings.Builder
	var mu sync.Mutex
	a, err := agent.New(agent.Config{Coordinator: addr, Token: tok, CoordinatorHostKey: string(ssh.MarshalAuthorizedKey(hostKey)),
		Name: name, Caps: caps, Local: &worker.Local{NixStore: "/nonexistent/nix-store"},
		Log: slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	read := func() string {
		mu.Lock()
		defer mu.Unlock()
		return logs.String()
	}
	return read, cancel
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestRegisterHeartbeatLeave(t *testing.T) {
	reg := newRegistry()
	addr, hostKey := startServer(t, reg, 100*time.Millisecond)
	_, stop := runAgent(t, addr, "builder-1", token, hostKey)
	reg.wait(t, func() bool { return len(reg.added) == 1 })
	w := reg.added[0]
	if w.Name != "builder-1" || w.Kind != "agent" || w.Caps.MaxJobs != 2 || w.Caps.SupportedFeatures[0] != "kvm" {
		t.Errorf("registered %+v", w)
	}
	reg.wait(t, func() bool { return reg.beats >= 2 })
	stop()
	reg.wait(t, func() bool { return len(reg.removed) == 1 })
}

func TestRefusals(t *testing.T) {
	reg := newRegistry()
	addr, hostKey := startServer(t, reg, time.Second)
	dial := func(user, password string) (*ssh.Client, error, string) {
		var banner strings.Builder
		c, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{User: user, Auth: []ssh.AuthMethod{ssh.Password(password)},
			HostKeyCallback: ssh.FixedHostKey(hostKey), BannerCallback: func(m string) error { banner.WriteString(m); return nil }})
		return c, err, banner.String()
	}
	if _, err, banner := dial("builder", "not the token"); err == nil || !strings.Contains(banner, "join token is wrong") {
		t.Errorf("wrong token: %v, banner %q", err, banner)
	}
	if _, err, banner := dial("bad name!", token); err == nil || !strings.Contains(banner, "worker name") {
		t.Errorf("bad name: %v, banner %q", err, banner)
	}
	// Capabilities that make no sense are refused with a reason.
	c, err, _ := dial("builder", token)
	if err != nil {
		t.Fatal(err)
	}
	ch, _, err := c.OpenChannel("nixfarm-control@nixfarm", nil)
	if err != nil {
		t.Fatal(err)
	}
	reg1, _ := json.Marshal(map[string]any{"type": "register", "name": "builder", "capabilities": map[string]any{"systems": []string{}, "maxJobs": 1, "speedFactor": 1}})
	ch.Write(append(reg1, '\n'))
	line, _ := bufio.NewReader(ch).ReadString('\n')
	if !strings.Contains(line, `"type":"error"`) || !strings.Contains(line, "at least one system") {
		t.Errorf("bad capabilities answered %q", line)
	}
	c.Close()
	// Only the control channel may be opened.
	c, _, _ = dial("builder", token)
	if _, _, err := c.OpenChannel("session", nil); err == nil {
		t.Error("the coordinator accepted a session channel from an agent")
	}
	c.Close()
	if len(reg.added) != 0 {
		t.Errorf("registered %v", reg.added)
	}
	// The agent itself reports the refusal.
	logs, _ := runAgent(t, addr, "builder", "wrong-token-0123456789", hostKey)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs(), "join token is wrong") {
		if time.Now().After(deadline) {
			t.Fatalf("agent log: %s", logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A silent agent is lost after three heartbeat intervals.
func TestHeartbeatTimeout(t *testing.T) {
	reg := newRegistry()
	addr, hostKey := startServer(t, reg, 50*time.Millisecond)
	c, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{User: "quiet", Auth: []ssh.AuthMethod{ssh.Password(token)}, HostKeyCallback: ssh.FixedHostKey(hostKey)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ch, _, _ := c.OpenChannel("nixfarm-control@nixfarm", nil)
	reg1, _ := json.Marshal(map[string]any{"type": "register", "name": "quiet", "capabilities": caps})
	ch.Write(append(reg1, '\n'))
	reg.wait(t, func() bool { return len(reg.added) == 1 })
	reg.wait(t, func() bool { return len(reg.removed) == 1 })
	if !strings.Contains(reg.removed[0], "nothing heard") {
		t.Errorf("removed: %v", reg.removed)
	}
}

// A worker that reconnects under its name replaces its old connection.
func TestReplaceSameName(t *testing.T) {
	reg := newRegistry()
	addr, hostKey := startServer(t, reg, time.Second)
	runAgent(t, addr, "twin", token, hostKey)
	reg.wait(t, func() bool { return len(reg.added) == 1 })
	runAgent(t, addr, "twin", token, hostKey)
	reg.wait(t, func() bool { return len(reg.added) >= 2 && len(reg.removed) >= 1 })
}

func TestHostKeyCallback(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	key := signer.PublicKey()
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
	for _, want := range []string{line, ssh.FingerprintSHA256(key), b64(line)} {
		cb, err := agent.HostKeyCallback(want)
		if err != nil {
			t.Fatalf("%q: %v", want, err)
		}
		if err := cb("h", &net.TCPAddr{}, key); err != nil {
			t.Errorf("%q rejects the right key: %v", want, err)
		}
		_, other, _ := ed25519.GenerateKey(rand.Reader)
		os, _ := ssh.NewSignerFromKey(other)
		if err := cb("h", &net.TCPAddr{}, os.PublicKey()); err == nil {
			t.Errorf("%q accepts another key", want)
		}
	}
	if _, err := agent.HostKeyCallback("!!!"); err == nil {
		t.Error("garbage accepted as a host key")
	}
}

func b64(s string) string {
	return strings.TrimRight(encodeStd(s), "")
}

func encodeStd(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
