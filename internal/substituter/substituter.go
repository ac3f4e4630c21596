// Package substituter fetches store paths from upstream Nix binary caches
// (HTTP, HTTPS and file:// directories laid out as `nix copy --to file://`
// writes them) into the farm store, as Nix's substituters do.
//
// Verification. A cache is used only if its nix-cache-info says StoreDir
// /nix/store (or says nothing of it). A narinfo is valid only if it names
// the path asked for, has a SHA-256 NarHash, and carries a signature by one
// of Config.Keys over its fingerprint, unless it is content-addressed (CA
// set): Nix takes those unsigned, and the farm store checks their contents
// against their path. A NAR's URL must be relative, without "..", and its
// compression one of none, xz, zstd and bzip2. Never more than FileSize
// compressed bytes are read, and decompressing past NarSize fails at once;
// the farm store checks NarHash and NarSize while the NAR streams in, so a
// lying cache registers nothing. A path's references are substituted
// before it, and a path whose closure cannot be had is not substituted.
//
// Caching. nix-cache-info is read once per cache. Narinfo lookups are
// remembered per cache and path, hits for HitTTL and misses (and invalid
// narinfos) for MissTTL, up to maxLookupEntries entries. A cache that
// cannot be reached (transport error, or a 5xx on nix-cache-info or a
// narinfo) is skipped without any I/O for DownFor, doubling on repeated
// failure up to 10×DownFor; this is logged once per down period. Lookups
// and NAR fetches of the same key share one request however many callers
// want it (single flight).
package substituter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/metrics"
	"github.com/nixfarm/nixfarm/internal/narinfo"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Defaults of Config's zero fields.
const (
	DefaultParallel     = 8
	DefaultLookups      = 32
	DefaultHitTTL       = time.Hour
	DefaultMissTTL      = 5 * time.Minute
	DefaultDownFor      = time.Minute
	DefaultStallTimeout = time.Minute
)

// maxLookupEntries bounds the narinfo cache.
const maxLookupEntries = 200_000

// Config configures a Substituter.
type Config struct {
	// URLs are the caches: "https://…", "http://…" or "file:///dir". The
	// order is the preference among caches of equal nix-cache-info
	// Priority (lower Priority first).
	URLs []string
	// Keys are the trusted public keys: a path that is not
	// content-addressed must carry a valid signature by one of them.
	Keys []signature.PublicKey
	// Store is where substituted paths are registered.
	Store    store.Store
	Parallel int // NAR fetches at once (default 8)
	Lookups  int // narinfo lookups at once (default 32)
	// HitTTL and MissTTL are how long found and missing (or invalid)
	// narinfos are remembered (defaults 1 h and 5 min).
	HitTTL, MissTTL time.Duration
	// DownFor is how long an unreachable cache is skipped (default 1 min).
	DownFor time.Duration
	// StallTimeout ends an HTTP download that sends nothing for that long
	// (default 1 min).
	StallTimeout time.Duration
	Now          func() time.Time // default time.Now
	Log          *slog.Logger     // default slog.Default()
	// HTTP is the client for http(s) caches. The default has a 5 s dial
	// timeout, a 15 s response-header timeout and a keep-alive pool sized
	// to Parallel+Lookups.
	HTTP *http.Client
	// Metrics, if set, counts each path fetched from a cache, or not.
	Metrics *metrics.Farm
}

// Refusal is an upstream path the farm would not take: its narinfo or
// NAR is not what it must be (unsigned, signed by no trusted key, a hash
// or size that does not match, an unsafe URL…). Its message names the
// path, the cache and what was wrong, and is fit for clients
// (publicerr).
type Refusal struct{ Err error }

func (r *Refusal) Error() string { return r.Err.Error() }
func (r *Refusal) Unwrap() error { return r.Err }

// Public reports that the message is fit for clients.
func (r *Refusal) Public() bool { return true }

// refusal wraps err as a Refusal.
func refusal(format string, args ...any) error { return &Refusal{fmt.Errorf(format, args...)} }

// Progress hears about substitution (build.Progress, which the
// coordinator and the protocols share). Calls may come from several
// goroutines.
type Progress = build.Progress

// Substituter fetches paths from upstream binary caches. It is safe for
// concurrent use.
type Substituter struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	caches  []*upstream
	lookups chan struct{} // semaphore: narinfo requests at once
	fetches chan struct{} // semaphore: NAR fetches at once

	cache       lookupCache
	lookupF     flight[lookupKey, entry]
	fetchF      flight[storepath.Path, struct{}]
	warnMu      sync.Mutex
	warnedPaths map[lookupKey]bool // bad narinfos logged already
}

// New checks cfg and returns a Substituter. No I/O happens until it is
// used. An invalid URL or an unsupported scheme is an error naming it.
func New(cfg Config) (*Substituter, error) {
	if cfg.Parallel <= 0 {
		cfg.Parallel = DefaultParallel
	}
	if cfg.Lookups <= 0 {
		cfg.Lookups = DefaultLookups
	}
	if cfg.HitTTL <= 0 {
		cfg.HitTTL = DefaultHitTTL
	}
	if cfg.MissTTL <= 0 {
		cfg.MissTTL = DefaultMissTTL
	}
	if cfg.DownFor <= 0 {
		cfg.DownFor = DefaultDownFor
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.HTTP == nil {
		cfg.HTTP = defaultClient(cfg.Parallel + cfg.Lookups)
	}
	if len(cfg.URLs) > 0 && cfg.Store == nil {
		return nil, errors.New("substituter: no store given")
	}
	s := &Substituter{
		cfg:         cfg,
		log:         cfg.Log,
		now:         cfg.Now,
		lookups:     make(chan struct{}, cfg.Lookups),
		fetches:     make(chan struct{}, cfg.Parallel),
		cache:       lookupCache{max: maxLookupEntries},
		warnedPaths: map[lookupKey]bool{},
	}
	seen := map[string]bool{}
	for _, raw := range cfg.URLs {
		c, err := newUpstream(s, len(s.caches), raw)
		if err != nil {
			return nil, err
		}
		if seen[c.url] {
			continue
		}
		seen[c.url] = true
		s.caches = append(s.caches, c)
	}
	return s, nil
}

func defaultClient(pool int) *http.Client {
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 15 * time.Second,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConns:          4 * pool,
		MaxIdleConnsPerHost:   pool,
		// Compressed NARs are compressed already; narinfos are small.
		DisableCompression: true,
	}
	return &http.Client{Transport: t}
}

