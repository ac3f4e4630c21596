package agent_test

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/agent"
	"github.com/nixfarm/nixfarm/internal/credentials"
	"github.com/nixfarm/nixfarm/internal/metrics"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// registry records what the agent server tells the scheduler.
type registry struct {
	mu      sync.Mutex
	added   []scheduler.Worker
	removed []string
	reasons []error
	beats   int
	held    map[string]bool // names registered, as the scheduler holds them
	changed chan struct{}
}

func newRegistry() *registry {
	return &registry{changed: make(chan struct{}, 100), held: map[string]bool{"local": true}}
}

func (r *registry) AddWorker(w scheduler.Worker) error {
	r.mu.Lock()
	if r.held[w.Name] {
		r.mu.Unlock()
		return scheduler.ErrNameTaken
	}
	r.held[w.Name] = true
	r.added = append(r.added, w)
	r.mu.Unlock()
	r.changed <- struct{}{}
	return nil
}

func (r *registry) RemoveWorker(name string, reason error) {
	r.mu.Lock()
	delete(r.held, name)
	r.removed = append(r.removed, name+": "+reason.Error())
	r.reasons = append(r.reasons, reason)
	r.mu.Unlock()
	r.changed <- struct{}{}
}

func (r *registry) HasWorker(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held[name]
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

// server is a test's agent server and the credentials it accepts.
type server struct {
	addr    string
	hostKey ssh.PublicKey
	creds   *credentials.Store
}

// issue issues a credential for name.
func (s *server) issue(t *testing.T, name string) string {
	t.Helper()
	secret, err := s.creds.Issue(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

func startServer(t *testing.T, reg *registry, interval time.Duration) *server {
	t.Helper()
	return startServerWith(t, reg, interval, nil)
}

// startServerWith starts an agent server that counts into m.
func startServerWith(t *testing.T, reg *registry, interval time.Duration, m *metrics.Farm) *server {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	st, database, _ := testutil.Store(t)
	creds := credentials.New(database, nil)
	srv, err := agent.NewServer(agent.ServerConfig{HostKey: signer, Credentials: creds, Farm: st, Registry: reg,
		HeartbeatInterval: interval, RevocationCheck: 20 * time.Millisecond, Metrics: m, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
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
	return &server{addr: ln.Addr().String(), hostKey: signer.PublicKey(), creds: creds}
}

var caps = worker.Capabilities{Systems: []string{"x86_64-linux"}, SupportedFeatures: []string{"kvm"}, MaxJobs: 2, SpeedFactor: 1}

func runAgent(t *testing.T, addr, name, tok string, hostKey ssh.PublicKey) (func() string, context.CancelFunc) {
	t.Helper()
	var logs strings.Builder
	var mu sync.Mutex
	a, err := agent.New(agent.Config{Coordinator: addr, Credential: tok, CoordinatorHostKey: string(ssh.MarshalAuthorizedKey(hostKey)),
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
	srv := startServer(t, reg, 100*time.Millisecond)
	_, stop := runAgent(t, srv.addr, "builder-1", srv.issue(t, "builder-1"), srv.hostKey)
	reg.wait(t, func() bool { return len(reg.added) == 1 })
	w := reg.added[0]
	if w.Name != "builder-1" || w.Kind != "agent" || w.Caps.MaxJobs != 2 || w.Caps.SupportedFeatures[0] != "kvm" {
		t.Errorf("registered %+v", w)
	}
	reg.wait(t, func() bool { return reg.beats >= 2 })
	stop()
	reg.wait(t, func() bool { return len(reg.removed) == 1 })
	// It said goodbye: it left, it was not lost.
	if !errors.Is(reg.reasons[0], scheduler.ErrLeft) {
		t.Errorf("an agent that stopped was removed for %v, not as having left", reg.reasons[0])
	}
}

// waitLog waits until an agent's log contains want.
func waitLog(t *testing.T, logs func() string, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("agent log lacks %q: %s", want, logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRefusals(t *testing.T) {
	reg := newRegistry()
	srv := startServer(t, reg, time.Second)
	secret := srv.issue(t, "builder")
	otherSecret := srv.issue(t, "other")
	dial := func(user, password string) (*ssh.Client, error, string) {
		var banner strings.Builder
		c, err := ssh.Dial("tcp", srv.addr, &ssh.ClientConfig{User: user, Auth: []ssh.AuthMethod{ssh.Password(password)},
			HostKeyCallback: ssh.FixedHostKey(srv.hostKey), BannerCallback: func(m string) error { banner.WriteString(m); return nil }})
		return c, err, banner.String()
	}
	for _, tc := range []struct{ user, password, want string }{
		{"builder", "not the credential", "credential is not valid for worker builder"},
		{"builder", otherSecret, "issued for another worker name: other, not builder"},
		{"bad name!", secret, "worker name"},
		{"local", secret, "reserved for the built-in worker"},
	} {
		if _, err, banner := dial(tc.user, tc.password); err == nil || !strings.Contains(banner, tc.want) {
			t.Errorf("%s: %v, banner %q", tc.user, err, banner)
		}
	}
	// Capabilities that make no sense are refused with a reason.
	c, err, _ := dial("builder", secret)
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
	c, _, _ = dial("builder", secret)
	if _, _, err := c.OpenChannel("session", nil); err == nil {
		t.Error("the coordinator accepted a session channel from an agent")
	}
	c.Close()
	if len(reg.added) != 0 {
		t.Errorf("registered %v", reg.added)
	}
	// The agent itself reports the refusal.
	logs, _ := runAgent(t, srv.addr, "builder", "wrong-credential-0123456789", srv.hostKey)
	waitLog(t, logs, "credential is not valid for worker builder")
}

// A silent agent is lost after three heartbeat intervals.
func TestHeartbeatTimeout(t *testing.T) {
	reg := newRegistry()
	srv := startServer(t, reg, 50*time.Millisecond)
	c, err := ssh.Dial("tcp", srv.addr, &ssh.ClientConfig{User: "quiet", Auth: []ssh.AuthMethod{ssh.Password(srv.issue(t, "quiet"))}, HostKeyCallback: ssh.FixedHostKey(srv.hostKey)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ch, _, _ := c.OpenChannel("nixfarm-control@nixfarm", nil)
	reg1, _ := json.Marshal(map[string]any{"type": "register", "name": "quiet", "capabilities": caps})
	ch.Write(append(reg1, '\n'))
	reg.wait(t, func() bool { return len(reg.added) == 1 })
	reg.wait(t, func() bool { return len(reg.removed) == 1 })
	if !strings.Contains(reg.removed[0], "nothing heard") || errors.Is(reg.reasons[0], scheduler.ErrLeft) {
		t.Errorf("removed: %v", reg.removed)
	}
}

// An agent whose connection drops without a goodbye is lost, not gone.
func TestDroppedIsLost(t *testing.T) {
	reg := newRegistry()
	srv := startServer(t, reg, time.Second)
	c, err := ssh.Dial("tcp", srv.addr, &ssh.ClientConfig{User: "dropped", Auth: []ssh.AuthMethod{ssh.Password(srv.issue(t, "dropped"))}, HostKeyCallback: ssh.FixedHostKey(srv.hostKey)})
	if err != nil {
		t.Fatal(err)
	}
	ch, _, _ := c.OpenChannel("nixfarm-control@nixfarm", nil)
	reg1, _ := json.Marshal(map[string]any{"type": "register", "name": "dropped", "capabilities": caps})
	ch.Write(append(reg1, '\n'))
	reg.wait(t, func() bool { return len(reg.added) == 1 })
	c.Close()
	reg.wait(t, func() bool { return len(reg.removed) == 1 })
	if errors.Is(reg.reasons[0], scheduler.ErrLeft) {
		t.Errorf("a dropped agent was removed as having left: %v", reg.reasons[0])
	}
}

// The agent listener counts its connections and handshake failures under
// listener="agent", apart from the client listener's.
func TestListenerMetrics(t *testing.T) {
	m := metrics.New(nil)
	reg := newRegistry()
	srv := startServerWith(t, reg, time.Second, m)
	value := func(name string, labels ...string) float64 {
		t.Helper()
		fams, err := m.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			if f.GetName() != name {
				continue
			}
		series:
			for _, s := range f.GetMetric() {
				for i := 0; i < len(labels); i += 2 {
					found := false
					for _, l := range s.GetLabel() {
						found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
					}
					if !found {
						continue series
					}
				}
				if s.GetCounter() != nil {
					return s.GetCounter().GetValue()
				}
				return s.GetGauge().GetValue()
			}
		}
		t.Fatalf("no series %s %v", name, labels)
		return 0
	}
	// A wrong credential, then a client that speaks no SSH.
	if c, err := ssh.Dial("tcp", srv.addr, &ssh.ClientConfig{User: "builder", Auth: []ssh.AuthMethod{ssh.Password("wrong-credential-0123456789")},
		HostKeyCallback: ssh.FixedHostKey(srv.hostKey)}); err == nil {
		c.Close()
		t.Fatal("a wrong credential was accepted")
	}
	nc, err := net.Dial("tcp", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	nc.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, nc)
	nc.Close()
	// A good agent, which stays connected.
	_, stop := runAgent(t, srv.addr, "builder", srv.issue(t, "builder"), srv.hostKey)
	reg.wait(t, func() bool { return len(reg.added) == 1 })

	deadline := time.Now().Add(10 * time.Second)
	for value("nixfarm_ssh_handshake_failures_total", "listener", "agent", "reason", "protocol") < 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"nixfarm_ssh_connections_total", []string{"listener", "agent"}, 3},
		{"nixfarm_ssh_connections_open", []string{"listener", "agent"}, 1},
		{"nixfarm_ssh_handshake_failures_total", []string{"listener", "agent", "reason", "refused-credential"}, 1},
		{"nixfarm_ssh_handshake_failures_total", []string{"listener", "agent", "reason", "protocol"}, 1},
		{"nixfarm_ssh_handshake_failures_total", []string{"listener", "agent", "reason", "timeout"}, 0},
		{"nixfarm_ssh_connections_total", []string{"listener", "client"}, 0},
	} {
		if got := value(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	stop()
	reg.wait(t, func() bool { return len(reg.removed) == 1 })
	for deadline := time.Now().Add(10 * time.Second); value("nixfarm_ssh_connections_open", "listener", "agent") != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the agent's connection is still counted open after it left")
		}
	}
}

// A name a connected agent holds is refused, even with its credential,
// and the holder stays; so is a name another worker holds.
func TestNameTaken(t *testing.T) {
	reg := newRegistry()
	srv := startServer(t, reg, 50*time.Millisecond)
	secret := srv.issue(t, "twin")
	runAgent(t, srv.addr, "twin", secret, srv.hostKey)
	reg.wait(t, func() bool { return len(reg.added) == 1 })
	logs, _ := runAgent(t, srv.addr, "twin", secret, srv.hostKey)
	waitLog(t, logs, "worker name twin is taken by a connected worker")
	reg.mu.Lock()
	added, removed, beats := len(reg.added), len(reg.removed), reg.beats
	reg.mu.Unlock()
	if added != 1 || removed != 0 {
		t.Errorf("added %d, removed %d: the holder was replaced", added, removed)
	}
	reg.wait(t, func() bool { return reg.beats > beats+2 }) // the holder still beats

	// A static machine's name, known to the registry only.
	reg.mu.Lock()
	reg.held["static-1"] = true
	reg.mu.Unlock()
	logs, _ = runAgent(t, srv.addr, "static-1", srv.issue(t, "static-1"), srv.hostKey)
	waitLog(t, logs, "worker name static-1 is taken")
}

// Revoking a connected agent's credential disconnects it; its builds
// are the registry's to requeue (RemoveWorker), and it cannot come back.
func TestRevoke(t *testing.T) {
	reg := newRegistry()
	srv := startServer(t, reg, time.Second)
	logs, _ := runAgent(t, srv.addr, "doomed", srv.issue(t, "doomed"), srv.hostKey)
	reg.wait(t, func() bool { return len(reg.added) == 1 })
	if err := srv.creds.Revoke(context.Background(), "doomed"); err != nil {
		t.Fatal(err)
	}
	reg.wait(t, func() bool { return len(reg.removed) == 1 })
	if !strings.Contains(reg.removed[0], "credential was revoked") || !errors.Is(reg.reasons[0], scheduler.ErrLeft) {
		t.Errorf("removed: %v", reg.removed)
	}
	waitLog(t, logs, "credential was revoked")
	waitLog(t, logs, "credential is not valid for worker doomed")
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
