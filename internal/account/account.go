// Package account manages the farm's accounts in the state database: the
// accounts themselves, the SSH keys that authenticate as them, the Nix
// signing keys they trust, and their limits (concurrent and queued
// builds, upload, output and log sizes, stored bytes), each with the
// farm's default unless set. It also enforces the limits that sit on the
// farm store (Views) and on build logs (LimitLog), and reports an
// account's limits and usage (Status, for `nixfarm whoami`), and keeps
// its binary cache tokens and API tokens (`nixfarm tokens`).
//
// An account that authenticates through the authorized_keys file but was
// never added here has the default limits.
package account

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/signature"
)

// ErrUnknown is returned for an account that does not exist.
var ErrUnknown = errors.New("no such account")

// ErrExists is returned when adding an account or key that exists.
var ErrExists = errors.New("already exists")

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// ValidName checks an account name: a lowercase letter or digit, then up
// to 63 lowercase letters, digits, dots, dashes or underscores.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid account name %q: use a lowercase letter or digit, then up to 63 of a-z 0-9 . _ -", name)
	}
	return nil
}

// Service reads and writes accounts in the state database. It is safe for
// concurrent use.
type Service struct {
	db       *sql.DB
	defaults Values
	log      *slog.Logger
	now      func() time.Time
	// ttl is how long a looked-up account's limits are reused.
	ttl time.Duration

	mu      sync.Mutex
	cache   map[string]cachedLimits
	trusted map[string]cachedKeys
	// upstream are the keys the farm substitutes with (upstream.go).
	upstream []signature.PublicKey
}

type cachedKeys struct {
	keys []signature.PublicKey
	at   time.Time
}

type cachedLimits struct {
	limits   Limits
	removals int64 // how many times the name was removed (account_removals)
	at       time.Time
}

// New returns a service over an open state database (see package db), with
// defaults for the limits an account does not set.
func New(db *sql.DB, defaults Values, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	return &Service{db: db, defaults: defaults, log: log, now: time.Now, ttl: 2 * time.Second,
		cache: map[string]cachedLimits{}, trusted: map[string]cachedKeys{}}
}

// Defaults returns the farm's default limits.
func (s *Service) Defaults() Values { return s.defaults }

// Account is one account as the database holds it.
type Account struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	Keys    int       `json:"keys"`
	Limits  Limits    `json:"limits"`
	// Trusted are the Nix public keys ("name:base64") the account trusts.
	Trusted []string `json:"trusted"`
	// Untrusted are keys it has untrusted: upstream keys of the farm's it
	// does not trust (upstream.go).
	Untrusted []string `json:"untrusted"`
}

// Add creates an account.
func (s *Service) Add(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO accounts (name, created) VALUES (?, ?) ON CONFLICT(name) DO NOTHING`,
		name, s.now().Unix())
	if err != nil {
		return fmt.Errorf("adding account %s: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("account %s %w", name, ErrExists)
	}
	return nil
}

// Remove deletes an account, its keys and its trusted keys, and returns
// how many SSH keys went with it. What it uploaded and built stays in the
// farm store.
func (s *Service) Remove(ctx context.Context, name string) (int, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("removing account %s: %w", name, err)
	}
	defer tx.Rollback()
	var keys int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM keys WHERE account = ?`, name).Scan(&keys); err != nil {
		return 0, fmt.Errorf("removing account %s: %w", name, err)
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM accounts WHERE name = ?`, name)
	if err != nil {
		return 0, fmt.Errorf("removing account %s: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return 0, unknown(name)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO account_removals (name, removals) VALUES (?, 1)
		ON CONFLICT(name) DO UPDATE SET removals = removals + 1`, name); err != nil {
		return 0, fmt.Errorf("removing account %s: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("removing account %s: %w", name, err)
	}
	s.forget(name)
	return keys, nil
}

func unknown(name string) error {
	return fmt.Errorf("%w %q (add it with: nixfarm accounts add %s)", ErrUnknown, name, name)
}

// List returns every account, by name.
func (s *Service) List(ctx context.Context) ([]Account, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name FROM accounts ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("listing accounts: %w", err)
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return nil, fmt.Errorf("listing accounts: %w", err)
		}
		names = append(names, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing accounts: %w", err)
	}
	out := []Account{}
	for _, n := range names {
		a, err := s.Get(ctx, n)
		if errors.Is(err, ErrUnknown) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, *a)
	}
	return out, nil
}

