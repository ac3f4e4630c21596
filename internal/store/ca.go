package store

import (
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"

	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// ErrContentAddress is returned when a content-addressed path's contents
// do not match its content address or its store path.
var ErrContentAddress = publicerr.Sentinel("content address mismatch")

// caCheck verifies a content-addressed upload while its NAR streams past.
type caCheck struct {
	ca      storepath.ContentAddress
	content hash.Hash // hash of the single file (flat, text) or of the NAR (recursive)
	// derive: no content address was declared (a .drv); the one Nix
	// gives it is computed from its contents.
	derive bool
}

// newCACheck returns the check of a content-addressed upload, or nil for
// an input-addressed one. A .drv is content-addressed whatever its info
// says: Nix names it after its text, so its bytes must give its path.
func newCACheck(info *PathInfo) (*caCheck, error) {
	if info.CA == "" {
		if !info.Path.IsDerivation() {
			return nil, nil
		}
		ca := storepath.ContentAddress{Method: storepath.Text, Hash: nixhash.Hash{Algo: nixhash.SHA256}}
		return &caCheck{ca: ca, content: ca.Hash.Algo.New(), derive: true}, nil
	}
	ca, err := storepath.ParseContentAddress(info.CA)
	if err != nil {
		return nil, fmt.Errorf("adding %s: %w", info.Path, err)
	}
	if info.Path.IsDerivation() && ca.Method != storepath.Text {
		return nil, fmt.Errorf("%w: %s is a derivation, so its content address must be text, not %s", ErrContentAddress, info.Path, info.CA)
	}
	return &caCheck{ca: ca, content: ca.Hash.Algo.New()}, nil
}

// copy reads exactly one NAR from src into dst, feeding the hash the
// content address is taken over, and returns the NAR's size.
func (c *caCheck) copy(dst io.Writer, src io.Reader) (int64, error) {
	if c.ca.Method == storepath.Recursive {
		return nar.Copy(io.MultiWriter(dst, c.content), src)
	}
	counter := &countingWriter{w: dst}
	nr := nar.NewReader(io.TeeReader(src, counter))
	h, err := nr.Next()
	if err != nil {
		return counter.n, err
	}
	if h.Type != nar.TypeRegular {
		return counter.n, fmt.Errorf("%w: content address %s is for a single file, but the NAR holds a %s", ErrContentAddress, c.ca, h.Type)
	}
	if _, err := io.Copy(c.content, nr); err != nil {
		return counter.n, err
	}
	if _, err := nr.Next(); !errors.Is(err, io.EOF) {
		if err == nil {
			err = errors.New("more than one node")
		}
		return counter.n, err
	}
	return counter.n, nil
}

// verify checks the content hash and that the content address, with the
// path's references, gives the path.
func (c *caCheck) verify(info *PathInfo) error {
	got := nixhash.FromDigest(c.ca.Hash.Algo, c.content)
	if c.derive {
		c.ca.Hash = got
	} else if !got.Equal(c.ca.Hash) {
		return fmt.Errorf("%w for %s: ca declares %s, contents hash to %s", ErrContentAddress, info.Path, c.ca.Hash, got)
	}
	self := slices.Contains(info.References, info.Path)
	others := slices.DeleteFunc(slices.Clone(info.References), func(p storepath.Path) bool { return p == info.Path })
	want, err := c.ca.Path(info.Path.Name(), others, self)
	if err != nil {
		return fmt.Errorf("%w for %s: %w", ErrContentAddress, info.Path, err)
	}
	if want != info.Path && c.derive {
		return fmt.Errorf("%w: the contents of derivation %s, with its references, give the path %s: a .drv must be stored under the path of its text", ErrContentAddress, info.Path, want)
	}
	if want != info.Path {
		return fmt.Errorf("%w: ca %s with these references gives %s, not %s", ErrContentAddress, c.ca, want, info.Path)
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
