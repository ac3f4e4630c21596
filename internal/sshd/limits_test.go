package sshd_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/sshd"
)

// flakyListener fails its first accepts as a process out of file
// descriptors does, then hands out one connection, then reports itself
// closed.
type flakyListener struct {
	mu       sync.Mutex
	failures int
	conn     net.Conn
	closed   chan struct{}
	once     sync.Once
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.failures > 0 {
		l.failures--
		l.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	c := l.conn
	l.conn = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *flakyListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *flakyListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2222} }

// Errors other than timeouts (EMFILE: out of file descriptors) do not
// end the accept loop: it logs them, backs off and goes on; only a
// closed listener ends it.
func TestAcceptSurvivesErrors(t *testing.T) {
	server, client := net.Pipe()
	defer client.Close()
	ln := &flakyListener{failures: 5, conn: server, closed: make(chan struct{})}
	var logBuf strings.Builder
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		logMu.Lock()
		defer logMu.Unlock()
		return logBuf.Write(p)
	}), nil))
	handled := make(chan net.Conn, 1)
	done := make(chan error, 1)
	go func() {
		done <- sshd.Accept(context.Background(), ln, log, func(nc net.Conn) { handled <- nc })
	}()
	select {
	case nc := <-handled:
		nc.Close()
	case err := <-done:
		t.Fatalf("the accept loop ended at an error: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no connection was handled after the errors")
	}
	select {
	case err := <-done:
		t.Fatalf("the accept loop ended before its listener was closed: %v", err)
	default:
	}
	ln.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("closed listener: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the accept loop did not end with its listener")
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logBuf.String(), "too many open files") {
		t.Errorf("the accept errors were not logged:\n%s", logBuf.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestGateCounts(t *testing.T) {
	g := sshd.NewGate(sshd.Limits{MaxConnections: 3, MaxUnauthenticatedPerSource: 2, MaxConnectionsPerAccount: 1},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	a1 := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1}
	a2 := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 2), Port: 1}
	x, err := g.Admit(a1)
	if err != nil {
		t.Fatal(err)
	}
	y, err := g.Admit(a1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Admit(a1); err == nil || !strings.Contains(err.Error(), "not authenticated") {
		t.Errorf("a third unauthenticated connection from one source: %v", err)
	}
	// Authenticating frees the source's slot.
	if err := x.Authenticated("alice"); err != nil {
		t.Fatal(err)
	}
	z, err := g.Admit(a1)
	if err != nil {
		t.Fatalf("after one authenticated: %v", err)
	}
	if _, err := g.Admit(a2); err == nil || !strings.Contains(err.Error(), "max-connections") {
		t.Errorf("a fourth connection: %v", err)
	}
	if err := g.AccountFull("alice"); err == nil {
		t.Error("alice's one connection does not fill her account")
	}
	if err := y.Authenticated("alice"); err == nil {
		t.Error("alice got a second connection")
	}
	y.Close()
	x.Close()
	x.Close() // twice is harmless
	if err := z.Authenticated("alice"); err != nil {
		t.Errorf("alice's connection after the first closed: %v", err)
	}
	if _, err := g.Admit(a2); err != nil {
		t.Errorf("after closes: %v", err)
	}
}

// A connection that does not authenticate in time is closed, and one
// over the per-source cap is closed at once, before the SSH banner.
func TestHandshakeTimeoutAndSourceCap(t *testing.T) {
	addr, _ := startServerLimits(t, "", sshd.Limits{MaxUnauthenticatedPerSource: 2, HandshakeTimeout: 300 * time.Millisecond})
	var idle []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "SSH-2.0-") {
			t.Fatalf("connection %d: %q %v", i, line, err)
		}
		idle = append(idle, c)
	}
	over, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	over.SetReadDeadline(time.Now().Add(30 * time.Second))
	if data, err := io.ReadAll(over); err != nil || len(data) != 0 {
		t.Errorf("the connection over the cap got %q, %v; want it closed at once", data, err)
	}
	for i, c := range idle {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("connection %d that never authenticated was not closed: %v", i, err)
		}
	}
}

// Over its cap, an account is refused with a banner that says why; an
// authenticated connection with no session is closed once idle, but a
// session that is open, though silent, keeps it.
func TestAccountCapAndIdleTimeout(t *testing.T) {
	alice := newSigner(t)
	idleTimeout := 300 * time.Millisecond
	addr, _ := startServerLimits(t, authLine(alice, "alice"), sshd.Limits{MaxConnectionsPerAccount: 1, IdleTimeout: idleTimeout})
	first, err := dial(addr, alice, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	// The server counts a connection once its handshake is done there,
	// which may be after the client's; a global request's answer comes
	// after that.
	first.SendRequest("sync@nixfarm.test", true, nil)
	var banner strings.Builder
	if c, err := dial(addr, alice, &banner); err == nil {
		c.Close()
		t.Fatal("alice got a second connection")
	}
	if !strings.Contains(banner.String(), "account alice has 1 connections open") {
		t.Errorf("banner %q", banner.String())
	}
	// The first connection has no session: it is closed once idle.
	waited := make(chan error, 1)
	go func() { waited <- first.Wait() }()
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
		t.Fatal("an idle connection was not closed")
	}
	// Its slot is free again; a session open for several idle timeouts
	// without a byte keeps its connection.
	var c2 interface{ Close() error }
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := dial(addr, alice, nil)
		if err == nil {
			c2 = c
			sess, err := c.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			stdin, _ := sess.StdinPipe()
			var out strings.Builder
			sess.Stdout = &out
			if err := sess.Start("quiet"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(4 * idleTimeout)
			io.WriteString(stdin, "still here")
			stdin.Close()
			if err := sess.Wait(); err != nil || out.String() != "alice:quiet\nstill here" {
				t.Errorf("a quiet session: %v %q", err, out.String())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice could not connect again after her idle connection closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c2.Close()
}
