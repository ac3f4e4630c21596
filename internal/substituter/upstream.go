package substituter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// errMiss is a file the cache does not have (404, 403, no such file).
var errMiss = errors.New("not in the cache")

// unreachableError is a failure to reach a cache at all: it marks the
// cache down.
type unreachableError struct{ err error }

func (e *unreachableError) Error() string { return e.err.Error() }
func (e *unreachableError) Unwrap() error { return e.err }

// infoState is how far a cache's nix-cache-info has been read.
type infoState uint8

const (
	infoUnknown  infoState = iota
	infoOK                 // read and acceptable
	infoUnusable           // wrong StoreDir, missing or invalid: never used
)

// upstream is one binary cache.
type upstream struct {
	s   *Substituter
	idx int
	url string // canonical, no trailing slash
	dir string // for file://, the directory

	infoF flight[int, struct{}]

	mu        sync.Mutex
	state     infoState
	prio      int
	downUntil time.Time
	backoff   time.Duration // the last down period; 0 after a success
}

func newUpstream(s *Substituter, idx int, raw string) (*upstream, error) {
	canon, dir, err := parseURL(raw)
	if err != nil {
		return nil, err
	}
	return &upstream{s: s, idx: idx, url: canon, dir: dir, prio: defaultPriority}, nil
}

func (c *upstream) priority() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.prio
}

// infoRead reports whether nix-cache-info has been read (or found
// unusable), so that ready does no I/O.
func (c *upstream) infoRead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state != infoUnknown
}

// down reports whether the cache is being skipped now.
func (c *upstream) down() bool {
	now := c.s.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	return now.Before(c.downUntil)
}

// markDown starts a down period unless one is under way (a request that
// began before it failed too), and tells the log and prog once.
func (c *upstream) markDown(err error, prog Progress) {
	now := c.s.now()
	c.mu.Lock()
	if now.Before(c.downUntil) {
		c.mu.Unlock()
		return
	}
	downFor := c.s.cfg.DownFor
	if c.backoff == 0 {
		c.backoff = downFor
	} else {
		c.backoff = min(2*c.backoff, 10*downFor)
	}
	c.downUntil = now.Add(c.backoff)
	d := c.backoff
	c.mu.Unlock()
	msg := fmt.Sprintf("substituter %s is unreachable (%v); skipping it for %s", c.url, err, d)
	c.s.log.Warn("substituter unreachable", "substituter", c.url, "err", err, "skipped_for", d)
	if prog != nil {
		prog.Warning(msg)
	}
}

// reached records that the cache answered.
func (c *upstream) reached() {
	c.mu.Lock()
	c.backoff = 0
	c.mu.Unlock()
}

// ready reads nix-cache-info if it has not been read, and reports whether
// the cache may be used now.
func (c *upstream) ready(ctx context.Context, prog Progress) bool {
	c.mu.Lock()
	state := c.state
	c.mu.Unlock()
	switch {
	case state == infoUnusable || c.down():
		return false
	case state == infoOK:
		return true
	}
	c.infoF.do(ctx, 0, func(ctx context.Context) (struct{}, error) {
		c.mu.Lock()
		state := c.state
		c.mu.Unlock()
		if state == infoUnknown && !c.down() {
			c.readInfo(ctx, prog)
		}
		return struct{}{}, nil
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == infoOK && !c.s.now().Before(c.downUntil)
}

// readInfo fetches and checks nix-cache-info.
func (c *upstream) readInfo(ctx context.Context, prog Progress) {
	info, err := c.fetchInfo(ctx)
	var unreachable *unreachableError
	switch {
	case ctx.Err() != nil:
		return
	case errors.As(err, &unreachable):
		c.markDown(err, prog)
		return
	case err != nil:
		c.s.log.Warn("substituter: not using this cache", "substituter", c.url, "err", err)
		if prog != nil {
			prog.Warning(fmt.Sprintf("substituter %s is not usable: %v", c.url, err))
		}
		c.mu.Lock()
		c.state = infoUnusable
		c.mu.Unlock()
		return
	}
	c.reached()
	c.mu.Lock()
	c.state, c.prio = infoOK, info.Priority
	c.mu.Unlock()
	c.s.log.Debug("substituter: using cache", "substituter", c.url, "priority", info.Priority)
}

func (c *upstream) fetchInfo(ctx context.Context) (*cacheInfo, error) {
	body, err := c.get(ctx, cacheInfoFile)
	if errors.Is(err, errMiss) {
		return nil, fmt.Errorf("no %s: not a binary cache", cacheInfoFile)
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", cacheInfoFile, err)
	}
	defer body.Close()
	data, err := io.ReadAll(io.LimitReader(body, maxCacheInfo+1))
	if err != nil {
		return nil, &unreachableError{fmt.Errorf("reading %s: %w", cacheInfoFile, err)}
	}
	info, err := parseCacheInfo(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cacheInfoFile, err)
	}
	return info, nil
}

// get opens the file rel (a checked relative path) of the cache. A 404 or
// 403 (or a missing file) is errMiss; a transport failure or a 5xx is an
// *unreachableError; ctx's error is returned as it is.
func (c *upstream) get(ctx context.Context, rel string) (io.ReadCloser, error) {
	if c.dir != "" {
		return c.open(rel)
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url+"/"+rel, nil)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("GET %s: %w", rel, err)
	}
	resp, err := c.s.cfg.HTTP.Do(req)
	if err != nil {
		cancel()
		if parent.Err() != nil {
			return nil, parent.Err()
		}
		return nil, &unreachableError{err}
	}
	switch code := resp.StatusCode; {
	case code == http.StatusOK:
		return newHTTPBody(resp.Body, cancel, c.s.cfg.StallTimeout), nil
	case code == http.StatusNotFound || code == http.StatusForbidden:
		drain(resp.Body, cancel)
		return nil, errMiss
	case code >= 500:
		drain(resp.Body, cancel)
		return nil, &unreachableError{fmt.Errorf("GET %s: HTTP status %s", rel, resp.Status)}
	default:
		drain(resp.Body, cancel)
		return nil, fmt.Errorf("GET %s: unexpected HTTP status %s", rel, resp.Status)
	}
}

// drain reads a little of an unwanted body so the connection can be
// reused, and closes it.
func drain(body io.ReadCloser, cancel func()) {
	io.CopyN(io.Discard, body, 4096)
	body.Close()
	cancel()
}

// open opens rel in a file:// cache's directory, never outside it.
func (c *upstream) open(rel string) (io.ReadCloser, error) {
	f, err := os.OpenInRoot(c.dir, rel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errMiss
	}
	if err != nil {
		return nil, &unreachableError{err}
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, errMiss
	}
	return f, nil
}

// httpBody is a response body that ends its request when no data has come
// for the stall timeout.
type httpBody struct {
	rc      io.ReadCloser
	cancel  func()
	idle    time.Duration
	timer   *time.Timer
	stalled atomic.Bool
}

func newHTTPBody(rc io.ReadCloser, cancel func(), idle time.Duration) *httpBody {
	b := &httpBody{rc: rc, cancel: cancel, idle: idle}
	b.timer = time.AfterFunc(idle, func() {
		b.stalled.Store(true)
		cancel()
	})
	return b
}

func (b *httpBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.timer.Reset(b.idle)
	}
	if err != nil && err != io.EOF && b.stalled.Load() {
		err = fmt.Errorf("no data for %s: %w", b.idle, err)
	}
	return n, err
}

func (b *httpBody) Close() error {
	b.timer.Stop()
	err := b.rc.Close()
	b.cancel()
	return err
}
