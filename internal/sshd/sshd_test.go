package sshd_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/sshd"
)

type echoHandler struct{}

// Exec echoes the account and command to stdout, copies stdin to stdout,
// and exits with status 3 for "fail".
func (echoHandler) Exec(ctx context.Context, s *sshd.Session) uint32 {
	fmt.Fprintf(s.Stdout, "%s:%s\n", s.Account, s.Command)
	if s.Command == "fail" {
		fmt.Fprintln(s.Stderr, "failing as asked")
		return 3
	}
	io.Copy(s.Stdout, s.Stdin)
	return 0
}

func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func startServer(t *testing.T, keys string) (addr string, keysFile string) {
	t.Helper()
	return startServerLimits(t, keys, sshd.Limits{})
}

func startServerLimits(t *testing.T, keys string, limits sshd.Limits) (addr string, keysFile string) {
	t.Helper()
	dir := t.TempDir()
	keysFile = filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(keysFile, []byte(keys), 0o600); err != nil {
		t.Fatal(err)
	}
	host, created, err := sshd.LoadOrCreateHostKey(filepath.Join(dir, "host_key"))
	if err != nil || !created {
		t.Fatalf("host key: %v %v", created, err)
	}
	again, created, err := sshd.LoadOrCreateHostKey(filepath.Join(dir, "host_key"))
	if err != nil || created || !bytes.Equal(again.PublicKey().Marshal(), host.PublicKey().Marshal()) {
		t.Fatalf("host key not kept: %v %v", created, err)
	}
	srv, err := sshd.New(sshd.Config{HostKey: host, AuthorizedKeysFile: keysFile, Handler: echoHandler{}, Limits: limits})
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
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return ln.Addr().String(), keysFile
}

func authLine(s ssh.Signer, comment string) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey()))) + " " + comment + "\n"
}

func dial(addr string, s ssh.Signer, banner *strings.Builder) (*ssh.Client, error) {
	return ssh.Dial("tcp", addr, &ssh.ClientConfig{
		User:            "anyone",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(s)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		BannerCallback: func(msg string) error {
			if banner != nil {
				banner.WriteString(msg)
			}
			return nil
		},
		Timeout: 5 * time.Second,
	})
}

func run(t *testing.T, c *ssh.Client, cmd, stdin string) (string, string, error) {
	t.Helper()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	var out, errOut bytes.Buffer
	sess.Stdout, sess.Stderr = &out, &errOut
	sess.Stdin = strings.NewReader(stdin)
	err = sess.Run(cmd)
	return out.String(), errOut.String(), err
}

func TestExecAndAccounts(t *testing.T) {
	alice, bob := newSigner(t), newSigner(t)
	addr, _ := startServer(t, "# comment line\n\n"+authLine(alice, "alice laptop")+"restrict "+authLine(bob, "bob"))
	for _, tc := range []struct {
		key     ssh.Signer
		account string
	}{{alice, "alice"}, {bob, "bob"}} {
		c, err := dial(addr, tc.key, nil)
		if err != nil {
			t.Fatal(err)
		}
		out, _, err := run(t, c, "nix-store --serve", "payload")
		if err != nil {
			t.Fatal(err)
		}
		if out != tc.account+":nix-store --serve\npayload" {
			t.Errorf("out %q", out)
		}
		_, stderr, err := run(t, c, "fail", "")
		var exit *ssh.ExitError
		if !errors.As(err, &exit) || exit.ExitStatus() != 3 || stderr != "failing as asked\n" {
			t.Errorf("fail: %v %q", err, stderr)
		}
		sess, _ := c.NewSession()
		var stderrBuf bytes.Buffer
		sess.Stderr = &stderrBuf
		err = sess.Shell()
		if err == nil {
			err = sess.Wait()
		}
		if !errors.As(err, &exit) || exit.ExitStatus() != 1 || !strings.Contains(stderrBuf.String(), "no shell") {
			t.Errorf("shell: %v %q", err, stderrBuf.String())
		}
		c.Close()
	}
}

func TestUnknownKeyIsToldWhy(t *testing.T) {
	alice, stranger := newSigner(t), newSigner(t)
	addr, keysFile := startServer(t, authLine(alice, "alice"))
	var banner strings.Builder
	_, err := dial(addr, stranger, &banner)
	if err == nil {
		t.Fatal("stranger was let in")
	}
	fp := ssh.FingerprintSHA256(stranger.PublicKey())
	if !strings.Contains(banner.String(), "not authorized") || !strings.Contains(banner.String(), fp) {
		t.Errorf("banner %q does not name the key %s", banner.String(), fp)
	}
	// It names the fix: the operator's exact command, with the key.
	keyLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(stranger.PublicKey())))
	if !strings.Contains(banner.String(), "echo '"+keyLine+"' | nixfarm keys add --account NAME -") {
		t.Errorf("banner %q does not give the command that adds the key", banner.String())
	}
	// Adding the key takes effect without a restart.
	f, _ := os.OpenFile(keysFile, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(authLine(stranger, "newcomer"))
	f.Close()
	os.Chtimes(keysFile, time.Now().Add(time.Second), time.Now().Add(time.Second))
	c, err := dial(addr, stranger, nil)
	if err != nil {
		t.Fatalf("key added to authorized_keys still refused: %v", err)
	}
	out, _, _ := run(t, c, "x", "")
	if !strings.HasPrefix(out, "newcomer:") {
		t.Errorf("account %q", out)
	}
	c.Close()
}

func TestParseAuthorizedKeys(t *testing.T) {
	a := newSigner(t)
	keys, err := sshd.ParseAuthorizedKeys([]byte(strings.TrimSuffix(authLine(a, ""), " \n") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.Account != ssh.FingerprintSHA256(a.PublicKey()) {
			t.Errorf("a key without comment is account %q", k.Account)
		}
	}
	if _, err := sshd.ParseAuthorizedKeys([]byte(authLine(a, "one") + authLine(a, "two"))); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("one key in two accounts: %v", err)
	}
	if _, err := sshd.ParseAuthorizedKeys([]byte("ssh-ed25519 not-base64 x\n")); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("garbage line: %v", err)
	}
}
