package sshd

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// LoadOrCreateHostKey reads an OpenSSH private host key, generating and
// saving an ed25519 key if the file does not exist.
func LoadOrCreateHostKey(path string) (ssh.Signer, bool, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, false, err
		}
		block, err := ssh.MarshalPrivateKey(priv, "nixfarm host key")
		if err != nil {
			return nil, false, err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, false, err
		}
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, pem.EncodeToMemory(block), 0o600); err != nil {
			return nil, false, fmt.Errorf("writing host key: %w", err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return nil, false, fmt.Errorf("writing host key: %w", err)
		}
		signer, err := ssh.NewSignerFromKey(priv)
		return signer, true, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading host key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return nil, false, fmt.Errorf("parsing host key %s: %w", path, err)
	}
	return signer, false, nil
}

// AuthorizedKey is one entry of an authorized_keys file.
type AuthorizedKey struct {
	Key     ssh.PublicKey
	Account string
	Line    int
}

// ParseAuthorizedKeys parses an OpenSSH authorized_keys file. The comment
// after the key names the account; a key without a comment is its own
// account, named after its fingerprint. Options such as restrict are
// accepted and ignored.
func ParseAuthorizedKeys(data []byte) (map[string]AuthorizedKey, error) {
	keys := make(map[string]AuthorizedKey)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		key, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(text))
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		account := strings.Fields(comment)
		name := ssh.FingerprintSHA256(key)
		if len(account) > 0 {
			name = account[0]
		}
		fp := string(key.Marshal())
		if prev, dup := keys[fp]; dup && prev.Account != name {
			return nil, fmt.Errorf("line %d: key is already on line %d for account %q; one key cannot belong to two accounts", line, prev.Line, prev.Account)
		}
		keys[fp] = AuthorizedKey{Key: key, Account: name, Line: line}
	}
	return keys, sc.Err()
}

// keyFile is an authorized_keys file, re-read when it changes so that
// accounts can be added without a restart.
type keyFile struct {
	path string

	mu    sync.Mutex
	mtime time.Time
	size  int64
	keys  map[string]AuthorizedKey
	err   error
}

func (f *keyFile) lookup(key ssh.PublicKey) (AuthorizedKey, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := os.Stat(f.path)
	if err != nil {
		return AuthorizedKey{}, false, fmt.Errorf("authorized keys: %w", err)
	}
	if f.keys == nil || !st.ModTime().Equal(f.mtime) || st.Size() != f.size {
		data, err := os.ReadFile(f.path)
		if err != nil {
			return AuthorizedKey{}, false, fmt.Errorf("authorized keys: %w", err)
		}
		f.mtime, f.size = st.ModTime(), st.Size()
		f.keys, f.err = ParseAuthorizedKeys(data)
		if f.err != nil {
			f.err = fmt.Errorf("authorized keys %s: %w", f.path, f.err)
		}
	}
	if f.err != nil {
		return AuthorizedKey{}, false, f.err
	}
	k, ok := f.keys[string(key.Marshal())]
	return k, ok, nil
}
