// Package nixhash implements Nix's content hashes and their textual forms:
// base16 (hex), Nix's own base32 ("nix32"), base64 and SRI, with or without
// an "algo:" prefix.
//
// The nix32 alphabet and bit order come from github.com/nix-community/go-nix,
// wrapped here so the rest of nixfarm never imports it directly; the known
// answers in the tests were produced by the real Nix 2.8.
package nixhash

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"hash"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/nixfarm/nixfarm/internal/publicerr"
)

// Algo names a hash algorithm.
type Algo uint8

// The algorithms Nix knows.
const (
	MD5 Algo = iota + 1
	SHA1
	SHA256
	SHA512
)

var algoNames = map[Algo]string{MD5: "md5", SHA1: "sha1", SHA256: "sha256", SHA512: "sha512"}
var algoSizes = map[Algo]int{MD5: md5.Size, SHA1: sha1.Size, SHA256: sha256.Size, SHA512: sha512.Size}

// ParseAlgo parses an algorithm name such as "sha256".
func ParseAlgo(s string) (Algo, error) {
	for a, n := range algoNames {
		if n == s {
			return a, nil
		}
	}
	return 0, publicerr.New("unknown hash algorithm %q", s)
}

// String returns the algorithm's name as Nix writes it.
func (a Algo) String() string {
	if n, ok := algoNames[a]; ok {
		return n
	}
	return fmt.Sprintf("algo(%d)", a)
}

// Size returns the digest length in bytes.
func (a Algo) Size() int { return algoSizes[a] }

// New returns a hash.Hash computing this algorithm.
func (a Algo) New() hash.Hash {
	switch a {
	case MD5:
		return md5.New()
	case SHA1:
		return sha1.New()
	case SHA512:
		return sha512.New()
	default:
		return sha256.New()
	}
}

// Hash is a digest together with its algorithm.
type Hash struct {
	Algo   Algo
	Digest []byte
}

// ErrInvalid is wrapped by every parse error.
var ErrInvalid = publicerr.Sentinel("invalid hash")

// SHA256Of returns the SHA-256 hash of data.
func SHA256Of(data []byte) Hash {
	d := sha256.Sum256(data)
	return Hash{Algo: SHA256, Digest: d[:]}
}

// FromDigest wraps a finished hash.Hash of the given algorithm.
func FromDigest(a Algo, h hash.Hash) Hash { return Hash{Algo: a, Digest: h.Sum(nil)} }

// IsZero reports whether h holds no digest.
func (h Hash) IsZero() bool { return len(h.Digest) == 0 }

// Equal reports whether two hashes have the same algorithm and digest.
func (h Hash) Equal(o Hash) bool {
	return h.Algo == o.Algo && string(h.Digest) == string(o.Digest)
}

// Hex returns the digest in base16.
func (h Hash) Hex() string { return hex.EncodeToString(h.Digest) }

// Nix32 returns the digest in Nix's base32.
func (h Hash) Nix32() string { return EncodeNix32(h.Digest) }

// Base64 returns the digest in standard padded base64.
func (h Hash) Base64() string { return base64.StdEncoding.EncodeToString(h.Digest) }

// SRI returns the hash as a subresource-integrity string, "sha256-<base64>".
func (h Hash) SRI() string { return h.Algo.String() + "-" + h.Base64() }

// String returns the form Nix uses in narinfo and the serve protocol:
// "sha256:<nix32>".
func (h Hash) String() string { return h.Algo.String() + ":" + h.Nix32() }

// EncodeNix32 encodes bytes in Nix's base32.
func EncodeNix32(b []byte) string { return nixbase32.EncodeToString(b) }

// DecodeNix32 decodes Nix's base32, rejecting characters outside the alphabet
// and non-zero padding bits.
func DecodeNix32(s string) ([]byte, error) {
	b, err := nixbase32.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return b, nil
}

// Nix32Len returns the length of the nix32 encoding of n bytes.
func Nix32Len(n int) int { return nixbase32.EncodedLen(n) }

// IsNix32Char reports whether c belongs to Nix's base32 alphabet.
func IsNix32Char(c byte) bool { return nixbase32.Is(c) }

// Parse parses a hash that names its algorithm: "algo:<digest>" with the
// digest in hex, nix32 or base64, or SRI "algo-<base64>".
func Parse(s string) (Hash, error) {
	if i := strings.IndexByte(s, ':'); i >= 0 {
		a, err := ParseAlgo(s[:i])
		if err != nil {
			return Hash{}, fmt.Errorf("%w %q: %w", ErrInvalid, s, err)
		}
		return ParseDigest(a, s[i+1:])
	}
	if i := strings.IndexByte(s, '-'); i >= 0 {
		a, err := ParseAlgo(s[:i])
		if err != nil {
			return Hash{}, fmt.Errorf("%w %q: %w", ErrInvalid, s, err)
		}
		// Like Nix, accept SRI digests with or without '=' padding.
		d, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(s[i+1:], "="))
		if err != nil || len(d) != a.Size() {
			return Hash{}, fmt.Errorf("%w: SRI hash %q is not %d bytes of base64", ErrInvalid, s, a.Size())
		}
		return Hash{Algo: a, Digest: d}, nil
	}
	return Hash{}, fmt.Errorf("%w: %q names no algorithm (want \"sha256:…\" or SRI)", ErrInvalid, s)
}

// ParseAs parses a hash whose algorithm is implied when it is not written:
// it accepts everything Parse does, plus a bare digest of the length that
// algorithm a gives in hex, nix32 or base64. A prefix naming another
// algorithm is an error.
func ParseAs(a Algo, s string) (Hash, error) {
	if strings.ContainsAny(s, ":-") { // bare hex, nix32 and base64 have neither
		h, err := Parse(s)
		if err != nil {
			return Hash{}, err
		}
		if h.Algo != a {
			return Hash{}, fmt.Errorf("%w: %q is %s, want %s", ErrInvalid, s, h.Algo, a)
		}
		return h, nil
	}
	return ParseDigest(a, s)
}

// ParseDigest parses a bare digest of algorithm a, telling hex, nix32 and
// base64 apart by length as Nix does.
func ParseDigest(a Algo, s string) (Hash, error) {
	size := a.Size()
	if size == 0 {
		return Hash{}, fmt.Errorf("%w: unknown algorithm", ErrInvalid)
	}
	switch len(s) {
	case 2 * size:
		d, err := hex.DecodeString(s)
		if err != nil {
			return Hash{}, fmt.Errorf("%w: %s hex digest %q: %w", ErrInvalid, a, s, err)
		}
		return Hash{Algo: a, Digest: d}, nil
	case Nix32Len(size):
		d, err := DecodeNix32(s)
		if err != nil {
			return Hash{}, fmt.Errorf("%s digest %q: %w", a, s, err)
		}
		return Hash{Algo: a, Digest: d}, nil
	case base64.StdEncoding.EncodedLen(size):
		d, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return Hash{}, fmt.Errorf("%w: %s base64 digest %q: %w", ErrInvalid, a, s, err)
		}
		// Without its '=' padding, a string of this length holds more bytes.
		if len(d) != size {
			return Hash{}, fmt.Errorf("%w: %s base64 digest %q is %d bytes, want %d", ErrInvalid, a, s, len(d), size)
		}
		return Hash{Algo: a, Digest: d}, nil
	}
	return Hash{}, fmt.Errorf("%w: %s digest %q has length %d; want %d (hex), %d (nix32) or %d (base64)",
		ErrInvalid, a, s, len(s), 2*size, Nix32Len(size), base64.StdEncoding.EncodedLen(size))
}
