package clientconfig_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/clientconfig"
)

func TestGenerateKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "home/alice/.ssh/nixfarm_ed25519")
	owner := &clientconfig.Owner{UID: 1234, GID: 1235}
	pub, err := clientconfig.GenerateKey(path, "nixfarm client alice@host", owner)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := clientconfig.CheckKey(path); st != clientconfig.KeyUsable {
		t.Fatalf("CheckKey: %v %v", st, err)
	}
	for p, mode := range map[string]os.FileMode{path: 0o600, path + ".pub": 0o644, filepath.Dir(path): 0o700, filepath.Join(dir, "home/alice"): 0o755} {
		info, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != mode || info.Sys().(*syscall.Stat_t).Uid != 1234 {
			t.Errorf("%s: mode %v uid %d, want %v 1234", p, info.Mode().Perm(), info.Sys().(*syscall.Stat_t).Uid, mode)
		}
	}
	line, _ := os.ReadFile(path + ".pub")
	k, comment, _, rest, err := ssh.ParseAuthorizedKey(line)
	if err != nil || !bytes.Equal(k.Marshal(), pub.Marshal()) || comment != "nixfarm client alice@host" || len(rest) != 0 {
		t.Errorf("%s holds %q: %v", path+".pub", line, err)
	}
	if bin, err := exec.LookPath("ssh-keygen"); err == nil {
		out, err := exec.Command(bin, "-y", "-f", path).Output()
		if err != nil {
			t.Fatalf("ssh-keygen -y: %v", err)
		}
		if got, _, _, _, err := ssh.ParseAuthorizedKey(out); err != nil || !bytes.Equal(got.Marshal(), pub.Marshal()) {
			t.Errorf("ssh-keygen -y prints %q, %v", out, err)
		}
	}

	// Never over an existing key, nor its .pub; a comment stays one line.
	before, _ := os.ReadFile(path)
	if _, err := clientconfig.GenerateKey(path, "", nil); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("overwrote %s: %v", path, err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("the existing key changed")
	}
	other := filepath.Join(dir, "other")
	os.WriteFile(other+".pub", []byte("x"), 0o644)
	if _, err := clientconfig.GenerateKey(other, "", nil); err == nil {
		t.Error("overwrote an existing .pub")
	}
	if _, err := clientconfig.GenerateKey(filepath.Join(dir, "third"), "a\nb", nil); err == nil {
		t.Error("a comment with a newline was accepted")
	}
}
