package account

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/nixfarm/nixfarm/internal/apiauth"
	"github.com/nixfarm/nixfarm/internal/credentials"
)

// Scope is what an API token may see.
type Scope string

const (
	// ScopeRead sees its account's own data.
	ScopeRead Scope = "read"
	// ScopeAdmin sees every account's data; only the operator, who has
	// the state directory, can create one.
	ScopeAdmin Scope = "admin"
)

// ParseScope reads "read" or "admin".
func ParseScope(s string) (Scope, error) {
	switch Scope(s) {
	case ScopeRead, ScopeAdmin:
		return Scope(s), nil
	}
	return "", fmt.Errorf("invalid scope %q: use read (the account's own data) or admin (every account's)", s)
}

// APITokenPrefix starts every API token, so that one found in a file or a
// log can be told from other secrets.
const APITokenPrefix = "nfapi_"

// lastUsedEvery is how stale a token's last-used time may get: using it
// writes the time at most once per this.
const lastUsedEvery = time.Minute

// maxLabel bounds an API token's name.
const maxLabel = 64

// APIToken describes an API token (never its secret).
type APIToken struct {
	ID      int64     `json:"id"`
	Account string    `json:"account"`
	Scope   Scope     `json:"scope"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// Expires is when it stops working (nil: never).
	Expires *time.Time `json:"expires,omitempty"`
	// Revoked is when it was revoked (nil: it was not).
	Revoked *time.Time `json:"revoked,omitempty"`
	// LastUsed is when it was last used, to within a minute (nil: never).
	LastUsed *time.Time `json:"lastUsed,omitempty"`
}

// State is "revoked", "expired" or "live" at now.
func (t APIToken) State(now time.Time) string {
	switch {
	case t.Revoked != nil:
		return "revoked"
	case t.Expires != nil && !now.Before(*t.Expires):
		return "expired"
	}
	return "live"
}

// ParseExpiry reads how long a new token lasts: "never" (0), a number of
// days ("30d") or a Go duration ("12h", "90m").
func ParseExpiry(s string) (time.Duration, error) {
	if s == "never" {
		return 0, nil
	}
	bad := fmt.Errorf("invalid expiry %q: use never, a number of days (30d) or hours (12h)", s)
	var d time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days <= 0 || days > 100*365 {
			return 0, bad
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil || d <= 0 {
			return 0, bad
		}
	}
	if d < time.Minute {
		return 0, fmt.Errorf("expiry %q: a token must last at least a minute", s)
	}
	return d, nil
}

func validLabel(s string) error {
	if len(s) > maxLabel {
		return fmt.Errorf("token name is longer than %d bytes", maxLabel)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || r == unicode.ReplacementChar {
			return fmt.Errorf("token name %q: use printable characters only", s)
		}
	}
	return nil
}

// CreateAPIToken makes an API token for an existing account, lasting for
// lifetime (0: until revoked), and returns it with its secret: a prefix
// and 32 random bytes, base64url. Only the secret's SHA-256 is kept, so it
// is shown once.
func (s *Service) CreateAPIToken(ctx context.Context, name string, scope Scope, label string, lifetime time.Duration) (APIToken, string, error) {
	if _, err := ParseScope(string(scope)); err != nil {
		return APIToken{}, "", err
	}
	if err := validLabel(label); err != nil {
		return APIToken{}, "", err
	}
	if lifetime < 0 {
		return APIToken{}, "", errors.New("a token's lifetime cannot be negative")
	}
	secret, err := credentials.NewSecret()
	if err != nil {
		return APIToken{}, "", err
	}
	secret = APITokenPrefix + secret
	now := s.now()
	t := APIToken{Account: name, Scope: scope, Name: label, Created: time.Unix(now.Unix(), 0)}
	var expires int64
	if lifetime > 0 {
		e := time.Unix(now.Add(lifetime).Unix(), 0)
		t.Expires, expires = &e, e.Unix()
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return APIToken{}, "", fmt.Errorf("creating an API token for %s: %w", name, err)
	}
	defer tx.Rollback()
	if err := exists(ctx, tx, name); err != nil {
		return APIToken{}, "", err
	}
	if err := checkLiveAPITokens(ctx, tx, name, now); err != nil {
		return APIToken{}, "", err
	}
	if err := pruneDeadAPITokens(ctx, tx, name, now); err != nil {
		return APIToken{}, "", err
	}
	err = tx.QueryRowContext(ctx, `INSERT INTO api_tokens (hash, account, scope, name, created, expires) VALUES (?, ?, ?, ?, ?, ?) RETURNING id`,
		credentials.Hash(secret), name, string(scope), label, t.Created.Unix(), expires).Scan(&t.ID)
	if err != nil {
		return APIToken{}, "", fmt.Errorf("creating an API token for %s: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return APIToken{}, "", fmt.Errorf("creating an API token for %s: %w", name, err)
	}
	return t, secret, nil
}

const apiTokenColumns = `id, account, scope, name, created, expires, revoked, last_used`

func scanAPIToken(row interface{ Scan(...any) error }) (APIToken, error) {
	var t APIToken
	var scope string
	var created, expires, revoked, used int64
	if err := row.Scan(&t.ID, &t.Account, &scope, &t.Name, &created, &expires, &revoked, &used); err != nil {
		return APIToken{}, err
	}
	t.Scope, t.Created = Scope(scope), time.Unix(created, 0)
	at := func(u int64) *time.Time {
		if u == 0 {
			return nil
		}
		v := time.Unix(u, 0)
		return &v
	}
	t.Expires, t.Revoked, t.LastUsed = at(expires), at(revoked), at(used)
	return t, nil
}

// APITokens lists the API tokens of an account ("": of all), revoked and
// expired ones too, by id.
func (s *Service) APITokens(ctx context.Context, name string) ([]APIToken, error) {
	q := `SELECT ` + apiTokenColumns + ` FROM api_tokens`
	var args []any
	if name != "" {
		if err := exists(ctx, s.db, name); err != nil {
			return nil, err
		}
		q += ` WHERE account = ?`
		args = append(args, name)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY id`, args...)
	if err != nil {
		return nil, fmt.Errorf("listing API tokens: %w", err)
	}
	defer rows.Close()
	out := []APIToken{}
	for rows.Next() {
		t, err := scanAPIToken(rows)
		if err != nil {
			return nil, fmt.Errorf("listing API tokens: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing API tokens: %w", err)
	}
	return out, nil
}

