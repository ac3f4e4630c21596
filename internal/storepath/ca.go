package storepath

import (
	"fmt"
	"strings"

	"github.com/nixfarm/nixfarm/internal/nixhash"
)

// CAMethod is how a content-addressed path's hash was taken.
type CAMethod uint8

// The content-addressing methods.
const (
	// Text: the SHA-256 of a single file's contents (.drv files, toFile).
	Text CAMethod = iota + 1
	// Flat: the hash of a single file's contents (fetchurl).
	Flat
	// Recursive: the hash of the path's NAR.
	Recursive
)

// ContentAddress is a path's content address, as Nix writes it in the
// "ca" field: "text:sha256:<nix32>" or "fixed:[r:]<algo>:<nix32>".
type ContentAddress struct {
	Method CAMethod
	Hash   nixhash.Hash
}

// ParseContentAddress parses a content address. The hash may be in any form
// nixhash.Parse accepts.
func ParseContentAddress(s string) (ContentAddress, error) {
	kind, rest, _ := strings.Cut(s, ":")
	var ca ContentAddress
	switch kind {
	case "text":
		ca.Method = Text
	case "fixed":
		ca.Method = Flat
		if r, ok := strings.CutPrefix(rest, "r:"); ok {
			ca.Method, rest = Recursive, r
		}
	default:
		return ca, fmt.Errorf("content address %q is neither text: nor fixed:", s)
	}
	h, err := nixhash.Parse(rest)
	if err != nil {
		return ca, fmt.Errorf("content address %q: %w", s, err)
	}
	if ca.Method == Text && h.Algo != nixhash.SHA256 {
		return ca, fmt.Errorf("text content address %q is not sha256", s)
	}
	ca.Hash = h
	return ca, nil
}

// String renders the content address as Nix does.
func (ca ContentAddress) String() string {
	switch ca.Method {
	case Text:
		return "text:" + ca.Hash.String()
	case Recursive:
		return "fixed:r:" + ca.Hash.String()
	}
	return "fixed:" + ca.Hash.String()
}

// Path computes the store path that the content address gives a path
// named name with the given references (a reference to the path itself
// is passed as self, since the path is not known yet).
func (ca ContentAddress) Path(name string, refs []Path, self bool) (Path, error) {
	switch ca.Method {
	case Text:
		if self {
			return "", fmt.Errorf("%w: text path %q cannot refer to itself", ErrInvalid, name)
		}
		return Make(withRefs("text", refs, false), ca.Hash, name)
	case Flat:
		return MakeFixedOutput(name, false, ca.Hash, refs, self)
	case Recursive:
		return MakeFixedOutput(name, true, ca.Hash, refs, self)
	}
	return "", fmt.Errorf("%w: unknown content-addressing method", ErrInvalid)
}
