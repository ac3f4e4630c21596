// Package binarycache serves the farm store as a Nix binary cache over
// HTTP: /nix-cache-info, /<hash>.narinfo, the NARs under /nar/ (plain,
// or zstd or xz copies made once and kept in a bounded directory) and
// build logs under /log/. Each request is answered from the view of the
// account its credentials name (a token from `nixfarm accounts token`),
// so a path another account holds is as absent as one nobody holds. The
// narinfos carry the signatures the farm store holds, the farm's own on
// what it built.
package binarycache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/nixfarm/nixfarm/internal/metrics"
	"github.com/nixfarm/nixfarm/internal/narinfo"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// ErrNoCredentials is what an Authenticator returns for a request that
// carries no credentials.
var ErrNoCredentials = publicerr.Sentinel("no credentials")

// ErrBadCredentials is what an Authenticator returns for credentials that
// name no account.
var ErrBadCredentials = publicerr.Sentinel("wrong credentials")

// DefaultMaxDirBytes bounds Config.Dir when Config.MaxDirBytes is 0.
const DefaultMaxDirBytes = 10 << 30

// DefaultPriority is nix-cache-info's Priority when Config.Priority is 0.
const DefaultPriority = 30

// NarContentType is the MIME type of NAR files, compressed or not.
const NarContentType = "application/x-nix-nar"

// Config configures a Cache.
type Config struct {
	// View returns account's view of the farm store (store.Store). Called per request.
	View func(account string) store.Store
	// Public, if non-nil, is the view anonymous requests see (--public-cache); nil: anonymous requests get 401.
	Public store.Store
	Auth   Authenticator
	Logs   Logs   // may be nil: /log/ answers 404
	Dir    string // where compressed copies of NARs are kept (created); e.g. STATE-DIR/cache
	// MaxDirBytes bounds Dir; oldest-used copies removed past it (default 10 GiB).
	MaxDirBytes int64
	Compression string // "zstd" (default), "xz" or "none": what narinfos point at
	Priority    int    // nix-cache-info Priority (default 30)
	// Generation, if set, changes whenever anything in the store does
	// (store.Local.Generation): rendered narinfos are kept for as long as
	// it stays the same (narinfos.go).
	Generation func() uint64
	// Metrics, if set, counts the narinfos and NARs served.
	Metrics *metrics.Farm
	Log     *slog.Logger
}

// Authenticator names the account of a request.
type Authenticator interface {
	// Account returns the account a request's credentials name: HTTP
	// basic (login = account, password = token, as curl sends from a
	// netrc file) or "Authorization: Bearer TOKEN". ErrNoCredentials if
	// it carries none; ErrBadCredentials if they are wrong.
	Account(ctx context.Context, r *http.Request) (string, error)
}

// Logs gives the cache the farm's build logs.
type Logs interface {
	// Open returns the log of the latest build of drvPath run for
	// account; store.ErrNotFound if none.
	Open(ctx context.Context, account string, drvPath storepath.Path) (io.ReadCloser, error)
}

// Cache is the binary cache's HTTP handler. It is safe for concurrent use.
type Cache struct {
	cfg        Config
	log        *slog.Logger
	format     format // what narinfos point at
	cacheInfo  string
	copies     *copies
	compressor compressor
	narInfos   narInfos
}