// ErrNoAPIToken is returned for an API token id that does not exist.
var ErrNoAPIToken = errors.New("no such API token")

// RevokeAPIToken revokes a token by id and returns it. A running farm
// that cached the token's verdict may accept it for up to
// apiauth.DefaultTTL more.
func (s *Service) RevokeAPIToken(ctx context.Context, id int64) (APIToken, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return APIToken{}, fmt.Errorf("revoking API token %d: %w", id, err)
	}
	defer tx.Rollback()
	t, err := scanAPIToken(tx.QueryRowContext(ctx, `SELECT `+apiTokenColumns+` FROM api_tokens WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return APIToken{}, fmt.Errorf("%w: %d (see nixfarm tokens list)", ErrNoAPIToken, id)
	}
	if err != nil {
		return APIToken{}, fmt.Errorf("revoking API token %d: %w", id, err)
	}
	if t.Revoked != nil {
		return t, fmt.Errorf("API token %d was revoked already, at %s", id, t.Revoked.UTC().Format(time.RFC3339))
	}
	now := time.Unix(s.now().Unix(), 0)
	if _, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked = ? WHERE id = ?`, now.Unix(), id); err != nil {
		return APIToken{}, fmt.Errorf("revoking API token %d: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return APIToken{}, fmt.Errorf("revoking API token %d: %w", id, err)
	}
	t.Revoked = &now
	return t, nil
}

// APIToken returns who a live API token lets see what: apiauth.Lookup.
// It records the token's use, at most once a minute.
func (s *Service) APIToken(ctx context.Context, token string) (apiauth.Grant, error) {
	if !strings.HasPrefix(token, APITokenPrefix) || len(token) > 256 {
		return apiauth.Grant{}, apiauth.ErrUnknown
	}
	want := credentials.Hash(token)
	var (
		id                             int64
		have, name, scope              string
		expires, revoked, lastUsedUnix int64
	)
	err := s.db.QueryRowContext(ctx, `SELECT id, hash, account, scope, expires, revoked, last_used FROM api_tokens WHERE hash = ?`,
		want).Scan(&id, &have, &name, &scope, &expires, &revoked, &lastUsedUnix)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && subtle.ConstantTimeCompare([]byte(have), []byte(want)) != 1) {
		return apiauth.Grant{}, apiauth.ErrUnknown
	}
	if err != nil {
		return apiauth.Grant{}, fmt.Errorf("looking up an API token: %w", err)
	}
	now := s.now()
	if revoked != 0 {
		return apiauth.Grant{}, apiauth.ErrRevoked
	}
	g := apiauth.Grant{Viewer: apiauth.Viewer{Account: name, Admin: scope == string(ScopeAdmin)}}
	if expires != 0 {
		g.Expires = time.Unix(expires, 0)
		if !now.Before(g.Expires) {
			return apiauth.Grant{}, apiauth.ErrExpired
		}
	}
	if now.Sub(time.Unix(lastUsedUnix, 0)) >= lastUsedEvery {
		if _, err := s.db.ExecContext(ctx, `UPDATE api_tokens SET last_used = ? WHERE id = ? AND last_used = ?`,
			now.Unix(), id, lastUsedUnix); err != nil {
			s.log.Warn("recording an API token's use", "id", id, "err", err)
		}
	}
	return g, nil
}
