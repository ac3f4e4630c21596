package substituter

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nixfarm/nixfarm/internal/narinfo"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Substitute makes each of paths valid in the store, with its closure, by
// fetching what the store lacks from the caches, references first. It
// returns the paths of paths that are valid afterwards (those there
// already included), in the order given. A path no cache has is simply
// not returned; one that could not be fetched or verified, or whose
// closure could not, is not returned and err (errors.Join) has one error
// for it naming the path, the cache and what was wrong.
func (s *Substituter) Substitute(ctx context.Context, paths []storepath.Path, progress Progress) ([]storepath.Path, error) {
	if s.cfg.Store == nil {
		return nil, ctx.Err()
	}
	paths = uniq(paths)
	valid, err := s.validSet(ctx, paths)
	if err != nil {
		return nil, err
	}
	var missing []storepath.Path
	for _, p := range paths {
		if !valid[p] {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 || len(s.caches) == 0 {
		return inOrder(paths, valid), nil
	}
	pl, err := s.plan(ctx, missing, progress)
	if err != nil {
		return inOrder(paths, valid), err
	}
	jobs := s.run(ctx, pl, progress)
	var errs []error
	for _, p := range missing {
		switch j := jobs[p]; {
		case j != nil && j.err == nil:
			valid[p] = true
		case j != nil:
			errs = append(errs, j.err)
		case pl.refused[p] != nil:
			errs = append(errs, pl.refused[p])
		}
	}
	if err := ctx.Err(); err != nil {
		errs = append([]error{err}, errs...)
	}
	return inOrder(paths, valid), errors.Join(errs...)
}

func uniq(paths []storepath.Path) []storepath.Path {
	seen := make(map[storepath.Path]bool, len(paths))
	out := make([]storepath.Path, 0, len(paths))
	for _, p := range paths {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

func inOrder(paths []storepath.Path, valid map[storepath.Path]bool) []storepath.Path {
	var out []storepath.Path
	for _, p := range paths {
		if valid[p] {
			out = append(out, p)
		}
	}
	return out
}

func (s *Substituter) validSet(ctx context.Context, paths []storepath.Path) (map[storepath.Path]bool, error) {
	valid, err := s.cfg.Store.ValidPaths(ctx, paths)
	if err != nil {
		return nil, fmt.Errorf("substituting: checking the store: %w", err)
	}
	set := make(map[storepath.Path]bool, len(valid))
	for _, p := range valid {
		set[p] = true
	}
	return set, nil
}

// plan is what Substitute fetches: the closure of the wanted paths that
// the store lacks, in dependency order.
type plan struct {
	order   []*narinfo.NarInfo       // references first
	absent  map[storepath.Path]bool  // no cache has a valid narinfo
	refused map[storepath.Path]error // why a cache's narinfo was refused
	fail    map[storepath.Path]error // cannot be had: a reference is absent
	infos   map[storepath.Path]*narinfo.NarInfo
}

// plan looks up the closure of missing layer by layer, leaving out what
// the store has, and sorts it.
func (s *Substituter) plan(ctx context.Context, missing []storepath.Path, prog Progress) (*plan, error) {
	pl := &plan{
		absent:  map[storepath.Path]bool{},
		refused: map[storepath.Path]error{},
		fail:    map[storepath.Path]error{},
		infos:   map[storepath.Path]*narinfo.NarInfo{},
	}
	seen := map[storepath.Path]bool{}
	for _, p := range missing {
		seen[p] = true
	}
	for frontier := missing; len(frontier) > 0; {
		found, refused, err := s.query(ctx, frontier, prog)
		if err != nil {
			return nil, err
		}
		var refs []storepath.Path
		for _, p := range frontier {
			ni := found[p]
			if ni == nil {
				pl.absent[p] = true
				if refused[p] != nil {
					pl.refused[p] = refused[p]
				}
				continue
			}
			pl.infos[p] = ni
			for _, r := range ni.References {
				if !seen[r] {
					seen[r] = true
					refs = append(refs, r)
				}
			}
		}
		have, err := s.validSet(ctx, refs)
		if err != nil {
			return nil, err
		}
		frontier = slices.DeleteFunc(refs, func(r storepath.Path) bool { return have[r] })
	}
	return pl, pl.sort()
}

// sort orders the paths to fetch references first and marks those whose
// closure cannot be had.
func (pl *plan) sort() error {
	infos := make([]*store.PathInfo, 0, len(pl.infos))
	for p, ni := range pl.infos {
		infos = append(infos, &store.PathInfo{Path: p, References: ni.References})
	}
	sorted, err := store.TopoSort(infos)
	if err != nil {
		return fmt.Errorf("substituting: the caches' narinfos: %w", err)
	}
	for _, i := range sorted {
		p := i.Path
		pl.order = append(pl.order, pl.infos[p])
		for _, r := range i.References {
			if r == p {
				continue
			}
			if pl.absent[r] {
				err := fmt.Errorf("substituting %s: its reference %s is in no substituter", p, r)
				if pl.refused[r] != nil {
					err = fmt.Errorf("substituting %s: its reference %s: %w", p, r, pl.refused[r])
				}
				pl.fail[p] = err
				break
			}
			if pl.fail[r] != nil {
				pl.fail[p] = fmt.Errorf("substituting %s: %w", p, pl.fail[r])
				break
			}
		}
	}
	return nil
}

// job is the fetch of one path within a Substitute call.
type job struct {
	ni   *narinfo.NarInfo
	done chan struct{}
	err  error // set before done is closed
}

// run fetches the plan's paths, each once its references are in, up to
// Parallel at once (across all calls), and returns each path's job.
func (s *Substituter) run(ctx context.Context, pl *plan, prog Progress) map[storepath.Path]*job {
	jobs := make(map[storepath.Path]*job, len(pl.order))
	for _, ni := range pl.order {
		j := &job{ni: ni, done: make(chan struct{})}
		jobs[ni.StorePath] = j
		if err := pl.fail[ni.StorePath]; err != nil {
			j.err = err
			close(j.done)
		}
	}
	for _, ni := range pl.order {
		j := jobs[ni.StorePath]
		if j.err != nil {
			continue
		}
		go func() {
			defer close(j.done)
			j.err = s.runJob(ctx, j, jobs, prog)
		}()
	}
	for _, j := range jobs {
		<-j.done
	}
	return jobs
}

func (s *Substituter) runJob(ctx context.Context, j *job, jobs map[storepath.Path]*job, prog Progress) error {
	p := j.ni.StorePath
	for _, r := range j.ni.References {
		dep := jobs[r]
		if r == p || dep == nil {
			continue
		}
		select {
		case <-dep.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if dep.err != nil {
			return fmt.Errorf("substituting %s: its reference %s could not be substituted: %w", p, r, dep.err)
		}
	}
	_, err := s.fetchF.do(ctx, p, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, s.fetch(ctx, p, prog)
	})
	return err
}

// fetch makes p valid in the store from the first cache, in order, that
// has a valid narinfo for it and delivers a NAR matching it.
func (s *Substituter) fetch(ctx context.Context, p storepath.Path, prog Progress) error {
	if have, err := s.validSet(ctx, []storepath.Path{p}); err != nil {
		return err
	} else if have[p] {
		return nil // another call fetched it meanwhile
	}
	select {
	case s.fetches <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.fetches }()
	var errs []error
	for _, c := range s.ordered(ctx, prog) {
		e, err := s.lookup(ctx, c, p, prog)
		if err != nil || e.ni == nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			continue
		}
		err = s.fetchFrom(ctx, c, e.ni, prog)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.log.Warn("substituter: fetch failed", "substituter", c.url, "path", string(p), "err", err)
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return fmt.Errorf("substituting %s: no reachable substituter has it any more", p)
	}
	return errors.Join(errs...)
}

// fetchFrom fetches p's NAR as ni describes it from c into the store.
func (s *Substituter) fetchFrom(ctx context.Context, c *upstream, ni *narinfo.NarInfo, prog Progress) (err error) {
	p := ni.StorePath
	defer func() {
		if err != nil && ctx.Err() == nil {
			err = fmt.Errorf("substituting %s from %s: %w", p, c.url, err)
		}
		s.cfg.Metrics.Substitution(substitutionResult(ctx, err))
	}()
	if err := checkNarURL(ni.URL); err != nil {
		return &Refusal{err}
	}
	if err := checkCompression(ni.Compression); err != nil {
		return &Refusal{err}
	}
	if prog != nil {
		done := prog.Copying(p, c.url)
		defer func() { done(err) }()
	}
	body, err := c.get(ctx, ni.URL)
	var unreachable *unreachableError
	switch {
	case errors.Is(err, errMiss):
		return fmt.Errorf("its NAR %s is not in the cache", ni.URL)
	case errors.As(err, &unreachable):
		c.markDown(err, prog)
		return err
	case err != nil:
		return err
	}
	defer body.Close()
	ns, err := newNarStream(body, ni)
	if err != nil {
		return err
	}
	defer ns.Close()
	info := &store.PathInfo{
		Path:       p,
		Deriver:    ni.Deriver,
		NarHash:    ni.NarHash,
		NarSize:    ni.NarSize,
		References: slices.Clone(ni.References),
		Sigs:       slices.Clone(ni.Sigs),
		CA:         ni.CA,
		Sign:       true,
	}
	if err := s.cfg.Store.AddToStore(ctx, info, ns); err != nil {
		return err
	}
	c.reached()
	s.log.Info("substituted", "path", string(p), "substituter", c.url, "nar_size", ni.NarSize)
	return nil
}

// substitutionResult names the outcome of fetchFrom for the metrics
// (metrics.SubstitutionResults); a fetch its caller gave up on is not
// counted.
func substitutionResult(ctx context.Context, err error) string {
	switch {
	case err == nil:
		return "ok"
	case ctx.Err() != nil:
		return ""
	case errors.As(err, new(*Refusal)):
		return "refused"
	}
	return "failed"
}
