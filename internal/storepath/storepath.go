// Package storepath parses, validates and computes Nix store paths:
// /nix/store/<32 nix32 chars>-<name>.
package storepath

import (
	"crypto/sha256"
	"fmt"
	"sort"
	"strings"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/publicerr"
)

// Dir is the logical store directory every nixfarm client and worker uses.
const Dir = "/nix/store"

// HashLen is the length of the nix32 hash part of a store path.
const HashLen = 32

// MaxNameLen is the longest name Nix accepts.
const MaxNameLen = 211

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = publicerr.Sentinel("invalid store path")

// Path is a validated absolute store path. The zero value is "no path".
type Path string

// Parse validates an absolute store path such as
// "/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-hello-2.12".
func Parse(s string) (Path, error) {
	base, ok := strings.CutPrefix(s, Dir+"/")
	if !ok {
		return "", fmt.Errorf("%w %q: not in %s", ErrInvalid, s, Dir)
	}
	if _, err := FromBase(base); err != nil {
		return "", err
	}
	return Path(s), nil
}

// ParseList parses every element of ss.
func ParseList(ss []string) ([]Path, error) {
	out := make([]Path, len(ss))
	for i, s := range ss {
		p, err := Parse(s)
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}

// FromBase validates a store path's base name ("<hash>-<name>") and returns
// the full path.
func FromBase(base string) (Path, error) {
	if len(base) < HashLen+2 || base[HashLen] != '-' {
		return "", fmt.Errorf("%w %q: want <32-char hash>-<name>", ErrInvalid, base)
	}
	for i := 0; i < HashLen; i++ {
		if !nixhash.IsNix32Char(base[i]) {
			return "", fmt.Errorf("%w %q: hash part has %q, not a nix32 character", ErrInvalid, base, base[i])
		}
	}
	if why := nameProblem(base[HashLen+1:]); why != "" {
		return "", fmt.Errorf("%w %q: %s", ErrInvalid, base, why)
	}
	return Path(Dir + "/" + base), nil
}

// ValidateName checks a store path name: 1 to 211 characters from
// [A-Za-z0-9+-._?=].
func ValidateName(name string) error {
	if why := nameProblem(name); why != "" {
		return fmt.Errorf("%w: %s", ErrInvalid, why)
	}
	return nil
}

func nameProblem(name string) string {
	if name == "" {
		return "empty name"
	}
	if len(name) > MaxNameLen {
		return fmt.Sprintf("name is %d characters, the limit is %d", len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("+-._?=", c) >= 0) {
			return fmt.Sprintf("name %q has forbidden character %q", name, c)
		}
	}
	return ""
}

// String returns the full path.
func (p Path) String() string { return string(p) }

// Base returns "<hash>-<name>".
func (p Path) Base() string { return string(p)[len(Dir)+1:] }

// HashPart returns the 32-character nix32 hash part.
func (p Path) HashPart() string { return string(p)[len(Dir)+1 : len(Dir)+1+HashLen] }

// Name returns the part after the hash and dash.
func (p Path) Name() string { return string(p)[len(Dir)+2+HashLen:] }

// IsDerivation reports whether the path names a .drv file.
func (p Path) IsDerivation() bool { return strings.HasSuffix(string(p), ".drv") }

// Strings converts paths to plain strings.
func Strings(ps []Path) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = string(p)
	}
	return out
}

// Sorted returns a sorted copy of ps.
func Sorted(ps []Path) []Path {
	out := append([]Path(nil), ps...)
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Make computes a store path from its type string (such as "source" or
// "output:out"), an inner SHA-256 hash and a name, as Nix's makeStorePath
// does: the SHA-256 of "<type>:sha256:<hex>:/nix/store:<name>", XOR-folded
// to 20 bytes and written in nix32.
func Make(typ string, inner nixhash.Hash, name string) (Path, error) {
	if err := ValidateName(name); err != nil {
		return "", err
	}
	if inner.Algo != nixhash.SHA256 {
		return "", fmt.Errorf("%w: inner hash must be sha256, not %s", ErrInvalid, inner.Algo)
	}
	fp := typ + ":sha256:" + inner.Hex() + ":" + Dir + ":" + name
	sum := sha256.Sum256([]byte(fp))
	var folded [20]byte
	for i, b := range sum {
		folded[i%20] ^= b
	}
	return Path(Dir + "/" + nixhash.EncodeNix32(folded[:]) + "-" + name), nil
}

func withRefs(typ string, refs []Path, self bool) string {
	var b strings.Builder
	b.WriteString(typ)
	for _, r := range Sorted(refs) {
		b.WriteByte(':')
		b.WriteString(string(r))
	}
	if self {
		b.WriteString(":self")
	}
	return b.String()
}

// MakeText computes the path of a text file such as a .drv or a
// builtins.toFile result: type "text" with its sorted references.
func MakeText(name string, contents []byte, refs []Path) (Path, error) {
	return Make(withRefs("text", refs, false), nixhash.SHA256Of(contents), name)
}

// MakeFixedOutput computes the path of fixed-output (content-addressed)
// data. recursive means the hash is of a NAR rather than of a flat file.
// References are allowed only for recursive SHA-256 ("source") paths.
func MakeFixedOutput(name string, recursive bool, h nixhash.Hash, refs []Path, self bool) (Path, error) {
	if recursive && h.Algo == nixhash.SHA256 {
		return Make(withRefs("source", refs, self), h, name)
	}
	if len(refs) > 0 || self {
		return "", fmt.Errorf("%w: fixed-output path %q with references must be recursive sha256", ErrInvalid, name)
	}
	method := ""
	if recursive {
		method = "r:"
	}
	inner := nixhash.SHA256Of([]byte("fixed:out:" + method + h.Algo.String() + ":" + h.Hex() + ":"))
	return Make("output:out", inner, name)
}

// OutputName returns the store path name of output id of a derivation
// named drvName: drvName itself for "out", else drvName-id.
func OutputName(drvName, id string) string {
	if id == "out" {
		return drvName
	}
	return drvName + "-" + id
}

// MakeOutput computes the path of an input-addressed derivation output from
// the derivation's hashDerivationModulo.
func MakeOutput(id string, hashModulo nixhash.Hash, drvName string) (Path, error) {
	return Make("output:"+id, hashModulo, OutputName(drvName, id))
}
