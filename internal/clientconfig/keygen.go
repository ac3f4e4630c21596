package clientconfig

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode"

	"golang.org/x/crypto/ssh"
)

// GenerateKey makes a new ed25519 key without a passphrase (nix-daemon
// cannot type one) and writes it to path (0600, OpenSSH format) and
// path.pub (0644, authorized_keys format with comment), both given to
// owner if not nil. A missing parent directory is created (0700 if it is
// named .ssh). It refuses to overwrite either file.
func GenerateKey(path, comment string, owner *Owner) (ssh.PublicKey, error) {
	if strings.ContainsFunc(comment, unicode.IsControl) {
		return nil, fmt.Errorf("key comment %q holds a control character", comment)
	}
	for _, p := range []string{path, path + ".pub"} {
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("%s already exists; not overwriting it", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("checking %s: %w", p, err)
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating a key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, fmt.Errorf("encoding the key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding the public key: %w", err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))
	if comment != "" {
		line += " " + comment
	}
	if err := mkdirs(filepath.VolumeName(path)+string(filepath.Separator), filepath.Dir(path), owner); err != nil {
		return nil, fmt.Errorf("creating the directory of %s: %w", path, err)
	}
	if err := createFile(path, pem.EncodeToMemory(block), 0o600, owner); err != nil {
		return nil, err
	}
	if err := createFile(path+".pub", []byte(line+"\n"), 0o644, owner); err != nil {
		os.Remove(path)
		return nil, err
	}
	return sshPub, nil
}

// createFile writes a file that must not exist yet.
func createFile(path string, data []byte, mode os.FileMode, owner *Owner) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	var uid, gid int
	if owner != nil {
		uid, gid = owner.UID, owner.GID
	}
	if err := finish(f, data, mode, uid, gid, owner != nil); err != nil {
		os.Remove(path)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
