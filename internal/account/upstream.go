package account

import (
	"context"
	"fmt"
	"slices"

	"github.com/nixfarm/nixfarm/internal/signature"
)

// Upstream trust. The farm substitutes from upstream binary caches what
// is signed by the keys it is configured with (serve
// --trusted-public-key), and every account trusts those keys unless it
// narrows that (`nixfarm accounts untrust`): a substituted path is
// visible to the accounts that trust a key that signed it.

// SetUpstreamKeys sets the keys the farm substitutes with, which every
// account trusts unless it has untrusted them. Call it before serving.
func (s *Service) SetUpstreamKeys(keys []signature.PublicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.upstream = slices.Clone(keys)
	clear(s.trusted)
}

// UpstreamKeys returns the keys set by SetUpstreamKeys.
func (s *Service) UpstreamKeys() []signature.PublicKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.upstream
}

// Untrust takes a key away from what account trusts: one it trusted
// itself, or one of the farm's upstream keys, which it then no longer
// sees substituted paths by (though it keeps those it has seen). Taking
// away a key it does not trust is not an error.
func (s *Service) Untrust(ctx context.Context, name, key string) error {
	pk, err := signature.ParsePublicKey(key)
	if err != nil {
		return fmt.Errorf("invalid Nix public key %q (expected name:base64, as in trusted-public-keys): %w", key, err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("untrusting a key for %s: %w", name, err)
	}
	defer tx.Rollback()
	if err := exists(ctx, tx, name); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM trusted_keys WHERE account = ? AND key = ?`, name, pk.String()); err != nil {
		return fmt.Errorf("untrusting a key for %s: %w", name, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO distrusted_keys (account, key, added) VALUES (?, ?, ?)
		ON CONFLICT(account, key) DO NOTHING`, name, pk.String(), s.now().Unix()); err != nil {
		return fmt.Errorf("untrusting a key for %s: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("untrusting a key for %s: %w", name, err)
	}
	s.mu.Lock()
	delete(s.trusted, name)
	s.mu.Unlock()
	return nil
}

// distrusted returns the keys account has untrusted.
func (s *Service) distrusted(ctx context.Context, name string) (map[string]bool, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT key FROM distrusted_keys WHERE account = ?`, name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		out[k] = true
	}
	return out, rows.Err()
}

// withUpstream adds to keys the upstream keys account has not untrusted.
func (s *Service) withUpstream(ctx context.Context, name string, keys []signature.PublicKey) []signature.PublicKey {
	upstream := s.UpstreamKeys()
	if len(upstream) == 0 {
		return keys
	}
	gone, err := s.distrusted(ctx, name)
	if err != nil {
		s.log.Error("reading an account's untrusted keys; trusting none of the upstream keys", "account", name, "err", err)
		return keys
	}
	for _, k := range upstream {
		if !gone[k.String()] && !slices.ContainsFunc(keys, func(h signature.PublicKey) bool { return h.String() == k.String() }) {
			keys = append(keys, k)
		}
	}
	return keys
}
