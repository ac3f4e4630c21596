package clientconfig_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/clientconfig"
)

func TestParseVersion(t *testing.T) {
	for out, want := range map[string]string{
		"nix (Nix) 2.8.0\n":               "Nix 2.8.0",
		"nix (Nix) 2.34.8\n":              "Nix 2.34.8",
		"nix (Lix, like Nix) 2.91.1\nfoo": "Lix 2.91.1",
		"nix (Nix) 2.26.3pre20250101_abc": "Nix 2.26.3pre20250101_abc",
	} {
		got, err := clientconfig.ParseVersion(out)
		if err != nil || got.String() != want {
			t.Errorf("%q: %v %v, want %s", out, got, err, want)
		}
	}
	if v, _ := clientconfig.ParseVersion("nix (Nix) 2.26.3"); v.Major != 2 || v.Minor != 26 {
		t.Errorf("2.26.3 parsed as %+v", v)
	}
	for _, bad := range []string{"", "bash: nix: command not found", "nix 2.8"} {
		if _, err := clientconfig.ParseVersion(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestDetectSystem(t *testing.T) {
	root := t.TempDir()
	none := func(string) string { return "" }
	if s := clientconfig.DetectSystem(root, "linux", none); s.Daemon || s.NixOS {
		t.Errorf("an empty root: %+v", s)
	}
	os.MkdirAll(filepath.Join(root, "etc/systemd/system"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/systemd/system/nix-daemon.service"), nil, 0o644)
	os.WriteFile(filepath.Join(root, "etc/NIXOS"), nil, 0o644)
	if s := clientconfig.DetectSystem(root, "linux", none); !s.Daemon || !s.NixOS || s.NixDarwin {
		t.Errorf("NixOS with a daemon: %+v", s)
	}
	local := func(k string) string { return map[string]string{"NIX_REMOTE": "local"}[k] }
	if s := clientconfig.DetectSystem(root, "linux", local); s.Daemon {
		t.Errorf("NIX_REMOTE=local: %+v", s)
	}
	os.MkdirAll(filepath.Join(root, "run/current-system"), 0o755)
	os.WriteFile(filepath.Join(root, "run/current-system/darwin-version"), nil, 0o644)
	if s := clientconfig.DetectSystem(root, "darwin", none); !s.NixDarwin {
		t.Errorf("nix-darwin: %+v", s)
	}
}

func TestCheckKey(t *testing.T) {
	dir := t.TempDir()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	write := func(name string, passphrase []byte) string {
		var block *pem.Block
		var err error
		if passphrase == nil {
			block, err = ssh.MarshalPrivateKey(priv, "")
		} else {
			block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "", passphrase)
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		os.WriteFile(p, pem.EncodeToMemory(block), 0o600)
		return p
	}
	for path, want := range map[string]clientconfig.KeyState{
		write("plain", nil):               clientconfig.KeyUsable,
		write("locked", []byte("secret")): clientconfig.KeyPassphrase,
		filepath.Join(dir, "absent"):      clientconfig.KeyMissing,
	} {
		if got, err := clientconfig.CheckKey(path); got != want || err != nil {
			t.Errorf("%s: %v %v, want %v", filepath.Base(path), got, err, want)
		}
	}
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte("not a key"), 0o600)
	if got, err := clientconfig.CheckKey(garbage); got != clientconfig.KeyUnreadable || err == nil {
		t.Errorf("garbage: %v %v", got, err)
	}
}
