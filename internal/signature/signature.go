// Package signature implements Nix's ed25519 signatures of store paths, as
// used in narinfo "Sig:" lines and by `nix store sign` (src/libstore/crypto.cc
// in Nix 2.8).
//
// Keys and signatures are text of the form "name:base64". A secret key holds
// the 64 bytes libsodium uses (seed then public key, the same layout as
// ed25519.PrivateKey), a public key 32 bytes and a signature 64 bytes. What
// gets signed is a path's fingerprint; see Fingerprint. Ed25519 is
// deterministic, so signing the same fingerprint with the same key gives the
// same signature Nix would.
package signature

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// ErrInvalidKey is wrapped by every key parsing error.
var ErrInvalidKey = publicerr.Sentinel("invalid key")

// SecretKey is a named ed25519 signing key.
type SecretKey struct {
	Name string
	Key  ed25519.PrivateKey
}

// PublicKey is a named ed25519 verification key.
type PublicKey struct {
	Name string
	Key  ed25519.PublicKey
}

// Generate makes a new key pair called name, such as "cache.example.org-1".
func Generate(name string) (SecretKey, PublicKey, error) {
	if err := checkName(name); err != nil {
		return SecretKey{}, PublicKey{}, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SecretKey{}, PublicKey{}, fmt.Errorf("generating key %q: %w", name, err)
	}
	return SecretKey{Name: name, Key: priv}, PublicKey{Name: name, Key: pub}, nil
}

func checkName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty key name", ErrInvalidKey)
	}
	if strings.Contains(name, ":") {
		return fmt.Errorf("%w: key name %q contains ':'", ErrInvalidKey, name)
	}
	return nil
}

// split parses "name:base64" into a name and the decoded bytes, which must
// be n long. Surrounding white space, such as a key file's final newline,
// is ignored.
func split(what, s string, n int) (string, []byte, error) {
	s = strings.TrimSpace(s)
	name, b64, ok := strings.Cut(s, ":")
	if !ok || name == "" || b64 == "" {
		return "", nil, fmt.Errorf("%w: %s is not \"name:base64\"", ErrInvalidKey, what)
	}
	if err := checkName(name); err != nil {
		return "", nil, err
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %s %q: %w", ErrInvalidKey, what, name, err)
	}
	if len(b) != n {
		return "", nil, fmt.Errorf("%w: %s %q has %d bytes, want %d", ErrInvalidKey, what, name, len(b), n)
	}
	return name, b, nil
}

// ParseSecretKey parses a secret key as written by
// `nix-store --generate-binary-cache-key`. It rejects a key whose public
// half does not belong to its seed, which would sign with a wrong key.
func ParseSecretKey(s string) (SecretKey, error) {
	name, b, err := split("secret key", s, ed25519.PrivateKeySize)
	if err != nil {
		return SecretKey{}, err
	}
	k := ed25519.NewKeyFromSeed(b[:ed25519.SeedSize])
	if !bytes.Equal(k, b) {
		return SecretKey{}, fmt.Errorf("%w: secret key %q: public half does not match the seed", ErrInvalidKey, name)
	}
	return SecretKey{Name: name, Key: k}, nil
}

// ParsePublicKey parses a public key such as
// "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=".
func ParsePublicKey(s string) (PublicKey, error) {
	name, b, err := split("public key", s, ed25519.PublicKeySize)
	if err != nil {
		return PublicKey{}, err
	}
	return PublicKey{Name: name, Key: ed25519.PublicKey(b)}, nil
}

// String returns the key in Nix's format, "name:base64".
func (k SecretKey) String() string { return k.Name + ":" + base64.StdEncoding.EncodeToString(k.Key) }

// String returns the key in Nix's format, "name:base64".
func (k PublicKey) String() string { return k.Name + ":" + base64.StdEncoding.EncodeToString(k.Key) }

// Public returns the public key of k, with the same name.
func (k SecretKey) Public() PublicKey {
	return PublicKey{Name: k.Name, Key: k.Key.Public().(ed25519.PublicKey)}
}

// Sign signs a fingerprint and returns "name:base64(signature)".
func (k SecretKey) Sign(fingerprint string) string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(ed25519.Sign(k.Key, []byte(fingerprint)))
}

// Verify reports whether sig is a valid signature of fingerprint by k. A
// signature by another key name, or one that is malformed, is not.
func (k PublicKey) Verify(fingerprint, sig string) bool {
	name, b64, ok := strings.Cut(sig, ":")
	if !ok || name != k.Name || len(k.Key) != ed25519.PublicKeySize {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(k.Key, []byte(fingerprint), raw)
}

// VerifyAny reports whether at least one of sigs is a valid signature of
// fingerprint by one of keys. Signatures by unknown key names are ignored.
func VerifyAny(keys []PublicKey, fingerprint string, sigs []string) bool {
	for _, sig := range sigs {
		for _, k := range keys {
			if k.Verify(fingerprint, sig) {
				return true
			}
		}
	}
	return false
}

// Fingerprint returns what Nix signs for a store path:
// "1;<path>;<narHash as sha256:nix32>;<narSize>;<references>", with the
// references as full paths, sorted and joined by commas.
func Fingerprint(path storepath.Path, narHash nixhash.Hash, narSize uint64, refs []storepath.Path) string {
	var b strings.Builder
	b.WriteString("1;")
	b.WriteString(string(path))
	b.WriteByte(';')
	b.WriteString(narHash.String())
	b.WriteByte(';')
	b.WriteString(strconv.FormatUint(narSize, 10))
	b.WriteByte(';')
	for i, r := range storepath.Sorted(refs) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(string(r))
	}
	return b.String()
}

// Derive returns the key named name whose seed is HMAC-SHA256 of label
// under k's seed: a key of its own for each label, which whoever holds k
// can make again and nobody else can. The farm derives one per account.
func (k SecretKey) Derive(name, label string) SecretKey {
	mac := hmac.New(sha256.New, k.Key.Seed())
	mac.Write([]byte(label))
	return SecretKey{Name: name, Key: ed25519.NewKeyFromSeed(mac.Sum(nil))}
}
