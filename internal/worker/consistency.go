package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// A worker's Nix store is shared by the builds of every account, but two
// accounts may hold different contents under one store path (see package
// store). A build must run on exactly the contents its account sees, so
// before a build the executor compares what the machine holds with the
// account's view: a path the machine holds with other contents, and an
// output the machine holds before it has built it, are removed first
// (Deleter), or the build goes to another worker. While a build runs, its
// paths are claimed with the contents it uses, and a build that needs
// other contents under a claimed path waits (build.ErrWorkerBusy).

// errRemoved ends a session that removed paths from the machine's store:
// the build starts again in a fresh one.
var errRemoved = errors.New("paths were removed from the worker's store; checking again in a fresh session")

// claim is one path in use by builds running on the executor's machine.
type claim struct {
	version string // the contents they use
	n       int    // how many builds
}

// claim claims the input closure of req, with its contents, and its
// outputs, for req alone; release gives them back.
func (e *Executor) claim(req *build.Request, closure []*store.PathInfo) (release func(), err error) {
	want := make(map[storepath.Path]string, len(closure)+len(req.Drv.Outputs))
	for _, info := range closure {
		want[info.Path] = signature.Fingerprint(info.Path, info.NarHash, info.NarSize, info.References)
	}
	// An output is its build's alone until it is registered: no other
	// version of it may be claimed meanwhile.
	token := fmt.Sprintf("output of %s (%p)", req.DrvPath, req)
	for _, p := range req.Drv.OutputPaths() {
		want[p] = token
	}
	e.claimMu.Lock()
	defer e.claimMu.Unlock()
	for p, v := range want {
		if c, ok := e.claims[p]; ok && c.version != v {
			return nil, fmt.Errorf("%w: %s is in use by another build", build.ErrWorkerBusy, p)
		}
	}
	for p, v := range want {
		c, ok := e.claims[p]
		if !ok {
			c = &claim{version: v}
			e.claims[p] = c
		}
		c.n++
	}
	return func() {
		e.claimMu.Lock()
		defer e.claimMu.Unlock()
		for p := range want {
			c := e.claims[p]
			if c.n--; c.n == 0 {
				delete(e.claims, p)
			}
		}
	}, nil
}

// checkMachine returns the paths of closure the machine holds with the
// contents the account sees. Paths it holds with other contents, and
// outputs of req it holds already, are removed from it first.
func (s *session) checkMachine(ctx context.Context, req *build.Request, closure []*store.PathInfo) (map[storepath.Path]bool, error) {
	outputs := req.Drv.OutputPaths()
	query := make([]storepath.Path, 0, len(closure)+len(outputs))
	byPath := make(map[storepath.Path]*store.PathInfo, len(closure))
	for _, info := range closure {
		query = append(query, info.Path)
		byPath[info.Path] = info
	}
	for _, p := range outputs {
		if _, ok := byPath[p]; !ok {
			query = append(query, p)
		}
	}
	// Which paths the machine holds first, then the infos of those: a
	// Nix asked for the info of a path it lacks remembers that it lacks
	// it (its in-memory path info cache), and would then take the path
	// for missing even once it is added, by this build or another.
	valid, err := s.client.QueryValidPaths(query, false, false)
	if err != nil {
		return nil, err
	}
	var present []*store.PathInfo
	if len(valid) > 0 {
		if present, err = s.client.QueryPathInfos(valid); err != nil {
			return nil, err
		}
	}
	have := make(map[storepath.Path]bool, len(present))
	var conflicts []storepath.Path
	for _, got := range present {
		want, ok := byPath[got.Path]
		switch {
		case !ok:
			// An output the machine holds before building it: nothing
			// says what it was built from.
			conflicts = append(conflicts, got.Path)
		case got.NarHash.Equal(want.NarHash) && got.NarSize == want.NarSize && slices.Equal(got.References, want.References):
			have[got.Path] = true
		default:
			conflicts = append(conflicts, got.Path)
		}
	}
	if len(conflicts) == 0 {
		return have, nil
	}
	d, ok := s.e.transport.(Deleter)
	if !ok {
		return nil, fmt.Errorf("%w: %s (and %d more); this worker cannot remove them", build.ErrWorkerConflict, conflicts[0], len(conflicts)-1)
	}
	s.e.log.Info("removing paths whose contents differ from the build's", "drv", req.DrvPath, "paths", len(conflicts), "first", conflicts[0])
	if err := d.Delete(ctx, conflicts); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", build.ErrWorkerConflict, conflicts[0], err)
	}
	// This session's Nix remembers the removed paths as valid (its path
	// info cache): the build goes on in a fresh one, which checks again.
	return nil, errRemoved
}
