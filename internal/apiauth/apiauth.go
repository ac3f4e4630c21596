// Package apiauth authenticates the farm's HTTP API: who is asking (a
// Viewer), from the bearer token in the Authorization header or the
// nixfarm_token cookie, and the 401 and 403 answers that go with it.
//
// A token is either the farm's API token (STATE-DIR/api-token, an admin)
// or an account's API token (`nixfarm tokens create`, looked up through a
// Lookup, package account). A token's verdict is reused for a short TTL
// (DefaultTTL), so most requests cost no database query; a revoked token
// therefore keeps working for up to that TTL.
//
// The package depends on nothing else of nixfarm, so any HTTP handler
// (the API, the dashboard) can use Viewer without import cycles.
package apiauth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Viewer is who asks the API: an account (its own data only) or an admin
// (every account's data). The zero Viewer is anonymous.
type Viewer struct {
	// Account is the token's account ("" for the farm's API token and
	// for anonymous requests).
	Account string `json:"account,omitempty"`
	// Admin sees every account's data.
	Admin bool `json:"admin,omitempty"`
}

// Anonymous reports whether v carries no credentials.
func (v Viewer) Anonymous() bool { return v.Account == "" && !v.Admin }

// CanSee reports whether v may see a resource of account: admins see
// all, an account its own.
func (v Viewer) CanSee(account string) bool {
	return v.Admin || (v.Account != "" && v.Account == account)
}

// Grant is what a Lookup says of a live token.
type Grant struct {
	Viewer
	// Expires is when the token stops working (zero: never).
	Expires time.Time
}

// Lookup finds an account's API token: account.Service.
type Lookup interface {
	// APIToken returns the grant of a live token, or an error wrapping
	// ErrUnknown, ErrExpired or ErrRevoked; any other error is the
	// lookup's own failure.
	APIToken(ctx context.Context, token string) (Grant, error)
}

// The reasons a request's credentials are refused; each wraps into the
// errors Authenticate returns, and names itself in the 401's JSON body.
var (
	ErrMissing   = errors.New("missing token: send Authorization: Bearer TOKEN (nixfarm tokens create)")
	ErrMalformed = errors.New("malformed Authorization header: want Bearer TOKEN")
	ErrUnknown   = errors.New("unknown token")
	ErrExpired   = errors.New("expired token")
	ErrRevoked   = errors.New("revoked token")
)

// reasons are the short names of the errors above, in the JSON body.
var reasons = []struct {
	err  error
	name string
}{{ErrMissing, "missing"}, {ErrMalformed, "malformed"}, {ErrUnknown, "unknown"}, {ErrExpired, "expired"}, {ErrRevoked, "revoked"}}

// Reason returns the short name of why err refused a request ("missing",
// "malformed", "unknown", "expired", "revoked"), or "" if it is none of
// those.
func Reason(err error) string {
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return ""
}

// CookieName is the cookie that carries a token for browsers (the
// dashboard): set it with Cookie.
const CookieName = "nixfarm_token"

// DefaultTTL is how long a token's verdict, good or bad, is reused.
const DefaultTTL = 10 * time.Second

// maxTokenLen bounds the tokens looked up: issued ones are about 50
// characters.
const maxTokenLen = 256

// maxVerdicts bounds the memory of verdicts.
const maxVerdicts = 10000

// Authenticator turns a request's credentials into a Viewer. It is safe
// for concurrent use.
type Authenticator struct {
	lookup    Lookup
	farmToken string
	ttl       time.Duration
	now       func() time.Time
	log       *slog.Logger

	mu       sync.Mutex
	verdicts map[[sha256.Size]byte]verdict
}

type verdict struct {
	grant Grant
	err   error // one of the sentinel errors, or nil
	at    time.Time
}

// Config configures New.
type Config struct {
	// Lookup finds accounts' API tokens (nil: only FarmToken works).
	Lookup Lookup
	// FarmToken is the farm's API token, an admin ("" for none).
	FarmToken string
	// TTL is how long a verdict is reused (0: DefaultTTL).
	TTL time.Duration
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	Log *slog.Logger
}

// New returns an Authenticator.
func New(cfg Config) *Authenticator {
	a := &Authenticator{lookup: cfg.Lookup, farmToken: cfg.FarmToken, ttl: cfg.TTL, now: cfg.Now, log: cfg.Log,
		verdicts: map[[sha256.Size]byte]verdict{}}
	if a.ttl <= 0 {
		a.ttl = DefaultTTL
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	return a
}

// Authenticate returns who r comes from: the token in "Authorization:
// Bearer TOKEN", else the one in the nixfarm_token cookie. With neither it
// returns the zero Viewer and an error wrapping ErrMissing; a token that
// is refused gives an error wrapping ErrMalformed, ErrUnknown, ErrExpired
// or ErrRevoked; any other error is the lookup failing.
func (a *Authenticator) Authenticate(r *http.Request) (Viewer, error) {
	token, err := credentials(r)
	if err != nil {
		return Viewer{}, err
	}
	if a.farmToken != "" && subtle.ConstantTimeCompare([]byte(token), []byte(a.farmToken)) == 1 {
		return Viewer{Admin: true}, nil
	}
	if a.lookup == nil {
		return Viewer{}, ErrUnknown
	}
	return a.verdict(r.Context(), token)
}

// credentials returns the request's token.
func credentials(r *http.Request) (string, error) {
	var token string
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "Bearer") {
			return "", ErrMalformed
		}
		token = strings.TrimSpace(rest)
	} else if c, err := r.Cookie(CookieName); err == nil {
		token = c.Value
	} else {
		return "", ErrMissing
	}
	if token == "" || len(token) > maxTokenLen {
		return "", ErrMalformed
	}
	return token, nil
}

