package e2e

import (
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// sshd is an OpenSSH server on 127.0.0.1 started for one test, serving
// a chroot Nix store to one client key.
type sshd struct {
	port       string
	hostKeyB64 string // base64 of the host key line, as machines files want it
	clientKey  string
	sshConfig  string // Host static-builder, for the coordinator's ssh
	store      string
}

func startSSHD(t *testing.T) *sshd {
	t.Helper()
	const bin = "/usr/sbin/sshd"
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing (openssh-server), and CI must run this test", bin)
		}
		t.Skipf("*** SKIPPING: %s is missing (apt-get install openssh-server)", bin)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // privilege separation
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &sshd{clientKey: filepath.Join(dir, "client_ed25519"), sshConfig: filepath.Join(dir, "ssh_config"), store: filepath.Join(dir, "nix")}
	hostKey := filepath.Join(dir, "host_ed25519")
	hostPub := writeKey(t, hostKey)
	os.Chmod(hostKey, 0o600)
	clientPub := writeKey(t, s.clientKey)
	auth := filepath.Join(dir, "authorized_keys")
	os.WriteFile(auth, ssh.MarshalAuthorizedKey(clientPub), 0o600)
	s.hostKeyB64 = base64.StdEncoding.EncodeToString([]byte(strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostPub)))))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, s.port, _ = net.SplitHostPort(ln.Addr().String())
	ln.Close()
	cfg := filepath.Join(dir, "sshd_config")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`Port %s
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
LogLevel ERROR
`, s.port, hostKey, auth)), 0o600)
	cmd := exec.Command(bin, "-D", "-e", "-f", cfg)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("sshd output:\n%s", out)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", "127.0.0.1:"+s.port)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd did not start: %s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	os.WriteFile(s.sshConfig, []byte(fmt.Sprintf(`Host static-builder
    HostName 127.0.0.1
    Port %s
    User root
    IdentitiesOnly yes
    HostKeyAlias static-builder
`, s.port)), 0o600)
	return s
}
