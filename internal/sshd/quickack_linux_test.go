package sshd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

type copyHandler struct{}

func (copyHandler) Exec(ctx context.Context, s *Session) uint32 {
	io.Copy(s.Stdout, s.Stdin)
	return 0
}

// Quick ACKs are asked for during the handshake only, not on every read
// of the transfers that follow.
func TestQuickAckEndsWithHandshake(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	client, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keys := filepath.Join(dir, "authorized_keys")
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(client.PublicKey()))) + " alice\n"
	if err := os.WriteFile(keys, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	host, _, err := LoadOrCreateHostKey(filepath.Join(dir, "host_key"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{HostKey: host, AuthorizedKeysFile: keys, Handler: copyHandler{}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	conns := make(chan *quickAckConn, 1)
	done := make(chan error, 1)
	go func() {
		done <- Accept(ctx, ln, nil, func(nc net.Conn) {
			qc, ok := nc.(*quickAckConn)
			if !ok {
				t.Errorf("accepted %T, want *quickAckConn", nc)
				nc.Close()
				return
			}
			if !qc.handshake.Load() {
				t.Error("no quick ACKs for the handshake")
			}
			conns <- qc
			srv.handleConn(ctx, nc)
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	c, err := ssh.Dial("tcp", ln.Addr().String(), &ssh.ClientConfig{User: "anyone", Auth: []ssh.AuthMethod{ssh.PublicKeys(client)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	qc := <-conns
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	payload := strings.Repeat("x", 1<<20)
	sess.Stdin = strings.NewReader(payload)
	out, err := sess.Output("copy")
	if err != nil || string(out) != payload {
		t.Fatalf("copy: %v, %d bytes back", err, len(out))
	}
	if qc.handshake.Load() {
		t.Error("quick ACKs still asked for after the handshake")
	}
}