// URLs returns the caches' URLs, in the order given (duplicates dropped).
func (s *Substituter) URLs() []string {
	out := make([]string, len(s.caches))
	for i, c := range s.caches {
		out[i] = c.url
	}
	return out
}

// Query returns, of paths, those some reachable cache has with a valid
// narinfo (see the package comment), each with the narinfo of the first
// cache in order that has a valid one. The narinfos must not be modified.
// Paths not found, unsigned or wrongly signed are absent; the error is
// only ever ctx's.
func (s *Substituter) Query(ctx context.Context, paths []storepath.Path) (map[storepath.Path]*narinfo.NarInfo, error) {
	found, _, err := s.query(ctx, paths, nil)
	return found, err
}

// query is Query that also returns, for paths not found, why a cache's
// narinfo was refused (if one was), and reports warnings to prog.
func (s *Substituter) query(ctx context.Context, paths []storepath.Path, prog Progress) (found map[storepath.Path]*narinfo.NarInfo, refused map[storepath.Path]error, err error) {
	found = map[storepath.Path]*narinfo.NarInfo{}
	refused = map[storepath.Path]error{}
	if len(s.caches) == 0 || len(paths) == 0 {
		return found, refused, ctx.Err()
	}
	caches := s.ordered(ctx, prog)
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if len(caches) == 0 {
		return found, refused, nil // all down or unusable: no I/O
	}
	paths = slices.Clone(paths)
	slices.Sort(paths)
	paths = slices.Compact(paths)

	var mu sync.Mutex
	work := make(chan storepath.Path)
	var wg sync.WaitGroup
	for range min(len(paths), s.cfg.Lookups) {
		wg.Go(func() {
			for p := range work {
				ni, bad := s.first(ctx, caches, p, prog)
				mu.Lock()
				if ni != nil {
					found[p] = ni
				} else if bad != nil {
					refused[p] = bad
				}
				mu.Unlock()
			}
		})
	}
	for _, p := range paths {
		if ctx.Err() != nil {
			break
		}
		work <- p
	}
	close(work)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	return found, refused, nil
}

// first walks caches in order and returns the first valid narinfo of p,
// or else the reason the first invalid one was refused (nil if none).
func (s *Substituter) first(ctx context.Context, caches []*upstream, p storepath.Path, prog Progress) (*narinfo.NarInfo, error) {
	var bad error
	for _, c := range caches {
		e, err := s.lookup(ctx, c, p, prog)
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil
			}
			continue // down
		}
		if e.ni != nil {
			return e.ni, nil
		}
		if bad == nil {
			bad = e.bad
		}
	}
	return nil, bad
}

// ordered returns the usable caches, reading the nix-cache-info of those
// not read yet (in parallel), sorted by Priority (stable).
func (s *Substituter) ordered(ctx context.Context, prog Progress) []*upstream {
	ready := make([]bool, len(s.caches))
	var wg sync.WaitGroup
	for i, c := range s.caches {
		if c.infoRead() {
			ready[i] = c.ready(ctx, prog) // no I/O
		} else {
			wg.Go(func() { ready[i] = c.ready(ctx, prog) })
		}
	}
	wg.Wait()
	var out []*upstream
	for i, c := range s.caches {
		if ready[i] {
			out = append(out, c)
		}
	}
	slices.SortStableFunc(out, func(a, b *upstream) int { return a.priority() - b.priority() })
	return out
}

// parseURL checks a cache URL and returns its canonical form (no trailing
// slash) and, for file://, its directory.
func parseURL(raw string) (canon, dir string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("substituter %q: invalid URL: %w", raw, err)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", "", fmt.Errorf("substituter %q: query strings, fragments and user info are not supported", raw)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return "", "", fmt.Errorf("substituter %q: no host", raw)
		}
		return strings.TrimRight(u.String(), "/"), "", nil
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return "", "", fmt.Errorf("substituter %q: a file:// URL must not name a host", raw)
		}
		if !strings.HasPrefix(u.Path, "/") || u.Path == "/" {
			return "", "", fmt.Errorf("substituter %q: a file:// URL needs an absolute directory", raw)
		}
		dir = strings.TrimRight(u.Path, "/")
		return "file://" + dir, dir, nil
	case "":
		return "", "", fmt.Errorf("substituter %q: no scheme (want https://, http:// or file://)", raw)
	default:
		return "", "", fmt.Errorf("substituter %q: unsupported scheme %q (want https, http or file)", raw, u.Scheme)
	}
}

// warnOnce logs a refused narinfo at Warn, once per cache and path.
func (s *Substituter) warnOnce(k lookupKey, c *upstream, err error) {
	s.warnMu.Lock()
	if len(s.warnedPaths) >= maxLookupEntries {
		clear(s.warnedPaths)
	}
	seen := s.warnedPaths[k]
	s.warnedPaths[k] = true
	s.warnMu.Unlock()
	if !seen {
		s.log.Warn("substituter: refusing a narinfo", "substituter", c.url, "path", string(k.path), "err", err)
	}
}
