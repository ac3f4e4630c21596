package store

import (
	"context"
	"fmt"
	"io"

	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// maxDrvSize bounds the .drv files the farm will parse.
const maxDrvSize = 64 << 20

// ReadDerivation loads and parses a .drv file held in the store.
func ReadDerivation(ctx context.Context, s Store, p storepath.Path) (*derivation.Derivation, error) {
	if !p.IsDerivation() {
		return nil, publicerr.New("%s is not a derivation", p)
	}
	rc, _, err := s.NarFromPath(ctx, p)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	nr := nar.NewReader(rc)
	h, err := nr.Next()
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", p, err)
	}
	if h.Type != nar.TypeRegular {
		return nil, publicerr.New("%s is not a regular file", p)
	}
	if h.Size > maxDrvSize {
		return nil, publicerr.New("%s is %d bytes, more than the %d allowed for a derivation", p, h.Size, maxDrvSize)
	}
	data, err := io.ReadAll(nr)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", p, err)
	}
	d, err := derivation.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", p, err)
	}
	return d, nil
}