// New checks cfg, creates cfg.Dir if needed and takes stock of the
// compressed copies already in it (removing what a crash left half
// written, and the oldest-used copies past MaxDirBytes).
func New(cfg Config) (*Cache, error) {
	if cfg.View == nil || cfg.Auth == nil {
		return nil, errors.New("binary cache: View and Auth are required")
	}
	if cfg.Dir == "" {
		return nil, errors.New("binary cache: no directory for compressed NARs")
	}
	if cfg.MaxDirBytes == 0 {
		cfg.MaxDirBytes = DefaultMaxDirBytes
	}
	if cfg.MaxDirBytes < 0 {
		return nil, fmt.Errorf("binary cache: negative size bound %d", cfg.MaxDirBytes)
	}
	if cfg.Priority == 0 {
		cfg.Priority = DefaultPriority
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	c := &Cache{cfg: cfg, log: cfg.Log}
	switch cfg.Compression {
	case "", "zstd":
		c.format = zstdFormat
	case "xz":
		c.format = xzFormat
	case "none":
		c.format = plain
	default:
		return nil, fmt.Errorf("binary cache: unknown compression %q (want zstd, xz or none)", cfg.Compression)
	}
	c.cacheInfo = fmt.Sprintf("StoreDir: %s\nWantMassQuery: 1\nPriority: %d\n", storepath.Dir, cfg.Priority)
	cp, err := openCopies(cfg.Dir, cfg.MaxDirBytes, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("binary cache: %w", err)
	}
	c.copies = cp
	c.compressor = compress
	return c, nil
}

// ServeHTTP answers GET and HEAD requests for the cache's routes.
func (c *Cache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	rt := parseRoute(r.URL.Path)
	switch rt.kind {
	case notFound:
		http.NotFound(w, r)
		return
	case cacheInfo:
		h := w.Header()
		h.Set("Content-Type", "text/x-nix-cache-info")
		h.Set("Content-Length", strconv.Itoa(len(c.cacheInfo)))
		io.WriteString(w, c.cacheInfo)
		return
	}
	ctx := r.Context()
	account, view, ok := c.authenticate(ctx, w, r)
	if !ok {
		return
	}
	switch rt.kind {
	case narInfo:
		c.serveNarInfo(ctx, w, r, account, view, rt)
	case narFile:
		c.serveNar(ctx, w, r, view, rt)
	case buildLog:
		c.serveLog(ctx, w, r, account, rt)
	}
}

// authenticate returns the request's account ("" if anonymous) and the
// view it sees, or answers the request itself.
func (c *Cache) authenticate(ctx context.Context, w http.ResponseWriter, r *http.Request) (string, store.Store, bool) {
	account, err := c.cfg.Auth.Account(ctx, r)
	switch {
	case err == nil:
		return account, c.cfg.View(account), true
	case errors.Is(err, ErrNoCredentials) && c.cfg.Public != nil:
		return "", c.cfg.Public, true
	case errors.Is(err, ErrNoCredentials), errors.Is(err, ErrBadCredentials):
		w.Header().Set("WWW-Authenticate", `Basic realm="nixfarm"`)
		msg := "credentials required: a netrc line `machine HOST login ACCOUNT password TOKEN` (nixfarm accounts token ACCOUNT)"
		if errors.Is(err, ErrBadCredentials) {
			msg = "wrong credentials: unknown or revoked token, or a login that is not the token's account"
		}
		http.Error(w, msg, http.StatusUnauthorized)
		return "", nil, false
	default:
		c.fail(ctx, w, r, err)
		return "", nil, false
	}
}

// fail answers a request that failed: 404 for a path the view lacks,
// else 500 with the error's public message or an id the log holds.
func (c *Cache) fail(ctx context.Context, w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, store.ErrNotFound) {
		http.NotFound(w, r)
		return
	}
	msg := publicerr.Message(ctx, c.log, err, "binary cache request failed", "url", r.URL.Path)
	http.Error(w, msg, http.StatusInternalServerError)
}

func (c *Cache) narURL(hashPart string, info *store.PathInfo, f format) string {
	return "nar/" + hashPart + "-" + info.NarHash.Nix32() + formats[f].ext
}

// byHashPart is a view that finds a path's info by its hash part in one
// lookup (store.View).
type byHashPart interface {
	QueryPathInfoFromHashPart(ctx context.Context, hashPart string) (*store.PathInfo, error)
}

// infoByHashPart returns the info of the path with a hash part.
func infoByHashPart(ctx context.Context, view store.Store, hashPart string) (*store.PathInfo, error) {
	if v, ok := view.(byHashPart); ok {
		return v.QueryPathInfoFromHashPart(ctx, hashPart)
	}
	p, err := view.QueryPathFromHashPart(ctx, hashPart)
	if err != nil {
		return nil, err
	}
	return view.QueryPathInfo(ctx, p)
}

