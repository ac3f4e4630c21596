package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Sharing without trust. Every build the farm runs is recorded under a
// key that covers everything that decides its result: the derivation as
// the worker receives it, and the exact contents (NAR hash, size,
// references) of every path in its input closure, as the requesting
// account sees them. Another account whose request has the same key asked
// for the same computation on the same bytes, so it may have the outputs
// without a rebuild and without trusting anyone: it is shared then, and
// only then.

// Sharer is a Store that can share build outputs between accounts.
type Sharer interface {
	// RecordBuild records that the build with this key produced outputs
	// (output name to path, each in the view) on worker. A key recorded
	// already keeps its first outputs.
	RecordBuild(ctx context.Context, key string, outputs map[string]storepath.Path, worker string) error
	// AdoptBuild makes the outputs recorded under key part of the view,
	// if every output named is recorded there with the same path, and
	// reports whether it did.
	AdoptBuild(ctx context.Context, key string, outputs map[string]storepath.Path) (bool, error)
}

var _ Sharer = (*View)(nil)

// RecordBuild implements Sharer.
func (v *View) RecordBuild(ctx context.Context, key string, outputs map[string]storepath.Path, worker string) error {
	tx, err := v.s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("recording build %s: %w", key, err)
	}
	defer tx.Rollback()
	for name, p := range outputs {
		var id int64
		err := tx.QueryRowContext(ctx, `SELECT object FROM views WHERE account = ? AND path = ?`, v.account, string(p)).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("recording build %s: %w: output %s", key, ErrNotFound, p)
		}
		if err != nil {
			return fmt.Errorf("recording build %s: %w", key, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO shares (build_key, output, object, worker, account, created)
			VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`, key, name, id, worker, v.account, v.s.now().Unix()); err != nil {
			return fmt.Errorf("recording build %s: %w", key, err)
		}
	}
	return tx.Commit()
}

// AdoptBuild implements Sharer.
func (v *View) AdoptBuild(ctx context.Context, key string, outputs map[string]storepath.Path) (bool, error) {
	if len(outputs) == 0 {
		return false, nil
	}
	tx, err := v.s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("sharing build %s: %w", key, err)
	}
	defer tx.Rollback()
	ids := make(map[string]int64, len(outputs))
	for name, p := range outputs {
		var id int64
		var path string
		err := tx.QueryRowContext(ctx, `SELECT s.object, o.path FROM shares s JOIN objects o ON o.id = s.object
			WHERE s.build_key = ? AND s.output = ?`, key, name).Scan(&id, &path)
		if errors.Is(err, sql.ErrNoRows) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("sharing build %s: %w", key, err)
		}
		if path != string(p) {
			return false, nil
		}
		ids[name] = id
	}
	now := v.s.now().Unix()
	for name, p := range outputs {
		// The outputs' references are inputs the account sees with the
		// same contents (they are in the key), or the outputs
		// themselves, so the view stays closed.
		res, err := tx.ExecContext(ctx, `INSERT INTO views (account, path, object, sigs, how, added)
			VALUES (?, ?, ?, '', 'shared', ?) ON CONFLICT(account, path) DO NOTHING`, v.account, string(p), ids[name], now)
		if err != nil {
			return false, fmt.Errorf("sharing build %s: %w", key, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			// The account holds its own version of this output: it
			// keeps it, and the build is not shared.
			return false, nil
		}
	}
	return true, tx.Commit()
}

// ForgetWorker stops sharing what worker built: builds it ran are no
// longer offered to other accounts. The accounts they were built for keep
// their outputs. It returns how many outputs were withdrawn.
func (s *Local) ForgetWorker(ctx context.Context, worker string) (int64, error) {
	return ForgetWorker(ctx, s.db, worker)
}

// ForgetWorker is Local.ForgetWorker on the farm's database, for tools
// that open it beside a running farm (nixfarm workers revoke).
func ForgetWorker(ctx context.Context, db *sql.DB, worker string) (int64, error) {
	res, err := db.ExecContext(ctx, `DELETE FROM shares WHERE worker = ?`, worker)
	if err != nil {
		return 0, fmt.Errorf("withdrawing the builds of worker %s: %w", worker, err)
	}
	return res.RowsAffected()
}
