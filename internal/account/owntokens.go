package account

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// An account's own API tokens, as its SSH key holder manages them
// (`ssh farm nixfarm tokens`): read scope only, bounded lifetimes, a
// bounded number live, and only the account's own tokens visible.

// MaxLiveAPITokens bounds the tokens of one account that are neither
// revoked nor expired.
const MaxLiveAPITokens = 20

// MaxDeadAPITokens bounds the revoked or expired tokens of one account
// that are kept (for the listing); older ones are deleted when a token is
// made, so that making and revoking tokens over and over cannot grow the
// database without end.
const MaxDeadAPITokens = 100

// ErrTooManyAPITokens is returned when an account holds
// MaxLiveAPITokens live tokens already.
var ErrTooManyAPITokens = errors.New("too many live API tokens")

// checkLiveAPITokens refuses a new token for an account that holds
// MaxLiveAPITokens live ones. q is the transaction that inserts it
// (writers take the database's lock at BEGIN, so the count holds).
func checkLiveAPITokens(ctx context.Context, q querier, name string, now time.Time) error {
	var n int
	err := q.QueryRowContext(ctx, `SELECT COUNT(*) FROM api_tokens WHERE account = ? AND revoked = 0 AND (expires = 0 OR expires > ?)`,
		name, now.Unix()).Scan(&n)
	if err != nil {
		return fmt.Errorf("counting the API tokens of %s: %w", name, err)
	}
	if n >= MaxLiveAPITokens {
		return fmt.Errorf("%w: account %s has %d, the most an account may hold; revoke one first (nixfarm tokens list, nixfarm tokens revoke ID)",
			ErrTooManyAPITokens, name, n)
	}
	return nil
}

// pruneDeadAPITokens deletes the revoked or expired tokens of account
// name but the newest MaxDeadAPITokens.
func pruneDeadAPITokens(ctx context.Context, q *sql.Tx, name string, now time.Time) error {
	const dead = `account = ? AND (revoked != 0 OR (expires != 0 AND expires <= ?))`
	_, err := q.ExecContext(ctx, `DELETE FROM api_tokens WHERE `+dead+` AND id NOT IN (SELECT id FROM api_tokens WHERE `+dead+` ORDER BY id DESC LIMIT ?)`,
		name, now.Unix(), name, now.Unix(), MaxDeadAPITokens)
	if err != nil {
		return fmt.Errorf("deleting the old API tokens of %s: %w", name, err)
	}
	return nil
}

// RevokeOwnAPIToken revokes one of account's tokens, named by its id or,
// if no token of the account has that id, by its name (which must name
// exactly one live token). Another account's token is as unknown as a
// missing one: ErrNoAPIToken.
func (s *Service) RevokeOwnAPIToken(ctx context.Context, name, ref string) (APIToken, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return APIToken{}, fmt.Errorf("revoking API token %q of %s: %w", ref, name, err)
	}
	defer tx.Rollback()
	now := time.Unix(s.now().Unix(), 0)
	var t APIToken
	found := false
	if id, perr := strconv.ParseInt(ref, 10, 64); perr == nil && id > 0 {
		t, err = scanAPIToken(tx.QueryRowContext(ctx, `SELECT `+apiTokenColumns+` FROM api_tokens WHERE id = ? AND account = ?`, id, name))
		switch {
		case err == nil:
			found = true
		case !errors.Is(err, sql.ErrNoRows):
			return APIToken{}, fmt.Errorf("revoking API token %q of %s: %w", ref, name, err)
		}
	}
	if !found {
		rows, err := tx.QueryContext(ctx, `SELECT `+apiTokenColumns+` FROM api_tokens WHERE account = ? AND name = ? AND revoked = 0 AND (expires = 0 OR expires > ?) ORDER BY id`,
			name, ref, now.Unix())
		if err != nil {
			return APIToken{}, fmt.Errorf("revoking API token %q of %s: %w", ref, name, err)
		}
		var match []APIToken
		for rows.Next() {
			m, err := scanAPIToken(rows)
			if err != nil {
				rows.Close()
				return APIToken{}, fmt.Errorf("revoking API token %q of %s: %w", ref, name, err)
			}
			match = append(match, m)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return APIToken{}, fmt.Errorf("revoking API token %q of %s: %w", ref, name, err)
		}
		switch len(match) {
		case 0:
			return APIToken{}, fmt.Errorf("%w: %q among account %s's tokens (nixfarm tokens list shows them)", ErrNoAPIToken, ref, name)
		case 1:
			t = match[0]
		default:
			return APIToken{}, fmt.Errorf("%w: %d live tokens are named %q; revoke one by its ID (nixfarm tokens list shows them)",
				ErrAmbiguousAPIToken, len(match), ref)
		}
	}
	if t.Revoked != nil {
		return t, fmt.Errorf("API token %d was %w at %s", t.ID, ErrAPITokenRevoked, t.Revoked.UTC().Format(time.RFC3339))
	}
	if _, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked = ? WHERE id = ? AND account = ?`, now.Unix(), t.ID, name); err != nil {
		return APIToken{}, fmt.Errorf("revoking API token %d: %w", t.ID, err)
	}
	if err := tx.Commit(); err != nil {
		return APIToken{}, fmt.Errorf("revoking API token %d: %w", t.ID, err)
	}
	t.Revoked = &now
	return t, nil
}

// ErrAmbiguousAPIToken is returned for a token name that names several.
var ErrAmbiguousAPIToken = errors.New("ambiguous API token name")

// ErrAPITokenRevoked is returned for revoking a revoked token.
var ErrAPITokenRevoked = errors.New("revoked already")

// ValidAPITokenName checks a token's name (label): printable, at most 64
// bytes.
func ValidAPITokenName(s string) error { return validLabel(s) }
