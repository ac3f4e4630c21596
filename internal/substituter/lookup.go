package substituter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/narinfo"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// errDown is a lookup skipped because its cache is down.
var errDown = errors.New("cache is down")

// lookupKey names one narinfo: a cache (by index) and a path.
type lookupKey struct {
	cache int
	path  storepath.Path
}

// entry is the outcome of a narinfo lookup: a valid narinfo, or a miss
// (ni nil), with bad saying why a narinfo was refused, if one was.
type entry struct {
	ni      *narinfo.NarInfo
	bad     error
	expires time.Time
}

// lookupCache remembers lookups. When full, expired entries go, and if
// that is not enough, all of them.
type lookupCache struct {
	mu  sync.Mutex
	m   map[lookupKey]entry
	max int
}

func (lc *lookupCache) get(k lookupKey, now time.Time) (entry, bool) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	e, ok := lc.m[k]
	if !ok || !now.Before(e.expires) {
		return entry{}, false
	}
	return e, true
}

func (lc *lookupCache) put(k lookupKey, e entry, now time.Time) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.m == nil {
		lc.m = map[lookupKey]entry{}
	}
	if _, ok := lc.m[k]; !ok && len(lc.m) >= lc.max {
		for k, e := range lc.m {
			if !now.Before(e.expires) {
				delete(lc.m, k)
			}
		}
		if len(lc.m) >= lc.max {
			clear(lc.m)
		}
	}
	lc.m[k] = e
}

func (lc *lookupCache) len() int {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return len(lc.m)
}

// lookup returns cache c's narinfo of p, from the lookup cache if it is
// there, else fetched (one request however many callers ask at once). It
// fails with errDown, without I/O, when c is down, and with ctx's error.
func (s *Substituter) lookup(ctx context.Context, c *upstream, p storepath.Path, prog Progress) (entry, error) {
	k := lookupKey{c.idx, p}
	if e, ok := s.cache.get(k, s.now()); ok {
		return e, nil
	}
	if c.down() {
		return entry{}, errDown
	}
	return s.lookupF.do(ctx, k, func(ctx context.Context) (entry, error) {
		if e, ok := s.cache.get(k, s.now()); ok {
			return e, nil
		}
		select {
		case s.lookups <- struct{}{}:
		case <-ctx.Done():
			return entry{}, ctx.Err()
		}
		defer func() { <-s.lookups }()
		if c.down() {
			return entry{}, errDown
		}
		ni, err := c.fetchNarInfo(ctx, p)
		var unreachable *unreachableError
		switch {
		case ctx.Err() != nil:
			return entry{}, ctx.Err()
		case errors.As(err, &unreachable):
			c.markDown(err, prog)
			return entry{}, errDown
		}
		c.reached()
		now := s.now()
		e := entry{expires: now.Add(s.cfg.MissTTL)}
		switch {
		case errors.Is(err, errMiss):
		case err != nil:
			e.bad = refusal("narinfo of %s from %s: %w", p, c.url, err)
		default:
			if err := s.verify(ni, p); err != nil {
				e.bad = refusal("narinfo of %s from %s: %w", p, c.url, err)
			} else {
				e.ni, e.expires = ni, now.Add(s.cfg.HitTTL)
			}
		}
		if e.bad != nil {
			s.warnOnce(k, c, e.bad)
		}
		s.cache.put(k, e, now)
		return e, nil
	})
}

// fetchNarInfo reads and parses p's narinfo from c.
func (c *upstream) fetchNarInfo(ctx context.Context, p storepath.Path) (*narinfo.NarInfo, error) {
	body, err := c.get(ctx, p.HashPart()+".narinfo")
	if err != nil {
		return nil, err
	}
	defer body.Close()
	ni, err := narinfo.Parse(body)
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, narinfo.ErrInvalid) {
			return nil, &unreachableError{err} // the body could not be read
		}
		return nil, err
	}
	return ni, nil
}

// verify checks a parsed narinfo of p: its path, its hash algorithm, and
// its signature unless it is content-addressed.
func (s *Substituter) verify(ni *narinfo.NarInfo, p storepath.Path) error {
	if ni.StorePath != p {
		return fmt.Errorf("it describes %s instead", ni.StorePath)
	}
	if ni.NarHash.Algo != nixhash.SHA256 {
		return fmt.Errorf("NarHash is %s, not sha256", ni.NarHash.Algo)
	}
	// Content-addressed paths need a signature too (Nix takes them
	// unsigned): their contents are checked against their path only once
	// the whole NAR is in, and an unsigned narinfo's sizes bound nothing.
	if len(ni.Sigs) == 0 {
		return errors.New("it is not signed")
	}
	if !signature.VerifyAny(s.cfg.Keys, ni.Fingerprint(), ni.Sigs) {
		return errors.New("no valid signature by a trusted key")
	}
	return nil
}

// flight runs one call per key at a time; callers of a key while it runs
// wait for its result. The call runs under its own context, cancelled
// once every caller waiting for it has given up.
type flight[K comparable, V any] struct {
	mu    sync.Mutex
	calls map[K]*call[V]
}

type call[V any] struct {
	done    chan struct{}
	val     V
	err     error
	waiters int
	cancel  context.CancelFunc
}

func (f *flight[K, V]) do(ctx context.Context, key K, fn func(ctx context.Context) (V, error)) (V, error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[K]*call[V]{}
	}
	c, ok := f.calls[key]
	if !ok {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c = &call[V]{done: make(chan struct{}), cancel: cancel}
		f.calls[key] = c
		go func() {
			defer cancel()
			c.val, c.err = fn(fctx)
			f.mu.Lock()
			if f.calls[key] == c {
				delete(f.calls, key)
			}
			f.mu.Unlock()
			close(c.done)
		}()
	}
	c.waiters++
	f.mu.Unlock()
	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
		f.mu.Lock()
		if c.waiters--; c.waiters == 0 {
			c.cancel()
			if f.calls[key] == c {
				delete(f.calls, key) // a new caller starts afresh
			}
		}
		f.mu.Unlock()
		var zero V
		return zero, ctx.Err()
	}
}