func (c *Cache) serveNarInfo(ctx context.Context, w http.ResponseWriter, r *http.Request, account string, view store.Store, rt route) {
	var gen uint64
	key := narInfoKey{account, rt.hashPart}
	if c.cfg.Generation != nil {
		// Taken before the store is read, so a change committed meanwhile
		// makes this rendering stale rather than current.
		gen = c.cfg.Generation()
		if body, ok := c.narInfos.get(key, gen); ok {
			c.cfg.Metrics.CacheHit("narinfo")
			writeNarInfo(w, body)
			return
		}
	}
	info, err := infoByHashPart(ctx, view, rt.hashPart)
	if err != nil {
		c.fail(ctx, w, r, err)
		return
	}
	ni := narinfo.NarInfo{
		StorePath:   info.Path,
		URL:         c.narURL(rt.hashPart, info, c.format),
		Compression: formats[c.format].compression,
		NarHash:     info.NarHash,
		NarSize:     info.NarSize,
		References:  info.References,
		Deriver:     info.Deriver,
		Sigs:        info.Sigs,
		CA:          info.CA,
	}
	body := ni.String()
	if c.cfg.Generation != nil {
		c.narInfos.put(key, gen, body)
	}
	c.cfg.Metrics.CacheHit("narinfo")
	writeNarInfo(w, body)
}

func writeNarInfo(w http.ResponseWriter, body string) {
	h := w.Header()
	h.Set("Content-Type", narinfo.ContentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	io.WriteString(w, body)
}

func (c *Cache) serveNar(ctx context.Context, w http.ResponseWriter, r *http.Request, view store.Store, rt route) {
	p, err := view.QueryPathFromHashPart(ctx, rt.hashPart)
	if err != nil {
		c.fail(ctx, w, r, err)
		return
	}
	if rt.format == plain {
		c.servePlainNar(ctx, w, r, view, p, rt)
		return
	}
	if rt.format != c.format {
		// Only the compression the narinfos offer: making copies in
		// every format on request would let anyone burn CPU and evict
		// everyone's copies.
		http.NotFound(w, r)
		return
	}
	info, err := view.QueryPathInfo(ctx, p)
	if err != nil {
		c.fail(ctx, w, r, err)
		return
	}
	if info.NarHash.Nix32() != rt.narHash {
		http.NotFound(w, r)
		return
	}
	key := rt.narHash + formats[rt.format].ext
	f, err := c.copies.get(ctx, key, func(ctx context.Context, dst io.Writer) error {
		return c.compressor(ctx, view, p, info, rt.format, dst)
	})
	if err != nil {
		c.fail(ctx, w, r, err)
		return
	}
	defer f.Close()
	c.cfg.Metrics.CacheHit("nar")
	h := w.Header()
	h.Set("Content-Type", NarContentType)
	h.Set("ETag", `"`+key+`"`)
	// The copy is shared by every account with these bytes: its file's
	// time would tell when another account asked for them first.
	http.ServeContent(w, r, "", info.RegistrationTime, f)
}

func (c *Cache) servePlainNar(ctx context.Context, w http.ResponseWriter, r *http.Request, view store.Store, p storepath.Path, rt route) {
	rc, info, err := view.NarFromPath(ctx, p)
	if err != nil {
		c.fail(ctx, w, r, err)
		return
	}
	defer rc.Close()
	if info.NarHash.Nix32() != rt.narHash {
		http.NotFound(w, r)
		return
	}
	c.cfg.Metrics.CacheHit("nar")
	h := w.Header()
	h.Set("Content-Type", NarContentType)
	h.Set("ETag", `"`+rt.narHash+`.nar"`)
	if rs, ok := rc.(io.ReadSeeker); ok {
		http.ServeContent(w, r, "", info.RegistrationTime, rs)
		return
	}
	// A path still arriving in the store: streamed as it arrives, without
	// ranges.
	h.Set("Content-Length", strconv.FormatUint(info.NarSize, 10))
	if r.Method == http.MethodHead {
		return
	}
	if _, err := io.Copy(w, rc); err != nil {
		c.log.WarnContext(ctx, "binary cache: NAR stream failed", "path", p, "err", err)
		panic(http.ErrAbortHandler) // cut the response, so the client sees it short
	}
}

func (c *Cache) serveLog(ctx context.Context, w http.ResponseWriter, r *http.Request, account string, rt route) {
	if account == "" || c.cfg.Logs == nil {
		http.NotFound(w, r)
		return
	}
	rc, err := c.cfg.Logs.Open(ctx, account, rt.drv)
	if err != nil {
		c.fail(ctx, w, r, err)
		return
	}
	defer rc.Close()
	// A log is the builder's bytes: a browser must never take it for
	// HTML or script, whatever it looks like.
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "private, no-store")
	if r.Method == http.MethodHead {
		return
	}
	if _, err := io.Copy(w, rc); err != nil {
		c.log.DebugContext(ctx, "binary cache: log stream ended early", "drv", rt.drv, "err", err)
	}
}
