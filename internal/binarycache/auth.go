package binarycache

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/account"
)

// TokenLookup names the account of a cache token: account.Service.
type TokenLookup interface {
	// TokenAccount returns the token's account, or an error wrapping
	// account.ErrBadToken if it has none.
	TokenAccount(ctx context.Context, token string) (string, error)
}

// DefaultTokenTTL is how long TokenAuth reuses a token's verdict.
const DefaultTokenTTL = 10 * time.Second

// maxVerdicts bounds TokenAuth's memory of verdicts.
const maxVerdicts = 10000

// maxTokenLen bounds the tokens TokenAuth looks up.
const maxTokenLen = 256

// TokenAuth is the Authenticator of cache tokens: HTTP basic with the
// account as login and its token as password (what curl, and so Nix,
// sends from a netrc file), or "Authorization: Bearer TOKEN". A token's
// verdict, good or bad, is remembered for TTL, so a busy client costs
// no database query per request and a revoked token stops working
// within TTL.
type TokenAuth struct {
	lookup TokenLookup
	ttl    time.Duration
	now    func() time.Time

	mu       sync.Mutex
	verdicts map[[sha256.Size]byte]verdict
}

type verdict struct {
	account string // "" for a bad token
	at      time.Time
}

// NewTokenAuth returns an Authenticator over lookup. ttl 0 is
// DefaultTokenTTL; now nil is time.Now.
func NewTokenAuth(lookup TokenLookup, ttl time.Duration, now func() time.Time) *TokenAuth {
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	if now == nil {
		now = time.Now
	}
	return &TokenAuth{lookup: lookup, ttl: ttl, now: now, verdicts: map[[sha256.Size]byte]verdict{}}
}

// Account implements Authenticator.
func (a *TokenAuth) Account(ctx context.Context, r *http.Request) (string, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", ErrNoCredentials
	}
	scheme, rest, _ := strings.Cut(h, " ")
	var login, token string
	switch {
	case strings.EqualFold(scheme, "Basic"):
		var ok bool
		if login, token, ok = r.BasicAuth(); !ok || login == "" {
			return "", ErrBadCredentials
		}
	case strings.EqualFold(scheme, "Bearer"):
		token = strings.TrimSpace(rest)
	default:
		return "", ErrBadCredentials
	}
	if token == "" || len(token) > maxTokenLen {
		return "", ErrBadCredentials
	}
	name, err := a.verdict(ctx, token)
	if err != nil {
		return "", err
	}
	if name == "" {
		return "", ErrBadCredentials
	}
	if login != "" && subtle.ConstantTimeCompare([]byte(login), []byte(name)) != 1 {
		return "", ErrBadCredentials
	}
	return name, nil
}

// verdict returns the token's account, "" if it has none.
func (a *TokenAuth) verdict(ctx context.Context, token string) (string, error) {
	key := sha256.Sum256([]byte(token))
	now := a.now()
	a.mu.Lock()
	v, ok := a.verdicts[key]
	a.mu.Unlock()
	if ok && now.Sub(v.at) < a.ttl && !now.Before(v.at) {
		return v.account, nil
	}
	name, err := a.lookup.TokenAccount(ctx, token)
	if err != nil && !errors.Is(err, account.ErrBadToken) {
		return "", fmt.Errorf("checking a cache token: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.verdicts) >= maxVerdicts {
		for k, v := range a.verdicts {
			if now.Sub(v.at) >= a.ttl {
				delete(a.verdicts, k)
			}
		}
		if len(a.verdicts) >= maxVerdicts {
			clear(a.verdicts)
		}
	}
	a.verdicts[key] = verdict{account: name, at: now}
	return name, nil
}
