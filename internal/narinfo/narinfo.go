// Package narinfo parses and renders the .narinfo files of Nix binary
// caches (src/libstore/nar-info.cc in Nix 2.8).
//
// A narinfo is a list of "Key: value" lines describing one store path: where
// its compressed NAR is (URL, Compression, FileHash, FileSize), what the NAR
// is (NarHash, NarSize), its References and Deriver as base names, the
// System it was built for, its signatures (Sig, repeatable) and its content
// address (CA). String renders the keys in the order Nix writes them, so a
// narinfo made by Nix round-trips byte for byte.
package narinfo

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// MaxSize is the largest narinfo Parse accepts.
const MaxSize = 1 << 20

// ContentType is the MIME type binary caches serve narinfo files with.
const ContentType = "text/x-nix-narinfo"

// ErrInvalid is wrapped by every parse error.
var ErrInvalid = publicerr.Sentinel("invalid narinfo")

// NarInfo describes one store path in a binary cache.
type NarInfo struct {
	StorePath   storepath.Path
	URL         string
	Compression string       // "bzip2" if the file does not say
	FileHash    nixhash.Hash // zero if absent
	FileSize    uint64
	NarHash     nixhash.Hash
	NarSize     uint64
	References  []storepath.Path
	Deriver     storepath.Path // "" if none
	System      string
	Sigs        []string
	CA          string
}

// Parse reads a narinfo of at most MaxSize bytes. Unknown keys are ignored,
// as Nix ignores them; StorePath, URL, NarHash and a non-zero NarSize are
// required. Every key but Sig may appear only once.
func Parse(r io.Reader) (*NarInfo, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading narinfo: %w", err)
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrInvalid, MaxSize)
	}
	ni := &NarInfo{}
	seen := map[string]bool{}
	for n := 1; len(data) > 0; n++ {
		line, rest, ok := bytes.Cut(data, []byte{'\n'})
		if !ok {
			return nil, fmt.Errorf("%w: line %d: no newline at the end", ErrInvalid, n)
		}
		data = rest
		key, value, ok := strings.Cut(string(line), ":")
		if !ok || key == "" {
			return nil, fmt.Errorf("%w: line %d: %q is not \"Key: value\"", ErrInvalid, n, line)
		}
		if value != "" {
			if value, ok = strings.CutPrefix(value, " "); !ok {
				return nil, fmt.Errorf("%w: line %d: no space after %q", ErrInvalid, n, key+":")
			}
		}
		if key != "Sig" && seen[key] {
			return nil, fmt.Errorf("%w: line %d: repeated %s", ErrInvalid, n, key)
		}
		seen[key] = true
		if err := ni.set(key, value); err != nil {
			return nil, fmt.Errorf("%w: line %d (%s): %w", ErrInvalid, n, key, err)
		}
	}
	if ni.Compression == "" {
		ni.Compression = "bzip2"
	}
	for _, req := range []struct {
		key string
		ok  bool
	}{
		{"StorePath", ni.StorePath != ""},
		{"URL", ni.URL != ""},
		{"NarHash", !ni.NarHash.IsZero()},
		{"NarSize", ni.NarSize != 0},
	} {
		if !req.ok {
			return nil, fmt.Errorf("%w: missing or empty %s", ErrInvalid, req.key)
		}
	}
	return ni, nil
}

func (ni *NarInfo) set(key, value string) error {
	var err error
	switch key {
	case "StorePath":
		ni.StorePath, err = storepath.Parse(value)
	case "URL":
		ni.URL = value
	case "Compression":
		ni.Compression = value
	case "FileHash":
		ni.FileHash, err = nixhash.Parse(value)
	case "FileSize":
		ni.FileSize, err = parseSize(value)
	case "NarHash":
		ni.NarHash, err = nixhash.Parse(value)
	case "NarSize":
		ni.NarSize, err = parseSize(value)
	case "References":
		for _, base := range strings.Fields(value) {
			p, err := storepath.FromBase(base)
			if err != nil {
				return err
			}
			ni.References = append(ni.References, p)
		}
	case "Deriver":
		if value != "unknown-deriver" {
			ni.Deriver, err = storepath.FromBase(value)
		}
	case "System":
		ni.System = value
	case "Sig":
		if name, sig, ok := strings.Cut(value, ":"); !ok || name == "" || sig == "" {
			return publicerr.New("signature %q is not \"name:base64\"", value)
		}
		ni.Sigs = append(ni.Sigs, value)
	case "CA":
		err = checkCA(value)
		ni.CA = value
	}
	return err
}

func parseSize(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, publicerr.New("%q is not a size", s)
	}
	return n, nil
}

// checkCA validates a content address: "text:sha256:<hash>" or
// "fixed:[r:]<algo>:<hash>".
func checkCA(ca string) error {
	_, err := storepath.ParseContentAddress(ca)
	return err
}

// String renders the narinfo as Nix does: keys in Nix's order, references
// and signatures sorted, empty optional fields left out, and an empty
// Compression written as bzip2.
func (ni *NarInfo) String() string {
	var b strings.Builder
	line := func(key, value string) {
		b.WriteString(key)
		b.WriteString(": ")
		b.WriteString(value)
		b.WriteByte('\n')
	}
	line("StorePath", string(ni.StorePath))
	line("URL", ni.URL)
	compression := ni.Compression
	if compression == "" {
		compression = "bzip2"
	}
	line("Compression", compression)
	if !ni.FileHash.IsZero() {
		line("FileHash", ni.FileHash.String())
	}
	if !ni.FileHash.IsZero() || ni.FileSize != 0 {
		line("FileSize", strconv.FormatUint(ni.FileSize, 10))
	}
	line("NarHash", ni.NarHash.String())
	line("NarSize", strconv.FormatUint(ni.NarSize, 10))
	refs := make([]string, 0, len(ni.References))
	for _, r := range storepath.Sorted(ni.References) {
		refs = append(refs, r.Base())
	}
	line("References", strings.Join(slices.Compact(refs), " "))
	if ni.Deriver != "" {
		line("Deriver", ni.Deriver.Base())
	}
	if ni.System != "" {
		line("System", ni.System)
	}
	sigs := slices.Clone(ni.Sigs)
	slices.Sort(sigs)
	for _, s := range slices.Compact(sigs) {
		line("Sig", s)
	}
	if ni.CA != "" {
		line("CA", ni.CA)
	}
	return b.String()
}

// Fingerprint returns what the narinfo's signatures sign; see
// signature.Fingerprint.
func (ni *NarInfo) Fingerprint() string {
	return signature.Fingerprint(ni.StorePath, ni.NarHash, ni.NarSize, ni.References)
}
