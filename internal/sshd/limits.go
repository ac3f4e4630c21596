package sshd

import (
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Limits bound the connections a listener holds, so that no client, and
// no flood of connections that never authenticate, can take the front
// end from the others. Zero fields take the defaults below.
type Limits struct {
	// MaxConnections bounds the connections open at once, authenticated
	// or not (DefaultMaxConnections).
	MaxConnections int
	// MaxUnauthenticatedPerSource bounds the connections from one IP
	// address that have not authenticated yet
	// (DefaultMaxUnauthenticatedPerSource).
	MaxUnauthenticatedPerSource int
	// MaxConnectionsPerAccount bounds an account's authenticated
	// connections (DefaultMaxConnectionsPerAccount).
	MaxConnectionsPerAccount int
	// HandshakeTimeout closes a connection that has not authenticated in
	// time (DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
	// IdleTimeout closes an authenticated connection that has had no
	// session open for that long (DefaultIdleTimeout). A session that
	// is open, however quiet (a long build without output), is not idle.
	IdleTimeout time.Duration
}

// The default limits.
const (
	DefaultMaxConnections              = 2048
	DefaultMaxUnauthenticatedPerSource = 32
	DefaultMaxConnectionsPerAccount    = 256
	DefaultHandshakeTimeout            = 30 * time.Second
	DefaultIdleTimeout                 = 10 * time.Minute
)

func (l *Limits) defaults() {
	if l.MaxConnections <= 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.MaxUnauthenticatedPerSource <= 0 {
		l.MaxUnauthenticatedPerSource = DefaultMaxUnauthenticatedPerSource
	}
	if l.MaxConnectionsPerAccount <= 0 {
		l.MaxConnectionsPerAccount = DefaultMaxConnectionsPerAccount
	}
	if l.HandshakeTimeout <= 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
}

// Gate counts a listener's connections against its Limits. It is safe
// for concurrent use.
type Gate struct {
	limits  Limits
	log     *slog.Logger
	refused *rateLimit

	mu       sync.Mutex
	total    int
	preauth  map[string]int // by source address
	accounts map[string]int
}

// NewGate returns a gate enforcing l (defaults filled in); refusals are
// logged to log, at most one a second with a count of the others.
func NewGate(l Limits, log *slog.Logger) *Gate {
	l.defaults()
	if log == nil {
		log = slog.Default()
	}
	return &Gate{limits: l, log: log, refused: newRateLimit(time.Second),
		preauth: map[string]int{}, accounts: map[string]int{}}
}

// Limits returns the gate's limits, defaults filled in.
func (g *Gate) Limits() Limits { return g.limits }

// Admission is one connection let through the gate. Close releases it.
type Admission struct {
	g       *Gate
	source  string
	preauth bool   // counted as unauthenticated
	account string // counted against this account
	closed  bool
}

// Admit counts a new connection from remote, or refuses it, logging
// why. The caller closes a refused connection.
func (g *Gate) Admit(remote net.Addr) (*Admission, error) {
	source := sourceOf(remote)
	g.mu.Lock()
	defer g.mu.Unlock()
	var err error
	switch {
	case g.total >= g.limits.MaxConnections:
		err = fmt.Errorf("%d connections are open, the most allowed (--max-connections)", g.total)
	case g.preauth[source] >= g.limits.MaxUnauthenticatedPerSource:
		err = fmt.Errorf("%s has %d connections that have not authenticated yet, the most allowed (--max-unauthenticated-per-source)",
			source, g.preauth[source])
	}
	if err != nil {
		g.logRefusal("connection refused", "remote", remote.String(), "reason", err.Error())
		return nil, err
	}
	g.total++
	g.preauth[source]++
	return &Admission{g: g, source: source, preauth: true}, nil
}

// AccountFull returns an error saying why account may open no more
// connections, or nil; it reserves nothing (see Authenticated).
func (g *Gate) AccountFull(account string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.accountFullLocked(account)
}

func (g *Gate) accountFullLocked(account string) error {
	if n := g.accounts[account]; n >= g.limits.MaxConnectionsPerAccount {
		return fmt.Errorf("account %s has %d connections open, the most this farm allows", account, n)
	}
	return nil
}

// Authenticated moves the connection from the unauthenticated ones of
// its source to account's (none if account is ""), or refuses it if
// account is full.
func (a *Admission) Authenticated(account string) error {
	g := a.g
	g.mu.Lock()
	defer g.mu.Unlock()
	a.leavePreauthLocked()
	if account == "" {
		return nil
	}
	if err := g.accountFullLocked(account); err != nil {
		g.logRefusal("connection refused", "account", account, "reason", err.Error())
		return err
	}
	g.accounts[account]++
	a.account = account
	return nil
}

// Close releases the connection's counts; it may be called more than
// once.
func (a *Admission) Close() {
	g := a.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if a.closed {
		return
	}
	a.closed = true
	a.leavePreauthLocked()
	if a.account != "" {
		if g.accounts[a.account]--; g.accounts[a.account] <= 0 {
			delete(g.accounts, a.account)
		}
	}
	g.total--
}

func (a *Admission) leavePreauthLocked() {
	if !a.preauth {
		return
	}
	a.preauth = false
	g := a.g
	if g.preauth[a.source]--; g.preauth[a.source] <= 0 {
		delete(g.preauth, a.source)
	}
}

func (g *Gate) logRefusal(msg string, args ...any) {
	if ok, skipped := g.refused.allow(time.Now()); ok {
		if skipped > 0 {
			args = append(args, "also_refused_since_last_logged", skipped)
		}
		g.log.Warn(msg, args...)
	}
}

// sourceOf is the IP address of remote, or its whole string if it has
// no port.
func sourceOf(remote net.Addr) string {
	if remote == nil {
		return ""
	}
	if host, _, err := net.SplitHostPort(remote.String()); err == nil {
		return host
	}
	return remote.String()
}

// rateLimit lets one event through per interval and counts the others.
type rateLimit struct {
	every   time.Duration
	mu      sync.Mutex
	last    time.Time
	skipped int
}

func newRateLimit(every time.Duration) *rateLimit { return &rateLimit{every: every} }

// allow reports whether an event at now may be logged, and how many
// were not since the last that was.
func (r *rateLimit) allow(now time.Time) (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() && now.Sub(r.last) < r.every {
		r.skipped++
		return false, 0
	}
	skipped := r.skipped
	r.last, r.skipped = now, 0
	return true, skipped
}

// idleTimer closes a connection that has had no channel open for d.
type idleTimer struct {
	mu    sync.Mutex
	open  int
	d     time.Duration
	t     *time.Timer
	fired bool
}

func newIdleTimer(d time.Duration, fire func()) *idleTimer {
	i := &idleTimer{d: d}
	i.t = time.AfterFunc(d, func() {
		i.mu.Lock()
		idle := i.open == 0 && !i.fired
		i.fired = i.fired || idle
		i.mu.Unlock()
		if idle {
			fire()
		}
	})
	return i
}

// enter notes a channel opened.
func (i *idleTimer) enter() {
	i.mu.Lock()
	i.open++
	i.t.Stop()
	i.mu.Unlock()
}

// leave notes a channel closed; with none left, the wait starts again.
func (i *idleTimer) leave() {
	i.mu.Lock()
	if i.open--; i.open == 0 {
		i.t.Reset(i.d)
	}
	i.mu.Unlock()
}

func (i *idleTimer) stop() { i.t.Stop() }
