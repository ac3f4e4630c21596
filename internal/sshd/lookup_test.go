package sshd_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/sshd"
)

// keyMap is a KeyLookup over a map, changed while the server runs.
type keyMap struct {
	mu   sync.Mutex
	keys map[string]string // marshalled key -> account
}

func (m *keyMap) LookupKey(_ context.Context, key ssh.PublicKey) (string, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.keys[string(key.Marshal())]
	return a, ok, nil
}

// Keys the file does not hold are looked up at each authentication: a key
// added works at once, a key removed is refused from the next connection.
func TestKeyLookup(t *testing.T) {
	alice, bob := newSigner(t), newSigner(t)
	dir := t.TempDir()
	keysFile := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(keysFile, []byte(authLine(alice, "alice")), 0o600); err != nil {
		t.Fatal(err)
	}
	lookup := &keyMap{keys: map[string]string{}}
	srv, err := sshd.New(sshd.Config{HostKey: newSigner(t), AuthorizedKeysFile: keysFile, Keys: lookup, Handler: echoHandler{}})
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
	defer func() { cancel(); <-done }()
	addr := ln.Addr().String()

	var banner strings.Builder
	if _, err := dial(addr, bob, &banner); err == nil || !strings.Contains(banner.String(), "nixfarm keys add") {
		t.Fatalf("bob before his key was added: %v, banner %q", err, banner.String())
	}
	lookup.mu.Lock()
	lookup.keys[string(bob.PublicKey().Marshal())] = "bob"
	lookup.mu.Unlock()
	for _, tc := range []struct {
		signer ssh.Signer
		want   string
	}{{alice, "alice:x\n"}, {bob, "bob:x\n"}} {
		c, err := dial(addr, tc.signer, nil)
		if err != nil {
			t.Fatal(err)
		}
		if out, _, err := run(t, c, "x", ""); err != nil || out != tc.want {
			t.Errorf("got %q %v, want %q", out, err, tc.want)
		}
		c.Close()
	}
	lookup.mu.Lock()
	delete(lookup.keys, string(bob.PublicKey().Marshal()))
	lookup.mu.Unlock()
	if c, err := dial(addr, bob, nil); err == nil {
		c.Close()
		t.Error("a removed key still connects")
	}
}
