// Package credentials issues, verifies and revokes the secrets that
// `nixfarm worker` agents join a farm with.
//
// Each credential belongs to one worker name and admits only that name. It
// is a random 32-byte secret, shown once when it is issued (base64url);
// the state database keeps only its SHA-256, so a copy of the database
// does not let anyone join. A name has at most one live credential;
// revoked ones stay listed with the time they were revoked.
package credentials

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Reserved are names no agent may take: the built-in worker's.
var Reserved = []string{"local"}

// ErrUnknown is wrapped when a secret matches no live credential.
var ErrUnknown = errors.New("no live worker credential matches")

// ErrWrongName is wrapped when a secret belongs to another worker name.
var ErrWrongName = errors.New("the credential was issued for another worker name")

// ErrExists is wrapped when a name already has a live credential.
var ErrExists = errors.New("the worker already has a credential")

// ErrNoCredential is wrapped when a name has no live credential.
var ErrNoCredential = errors.New("the worker has no credential")

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidFormat checks the form of a worker name: 1 to 64 letters, digits,
// '.', '_' or '-'.
func ValidFormat(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("worker name %q: use 1 to 64 letters, digits, '.', '_' and '-'", name)
	}
	return nil
}

// ValidName checks that name has the form of a worker name and is not a
// reserved one.
func ValidName(name string) error {
	if err := ValidFormat(name); err != nil {
		return err
	}
	for _, r := range Reserved {
		if strings.EqualFold(name, r) {
			return fmt.Errorf("worker name %q is reserved for the built-in worker", name)
		}
	}
	return nil
}

// Credential describes an issued credential (never its secret).
type Credential struct {
	ID      int64
	Name    string
	Created time.Time
	// Revoked is zero while the credential is live.
	Revoked time.Time
	// LastSeen is the last time an agent logged in with it (zero: never).
	LastSeen time.Time
}

// Store keeps credentials in the farm's database (opened by package db).
type Store struct {
	db  *sql.DB
	now func() time.Time
}

// New returns a credential store over db; now is the clock (time.Now if
// nil).
func New(db *sql.DB, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{db: db, now: now}
}

// NewSecret returns a new secret, 32 random bytes as base64url without
// padding: a worker credential here, and an account's cache token.
func NewSecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("making a secret: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// Hash is what the state database keeps of a secret: its SHA-256, hex.
func Hash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// Issue creates a credential for name and returns its secret, which is
// not kept anywhere.
func (s *Store) Issue(ctx context.Context, name string) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	secret, err := NewSecret()
	if err != nil {
		return "", err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return "", fmt.Errorf("issuing a credential for %s: %w", name, err)
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM worker_credentials WHERE name = ? AND revoked_at = 0`, name).Scan(&n); err != nil {
		return "", fmt.Errorf("issuing a credential for %s: %w", name, err)
	}
	if n > 0 {
		return "", fmt.Errorf("%w: %s (revoke it first to issue a new one)", ErrExists, name)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO worker_credentials (name, secret_hash, created_at) VALUES (?, ?, ?)`,
		name, Hash(secret), s.now().UnixMilli()); err != nil {
		return "", fmt.Errorf("issuing a credential for %s: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return "", fmt.Errorf("issuing a credential for %s: %w", name, err)
	}
	return secret, nil
}

// Verify checks that secret is a live credential of name, records the
// login and returns the credential's id.
func (s *Store) Verify(ctx context.Context, name, secret string) (int64, error) {
	if err := ValidName(name); err != nil {
		return 0, err
	}
	want := Hash(secret)
	var (
		id         int64
		owner, got string
	)
	err := s.db.QueryRowContext(ctx, `SELECT id, name, secret_hash FROM worker_credentials WHERE secret_hash = ? AND revoked_at = 0`,
		want).Scan(&id, &owner, &got)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1) {
		return 0, fmt.Errorf("%w worker %s", ErrUnknown, name)
	}
	if err != nil {
		return 0, fmt.Errorf("checking the credential of %s: %w", name, err)
	}
	if owner != name {
		return 0, fmt.Errorf("%w: %s, not %s", ErrWrongName, owner, name)
	}
	if _, err := s.db.ExecContext(ctx, `UPDATE worker_credentials SET last_seen_at = ? WHERE id = ?`, s.now().UnixMilli(), id); err != nil {
		return 0, fmt.Errorf("recording the login of %s: %w", name, err)
	}
	return id, nil
}

// Revoke withdraws name's live credential.
func (s *Store) Revoke(ctx context.Context, name string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE worker_credentials SET revoked_at = ? WHERE name = ? AND revoked_at = 0`,
		s.now().UnixMilli(), name)
	if err != nil {
		return fmt.Errorf("revoking the credential of %s: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: %s", ErrNoCredential, name)
	}
	return nil
}

// Live reports which of ids are live credentials.
func (s *Store) Live(ctx context.Context, ids []int64) (map[int64]bool, error) {
	live := map[int64]bool{}
	if len(ids) == 0 {
		return live, nil
	}
	var list strings.Builder
	list.WriteByte('[')
	for i, id := range ids {
		if i > 0 {
			list.WriteByte(',')
		}
		fmt.Fprint(&list, id)
	}
	list.WriteByte(']')
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM worker_credentials WHERE revoked_at = 0 AND id IN (SELECT value FROM json_each(?))`, list.String())
	if err != nil {
		return nil, fmt.Errorf("checking worker credentials: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		live[id] = true
	}
	return live, rows.Err()
}

// List returns every credential, live and revoked, by name then age.
func (s *Store) List(ctx context.Context) ([]Credential, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, name, created_at, revoked_at, last_seen_at FROM worker_credentials ORDER BY name, id`)
	if err != nil {
		return nil, fmt.Errorf("listing worker credentials: %w", err)
	}
	defer rows.Close()
	var out []Credential
	for rows.Next() {
		var c Credential
		var created, revoked, seen int64
		if err := rows.Scan(&c.ID, &c.Name, &created, &revoked, &seen); err != nil {
			return nil, err
		}
		c.Created = time.UnixMilli(created)
		if revoked != 0 {
			c.Revoked = time.UnixMilli(revoked)
		}
		if seen != 0 {
			c.LastSeen = time.UnixMilli(seen)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}