// Get returns one account.
func (s *Service) Get(ctx context.Context, name string) (*Account, error) {
	a := &Account{Name: name, Trusted: []string{}, Untrusted: []string{}}
	var created int64
	vals := make([]sql.NullInt64, numLimits)
	dest := []any{&created}
	for i := range vals {
		dest = append(dest, &vals[i])
	}
	err := s.db.QueryRowContext(ctx, `SELECT created, `+limitColumns()+` FROM accounts WHERE name = ?`, name).Scan(dest...)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, unknown(name)
	}
	if err != nil {
		return nil, fmt.Errorf("reading account %s: %w", name, err)
	}
	a.Created = time.Unix(created, 0)
	a.Limits = s.limitsFrom(vals)
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM keys WHERE account = ?`, name).Scan(&a.Keys); err != nil {
		return nil, fmt.Errorf("reading account %s: %w", name, err)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT key FROM trusted_keys WHERE account = ? ORDER BY key`, name)
	if err != nil {
		return nil, fmt.Errorf("reading account %s: %w", name, err)
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, fmt.Errorf("reading account %s: %w", name, err)
		}
		a.Trusted = append(a.Trusted, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading account %s: %w", name, err)
	}
	gone, err := s.distrusted(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("reading account %s: %w", name, err)
	}
	a.Untrusted = slices.Sorted(maps.Keys(gone))
	return a, nil
}

// Trust records that account trusts paths signed with a Nix public key
// ("name:base64", as in nix.conf's trusted-public-keys). Adding a key it
// trusts already is not an error.
func (s *Service) Trust(ctx context.Context, name, key string) error {
	pk, err := signature.ParsePublicKey(key)
	if err != nil {
		return fmt.Errorf("invalid Nix public key %q (expected name:base64, as in trusted-public-keys): %w", key, err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("trusting a key for %s: %w", name, err)
	}
	defer tx.Rollback()
	if err := exists(ctx, tx, name); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO trusted_keys (account, key, added) VALUES (?, ?, ?)
		ON CONFLICT(account, key) DO NOTHING`, name, pk.String(), s.now().Unix()); err != nil {
		return fmt.Errorf("trusting a key for %s: %w", name, err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM distrusted_keys WHERE account = ? AND key = ?`, name, pk.String()); err != nil {
		return fmt.Errorf("trusting a key for %s: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("trusting a key for %s: %w", name, err)
	}
	s.mu.Lock()
	delete(s.trusted, name)
	s.mu.Unlock()
	return nil
}

// exists returns ErrUnknown unless the account exists.
func exists(ctx context.Context, q querier, name string) error {
	var one int
	err := q.QueryRowContext(ctx, `SELECT 1 FROM accounts WHERE name = ?`, name).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return unknown(name)
	}
	if err != nil {
		return fmt.Errorf("reading account %s: %w", name, err)
	}
	return nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// TrustedKeys returns the Nix public keys account trusts: paths the farm
// holds signed by one of them are visible to it. A failure to read them
// is logged, and no key is trusted.
func (s *Service) TrustedKeys(ctx context.Context, name string) []signature.PublicKey {
	// Reused as long as the limits are (every session and build asks).
	now := s.now()
	s.mu.Lock()
	c, ok := s.trusted[name]
	s.mu.Unlock()
	if ok && now.Sub(c.at) < s.ttl {
		return c.keys
	}
	keys := s.withUpstream(ctx, name, s.readTrustedKeys(ctx, name))
	s.mu.Lock()
	if len(s.trusted) > 10000 {
		clear(s.trusted)
	}
	s.trusted[name] = cachedKeys{keys, now}
	s.mu.Unlock()
	return keys
}

func (s *Service) readTrustedKeys(ctx context.Context, name string) []signature.PublicKey {
	rows, err := s.db.QueryContext(ctx, `SELECT key FROM trusted_keys WHERE account = ? ORDER BY key`, name)
	if err != nil {
		s.log.Error("reading an account's trusted keys; none applies", "account", name, "err", err)
		return nil
	}
	defer rows.Close()
	var keys []signature.PublicKey
	for rows.Next() {
		var text string
		if err := rows.Scan(&text); err != nil {
			s.log.Error("reading an account's trusted keys; none applies", "account", name, "err", err)
			return nil
		}
		if k, err := signature.ParsePublicKey(text); err == nil {
			keys = append(keys, k)
		}
	}
	return keys
}
