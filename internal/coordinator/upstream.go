package coordinator

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/narinfo"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Substituter fetches store paths from upstream binary caches into the
// farm store (package substituter). What it fetches is registered for
// the farm, not for an account: an account sees a substituted path when
// it trusts a key that signed it (store/signed.go).
type Substituter interface {
	// Query returns which of paths an upstream cache has with a valid
	// signature by a key the farm trusts, with the cache's narinfo.
	Query(ctx context.Context, paths []storepath.Path) (map[storepath.Path]*narinfo.NarInfo, error)
	// Substitute fetches paths and their closures into the farm store,
	// and returns those of paths that are there afterwards.
	Substitute(ctx context.Context, paths []storepath.Path, progress build.Progress) ([]storepath.Path, error)
}

var _ build.Upstream = (*Coordinator)(nil)

// Substitutable implements build.Upstream: the paths of paths that the
// account lacks and an upstream cache has, signed by a key the account
// trusts.
func (c *Coordinator) Substitutable(ctx context.Context, account string, paths []storepath.Path) (map[storepath.Path]*narinfo.NarInfo, error) {
	if c.opts.Substituter == nil || len(paths) == 0 {
		return nil, nil
	}
	missing, err := c.lacking(ctx, account, paths)
	if err != nil || len(missing) == 0 {
		return nil, err
	}
	found, err := c.opts.Substituter.Query(ctx, missing)
	if err != nil {
		return nil, err
	}
	var keys []signature.PublicKey
	if c.opts.TrustedKeys != nil {
		keys = c.opts.TrustedKeys(ctx, account)
	}
	for p, ni := range found {
		if !signature.VerifyAny(keys, ni.Fingerprint(), ni.Sigs) {
			delete(found, p)
		}
	}
	return found, nil
}

// Substitute implements build.Upstream.
func (c *Coordinator) Substitute(ctx context.Context, account string, paths []storepath.Path, progress build.Progress) error {
	_, err := c.fromUpstream(ctx, account, paths, progress, false)
	return err
}

// lacking returns the paths of paths that are not in the account's view.
func (c *Coordinator) lacking(ctx context.Context, account string, paths []storepath.Path) ([]storepath.Path, error) {
	valid, err := c.store.For(account).ValidPaths(ctx, paths)
	if err != nil {
		return nil, err
	}
	have := make(map[storepath.Path]bool, len(valid))
	for _, p := range valid {
		have[p] = true
	}
	var missing []storepath.Path
	for _, p := range paths {
		if !have[p] {
			have[p] = true // once each
			missing = append(missing, p)
		}
	}
	return missing, nil
}

// fromUpstream fetches those of paths the account lacks from upstream
// caches, and reports whether the account has all of paths afterwards.
// With all, it fetches nothing unless every missing path can be had: a
// derivation's outputs are either all substituted or built.
func (c *Coordinator) fromUpstream(ctx context.Context, account string, paths []storepath.Path, progress build.Progress, all bool) (bool, error) {
	if c.opts.Substituter == nil {
		missing, err := c.lacking(ctx, account, paths)
		return err == nil && len(missing) == 0, err
	}
	missing, err := c.lacking(ctx, account, paths)
	if err != nil || len(missing) == 0 {
		return err == nil, err
	}
	wanted := missing
	if all {
		avail, err := c.Substitutable(ctx, account, missing)
		if err != nil {
			return false, err
		}
		if len(avail) < len(missing) {
			return false, nil
		}
		wanted = slices.Sorted(maps.Keys(avail))
	}
	// Asked for paths no cache has, the substituter does nothing; for
	// paths a cache has but the farm refuses, it says why.
	_, subErr := c.opts.Substituter.Substitute(ctx, wanted, progress)
	still, err := c.lacking(ctx, account, missing)
	if err != nil {
		return false, err
	}
	if subErr != nil {
		c.log.Warn("substituting from upstream caches failed", "account", account, "paths", len(wanted), "err", subErr)
	}
	return len(still) == 0, subErr
}

// substituteOutputs fetches a derivation's outputs from upstream caches
// when they all can be had, and reports whether it did. A fetch that
// fails is logged, and the derivation is built instead.
func (c *Coordinator) substituteOutputs(ctx context.Context, account string, outputs map[string]storepath.Path, progress build.Progress, log *slog.Logger) bool {
	if c.opts.Substituter == nil || len(outputs) == 0 {
		return false
	}
	paths := make([]storepath.Path, 0, len(outputs))
	for _, p := range outputs {
		if p == "" { // a floating content-addressed output: its path is not known yet
			return false
		}
		paths = append(paths, p)
	}
	ok, err := c.fromUpstream(ctx, account, paths, progress, true)
	if err != nil {
		log.Warn("could not substitute the outputs; building them", "err", err)
		return false
	}
	return ok
}

// substituted records and returns the answer to a request whose outputs
// were fetched from upstream caches.
func (c *Coordinator) substituted(ctx context.Context, req *build.Request, outputs map[string]storepath.Path, start time.Time) (*build.Result, error) {
	res := &build.Result{Status: build.Substituted, StartTime: start, StopTime: c.now(), Outputs: outputs}
	id, err := c.record(ctx, req, res, start)
	if err != nil {
		return nil, err
	}
	res.Record = id
	setBasicHash(res, req.Drv)
	return res, nil
}

// missingInputs is the error for a build whose inputs the account lacks,
// after trying upstream caches.
func missingInputs(err, upstream error) error {
	switch {
	case upstream == nil:
		return fmt.Errorf("%w: %w", ErrMissingInput, err)
	case publicerr.Is(upstream):
		// Why an upstream cache's copy was refused.
		return fmt.Errorf("%w: %w; and from upstream caches: %w", ErrMissingInput, err, upstream)
	}
	return fmt.Errorf("%w: %w (fetching it from upstream caches failed too; the farm's log has why)", ErrMissingInput, err)
}
