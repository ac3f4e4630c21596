package account

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"

	"github.com/nixfarm/nixfarm/internal/credentials"
)

// ErrBadToken is returned for a binary cache token that names no account.
var ErrBadToken = errors.New("unknown or revoked cache token")

// maxTokenLen bounds what TokenAccount hashes: an issued token is 43
// characters.
const maxTokenLen = 256

func tokenHash(token string) string { return credentials.Hash(token) }

// IssueToken makes a new binary cache token for an existing account: 32
// random bytes, base64url without padding. Only its SHA-256 is kept, so
// the token is shown once; an account may hold several.
func (s *Service) IssueToken(ctx context.Context, name string) (string, error) {
	token, err := credentials.NewSecret()
	if err != nil {
		return "", err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return "", fmt.Errorf("issuing a token for %s: %w", name, err)
	}
	defer tx.Rollback()
	if err := exists(ctx, tx, name); err != nil {
		return "", err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO cache_tokens (hash, account, created) VALUES (?, ?, ?)`,
		tokenHash(token), name, s.now().Unix()); err != nil {
		return "", fmt.Errorf("issuing a token for %s: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return "", fmt.Errorf("issuing a token for %s: %w", name, err)
	}
	return token, nil
}

// RevokeTokens deletes every binary cache token of an account and returns
// how many there were. A server that cached a token's verdict may accept
// it for a few more seconds (binarycache.TokenAuth's TTL).
func (s *Service) RevokeTokens(ctx context.Context, name string) (int, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("revoking tokens of %s: %w", name, err)
	}
	defer tx.Rollback()
	var one int
	err = tx.QueryRowContext(ctx, `SELECT 1 FROM accounts WHERE name = ?`, name).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, unknown(name)
	}
	if err != nil {
		return 0, fmt.Errorf("revoking tokens of %s: %w", name, err)
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM cache_tokens WHERE account = ?`, name)
	if err != nil {
		return 0, fmt.Errorf("revoking tokens of %s: %w", name, err)
	}
	n, _ := res.RowsAffected()
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("revoking tokens of %s: %w", name, err)
	}
	return int(n), nil
}

// TokenAccount returns the account a binary cache token belongs to, or
// ErrBadToken. It is binarycache.TokenLookup, behind the cache's
// authenticator.
func (s *Service) TokenAccount(ctx context.Context, token string) (string, error) {
	if token == "" || len(token) > maxTokenLen {
		return "", ErrBadToken
	}
	want := tokenHash(token)
	var have, name string
	err := s.db.QueryRowContext(ctx, `SELECT hash, account FROM cache_tokens WHERE hash = ?`, want).Scan(&have, &name)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrBadToken
	}
	if err != nil {
		return "", fmt.Errorf("looking up a cache token: %w", err)
	}
	if subtle.ConstantTimeCompare([]byte(have), []byte(want)) != 1 {
		return "", ErrBadToken
	}
	return name, nil
}
