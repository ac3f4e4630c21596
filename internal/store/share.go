package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

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
	// (output name to the path and contents the farm received from the
	// worker, registered already) on worker. A key recorded already
	// keeps its first outputs.
	RecordBuild(ctx context.Context, key string, outputs map[string]*PathInfo, worker string) error
	// AdoptBuild makes the outputs recorded under key part of the view,
	// if every output named is recorded there with the same path, and
	// reports whether it did.
	AdoptBuild(ctx context.Context, key string, outputs map[string]storepath.Path) (bool, error)
}

var _ Sharer = (*View)(nil)

// RecordBuild implements Sharer. The outputs are found by their contents,
// not in the view: an account that uploaded its own bytes under an
// output's path keeps them, and they are not what the build produced.
func (v *View) RecordBuild(ctx context.Context, key string, outputs map[string]*PathInfo, worker string) error {
	tx, err := v.s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("recording build %s: %w", key, err)
	}
	defer tx.Rollback()
	for name, info := range outputs {
		refs := strings.Join(storepath.Strings(normalizeRefs(info.References)), " ")
		var id int64
		err := tx.QueryRowContext(ctx, `SELECT id FROM objects WHERE path = ? AND nar_hash = ? AND nar_size = ? AND refs = ?`,
			string(info.Path), info.NarHash.String(), int64(info.NarSize), refs).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("recording build %s: %w: output %s with the contents built", key, ErrNotFound, info.Path)
		}
		if err != nil {
			return fmt.Errorf("recording build %s: %w", key, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO shares (build_key, output, object, worker, account, deriver, created)
			VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`, key, name, id, worker, v.account, string(info.Deriver), v.s.now().Unix()); err != nil {
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
	// Most builds were never done before: a read answers them without
	// taking the database's write lock.
	var n int
	if err := v.s.db.QueryRowContext(ctx, `SELECT count(*) FROM shares WHERE build_key = ?`, key).Scan(&n); err != nil {
		return false, fmt.Errorf("sharing build %s: %w", key, err)
	}
	if n < len(outputs) {
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
	// The outputs' references are inputs the account sees with the same
	// contents (they are in the key), or the outputs themselves; a
	// reference that is neither means the record is not this request's.
	refs := map[storepath.Path]bool{}
	for _, id := range ids {
		var text string
		if err := tx.QueryRowContext(ctx, `SELECT refs FROM objects WHERE id = ?`, id).Scan(&text); err != nil {
			return false, fmt.Errorf("sharing build %s: %w", key, err)
		}
		for _, r := range strings.Fields(text) {
			refs[storepath.Path(r)] = true
		}
	}
	for _, p := range outputs {
		delete(refs, p)
	}
	if len(refs) > 0 {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM views WHERE account = ? AND path IN (SELECT value FROM json_each(?))`,
			v.account, jsonList(slices.Collect(maps.Keys(refs)))).Scan(&n); err != nil {
			return false, fmt.Errorf("sharing build %s: %w", key, err)
		}
		if n != len(refs) {
			return false, nil
		}
	}
	now := v.s.now().Unix()
	for name, p := range outputs {
		// The account's own key signs what was built for it, as if the
		// farm had built it for this account (the key is the same).
		var hash, refsText string
		var size int64
		if err := tx.QueryRowContext(ctx, `SELECT nar_hash, nar_size, refs FROM objects WHERE id = ?`, ids[name]).Scan(&hash, &size, &refsText); err != nil {
			return false, fmt.Errorf("sharing build %s: %w", key, err)
		}
		info, err := parseObject(p, hash, size, refsText)
		if err != nil {
			return false, fmt.Errorf("sharing build %s: %w", key, err)
		}
		sig := v.s.accountSig(v.account, p, info.NarHash, info.NarSize, info.References)
		res, err := tx.ExecContext(ctx, `INSERT INTO views (account, path, object, sigs, deriver, how, added)
			SELECT ?, ?, object, ?, deriver, 'shared', ? FROM shares WHERE build_key = ? AND output = ?
			ON CONFLICT(account, path) DO NOTHING`, v.account, string(p), sig, now, key, name)
		if err != nil {
			return false, fmt.Errorf("sharing build %s: %w", key, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			// The account holds its own version of this output: it
			// keeps it, and the build is not shared.
			return false, nil
		}
	}
	if err := tx.Commit(); err != nil {
		return false, err
	}
	v.s.changed()
	return true, nil
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
