package sshd_test

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/metrics"
	"github.com/nixfarm/nixfarm/internal/sshd"
)

// value returns the value of name{labels…} in m (0 if it has none).
func value(t *testing.T, m *metrics.Farm, name string, labels ...string) float64 {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range fams {
		if fam.GetName() != name {
			continue
		}
	series:
		for _, s := range fam.GetMetric() {
			for i, l := range s.GetLabel() {
				if i >= len(labels) || l.GetValue() != labels[i] {
					continue series
				}
			}
			if s.Gauge != nil {
				return s.GetGauge().GetValue()
			}
			return s.GetCounter().GetValue()
		}
	}
	return 0
}

// eventually waits for cond: the server counts after the client has
// seen the outcome.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMetrics(t *testing.T) {
	alice, stranger := newSigner(t), newSigner(t)
	dir := t.TempDir()
	keysFile := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(keysFile, []byte(authLine(alice, "alice")), 0o600); err != nil {
		t.Fatal(err)
	}
	host := newSigner(t)
	m := metrics.New(nil)
	srv, err := sshd.New(sshd.Config{HostKey: host, AuthorizedKeysFile: keysFile, Handler: echoHandler{}, Metrics: m,
		Limits: sshd.Limits{MaxConnectionsPerAccount: 1, HandshakeTimeout: 300 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	addr := ln.Addr().String()
	failures := func(reason string) float64 {
		return value(t, m, "nixfarm_ssh_handshake_failures_total", "client", reason)
	}

	// A command's bytes, both ways.
	c, err := dial(addr, alice, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := run(t, c, "cat", "hello")
	if err != nil || out != "alice:cat\nhello" {
		t.Fatalf("%q %v", out, err)
	}
	eventually(t, "the command's bytes are counted", func() bool {
		return value(t, m, "nixfarm_ssh_bytes_in_total") == 5 && value(t, m, "nixfarm_ssh_bytes_out_total") == float64(len(out))
	})
	if got := value(t, m, "nixfarm_ssh_connections_open", "client"); got != 1 {
		t.Errorf("open connections %v, want 1", got)
	}

	// alice's second connection is over her account's cap.
	if c2, err := dial(addr, alice, nil); err == nil {
		c2.Close()
		t.Fatal("alice got a second connection")
	}
	eventually(t, "caps counted", func() bool { return failures("caps") == 1 })
	c.Close()

	// An unknown key.
	if c, err := dial(addr, stranger, nil); err == nil {
		c.Close()
		t.Fatal("an unknown key was let in")
	}
	eventually(t, "refused key counted", func() bool { return failures("refused-key") == 1 })

	// SSH's version line, then no SSH packet.
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(raw, "SSH-2.0-test\r\n\xff\xff\xff\xffnot a packet")
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.ReadAll(raw)
	raw.Close()
	eventually(t, "protocol failure counted", func() bool { return failures("protocol") == 1 })

	// A connection that never says anything.
	quiet, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	quiet.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.ReadAll(quiet)
	eventually(t, "timeout counted", func() bool { return failures("timeout") == 1 })

	eventually(t, "every connection closed", func() bool { return value(t, m, "nixfarm_ssh_connections_open", "client") == 0 })
	if got := value(t, m, "nixfarm_ssh_connections_total", "client"); got != 5 {
		t.Errorf("connections %v, want 5", got)
	}
	for _, r := range metrics.HandshakeReasons {
		if got := failures(r); got != 1 {
			t.Errorf("handshake failures {reason=%s} = %v, want 1", r, got)
		}
	}
}