// verdict looks token up, or reuses a verdict younger than the TTL.
func (a *Authenticator) verdict(ctx context.Context, token string) (Viewer, error) {
	key := sha256.Sum256([]byte(token))
	now := a.now()
	a.mu.Lock()
	v, ok := a.verdicts[key]
	a.mu.Unlock()
	if !ok || now.Sub(v.at) >= a.ttl || now.Before(v.at) {
		grant, err := a.lookup.APIToken(ctx, token)
		switch {
		case err == nil:
		case errors.Is(err, ErrUnknown):
			err = ErrUnknown
		case errors.Is(err, ErrExpired):
			err = ErrExpired
		case errors.Is(err, ErrRevoked):
			err = ErrRevoked
		default:
			return Viewer{}, fmt.Errorf("checking an API token: %w", err)
		}
		v = verdict{grant: grant, err: err, at: now}
		a.remember(key, v)
	}
	if v.err != nil {
		return Viewer{}, v.err
	}
	if !v.grant.Expires.IsZero() && !now.Before(v.grant.Expires) {
		return Viewer{}, ErrExpired
	}
	return v.grant.Viewer, nil
}

func (a *Authenticator) remember(key [sha256.Size]byte, v verdict) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.verdicts) >= maxVerdicts {
		for k, old := range a.verdicts {
			if v.at.Sub(old.at) >= a.ttl {
				delete(a.verdicts, k)
			}
		}
		if len(a.verdicts) >= maxVerdicts {
			clear(a.verdicts)
		}
	}
	a.verdicts[key] = v
}

type viewerKey struct{}

// FromContext returns the Viewer RequireViewer or AllowAnonymous put in
// ctx (the zero Viewer, anonymous, if none).
func FromContext(ctx context.Context) Viewer {
	v, _ := ctx.Value(viewerKey{}).(Viewer)
	return v
}

// WithViewer returns ctx carrying v (for handlers' tests).
func WithViewer(ctx context.Context, v Viewer) context.Context {
	return context.WithValue(ctx, viewerKey{}, v)
}

// RequireViewer serves h only to requests with good credentials, whose
// Viewer h finds with FromContext; others get 401 with WWW-Authenticate:
// Bearer and a JSON error naming what was wrong.
func (a *Authenticator) RequireViewer(h http.Handler) http.Handler {
	return a.wrap(h, false)
}

// AllowAnonymous serves h to requests without credentials too (as the
// zero Viewer); credentials that are present must be good, or the
// request gets RequireViewer's 401.
func (a *Authenticator) AllowAnonymous(h http.Handler) http.Handler {
	return a.wrap(h, true)
}

func (a *Authenticator) wrap(h http.Handler, anonymous bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, err := a.Authenticate(r)
		switch {
		case err == nil:
		case anonymous && errors.Is(err, ErrMissing):
		case Reason(err) != "":
			Unauthorized(w, err)
			return
		default:
			a.log.Error("authenticating an API request", "err", err)
			writeError(w, http.StatusServiceUnavailable, "unavailable", "the farm could not check the token; try again")
			return
		}
		h.ServeHTTP(w, r.WithContext(WithViewer(r.Context(), v)))
	})
}

// Unauthorized answers 401 for err, one of the errors Authenticate
// refuses credentials with.
func Unauthorized(w http.ResponseWriter, err error) {
	reason := Reason(err)
	if reason == "" {
		reason, err = "unknown", ErrUnknown
	}
	challenge := `Bearer realm="nixfarm"`
	if reason != "missing" {
		// RFC 6750: a request without credentials gets no error code.
		challenge += fmt.Sprintf(`, error="invalid_token", error_description=%q`, reason+" token")
	}
	w.Header().Set("WWW-Authenticate", challenge)
	writeError(w, http.StatusUnauthorized, reason, err.Error())
}

// Forbidden answers 403: the viewer asked for what, which belongs to
// another account.
func Forbidden(w http.ResponseWriter, what string) {
	writeError(w, http.StatusForbidden, "forbidden", what+" belongs to another account; its own token, or an admin token, can see it")
}

// Error is the JSON body of the API's errors.
type Error struct {
	Error  string `json:"error"`
	Reason string `json:"reason"`
}

func writeError(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(Error{Error: msg, Reason: reason})
}

// Cookie returns the cookie that carries token for a browser: HttpOnly,
// SameSite=Strict, for maxAge (0: the browser session), and Secure when r
// came over TLS, to the farm or to a proxy in front of it that says so
// with X-Forwarded-Proto. That header is believed from anyone: it can
// only make the cookie stricter (a browser that is not on https then
// does not send it back, and its user logs in again).
func Cookie(r *http.Request, token string, maxAge time.Duration) *http.Cookie {
	secure := r.TLS != nil || strings.EqualFold(strings.TrimSpace(r.Header.Get("X-Forwarded-Proto")), "https")
	return &http.Cookie{Name: CookieName, Value: token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: secure, MaxAge: int(maxAge / time.Second)}
}
