// Package store is the farm store: every input uploaded by a client and
// every output built by a worker, as NAR blobs addressed by their hash, with
// their metadata (narHash, narSize, references, deriver, ca, signatures,
// registration time and owning account) in SQLite.
//
// A path is registered only after its NAR has been received in full,
// synced, checked against the declared hash and size, and committed; a
// failed or lying upload leaves nothing registered.
package store

import (
	"context"
	"io"
	"sort"
	"time"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// ErrNotFound is returned for a path the store does not hold.
var ErrNotFound = publicerr.Sentinel("path is not in the farm store")

// ErrHashMismatch is returned when a NAR does not match its declared hash.
var ErrHashMismatch = publicerr.Sentinel("NAR hash mismatch")

// ErrSizeMismatch is returned when a NAR does not match its declared size.
var ErrSizeMismatch = publicerr.Sentinel("NAR size mismatch")

// ErrInvalidReference is returned when a path refers to a path that is not
// valid in the store.
var ErrInvalidReference = publicerr.Sentinel("reference is not valid")

// PathInfo is the metadata of one store path.
type PathInfo struct {
	Path       storepath.Path
	Deriver    storepath.Path // "" if unknown
	NarHash    nixhash.Hash   // always SHA-256
	NarSize    uint64
	References []storepath.Path // sorted
	Sigs       []string
	CA         string // content address, "" for input-addressed paths
	Ultimate   bool   // built here rather than copied in
	// RegistrationTime is when the path became valid in the farm store.
	RegistrationTime time.Time
	// Account is the account that first uploaded or built these contents.
	Account string
	// Worker names the worker that built them ("" if uploaded).
	Worker string
	// Sign asks AddToStore to sign the path with the farm's key (Local.Key):
	// the farm built it and knows its path is the right one. Not stored.
	Sign bool
}

// Store is the farm store's interface. Implementations are safe for
// concurrent use.
type Store interface {
	// QueryPathInfo returns a path's metadata, or ErrNotFound.
	QueryPathInfo(ctx context.Context, p storepath.Path) (*PathInfo, error)
	// QueryPathFromHashPart finds the valid path with the given 32-character
	// hash part, or returns ErrNotFound.
	QueryPathFromHashPart(ctx context.Context, hashPart string) (storepath.Path, error)
	// ValidPaths returns the subset of ps that is valid, in the order given.
	ValidPaths(ctx context.Context, ps []storepath.Path) ([]storepath.Path, error)
	// Closure returns ps and everything they reference, transitively. Any
	// path of ps that is not valid is an error wrapping ErrNotFound.
	Closure(ctx context.Context, ps []storepath.Path) ([]storepath.Path, error)
	// ClosureInfos is Closure with each path's info, in path order.
	ClosureInfos(ctx context.Context, ps []storepath.Path) ([]*PathInfo, error)
	// Referrers returns the valid paths that reference p.
	Referrers(ctx context.Context, p storepath.Path) ([]storepath.Path, error)
	// NarFromPath opens the NAR of a valid path.
	NarFromPath(ctx context.Context, p storepath.Path) (io.ReadCloser, *PathInfo, error)
	// AddToStore reads exactly one NAR from nar and registers it under
	// info. The NAR is validated while it is read; it must match
	// info.NarHash and info.NarSize unless they are zero, in which case
	// they are computed. References other than the path itself must be
	// valid already. If the path is valid already, the NAR is read and
	// dropped. On error nothing is registered, but the reader may have been
	// consumed partly.
	AddToStore(ctx context.Context, info *PathInfo, nar io.Reader) error
	// AddSignatures adds signatures to a valid path, for this view.
	AddSignatures(ctx context.Context, p storepath.Path, sigs []string) error
}

// TopoSort orders infos so that every path comes after the paths it
// references (dependencies first). References to paths outside infos are
// ignored. A cycle is an error.
func TopoSort(infos []*PathInfo) ([]*PathInfo, error) {
	byPath := make(map[storepath.Path]*PathInfo, len(infos))
	for _, i := range infos {
		byPath[i.Path] = i
	}
	const (
		unvisited = iota
		visiting
		done
	)
	state := make(map[storepath.Path]int, len(infos))
	out := make([]*PathInfo, 0, len(infos))
	var visit func(i *PathInfo, parent storepath.Path) error
	visit = func(i *PathInfo, parent storepath.Path) error {
		switch state[i.Path] {
		case done:
			return nil
		case visiting:
			return publicerr.New("reference cycle between %s and %s", parent, i.Path)
		}
		state[i.Path] = visiting
		for _, r := range i.References {
			if d, ok := byPath[r]; ok && r != i.Path {
				if err := visit(d, i.Path); err != nil {
					return err
				}
			}
		}
		state[i.Path] = done
		out = append(out, i)
		return nil
	}
	sorted := append([]*PathInfo(nil), infos...)
	sort.Slice(sorted, func(a, b int) bool { return sorted[a].Path < sorted[b].Path })
	for _, i := range sorted {
		if err := visit(i, ""); err != nil {
			return nil, err
		}
	}
	return out, nil
}
