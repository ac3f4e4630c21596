package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/blob"
	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Local is the farm store on one machine: metadata in a SQLite database
// opened by package db, NARs in a blob.Store keyed by the nix32 form of
// their SHA-256.
type Local struct {
	db    *sql.DB
	blobs blob.Store
	now   func() time.Time
	sync  syncer
	// Log receives failures of the background sync (default: discarded
	// until Flush reports them).
	Log *slog.Logger
	// SyncDelay is how long after registration a path's blob is synced to
	// disk (DefaultSyncDelay; set it before use).
	SyncDelay time.Duration

	inMu     sync.Mutex
	incoming map[storepath.Path]*incoming // see Expect
}

// NewLocal returns a store over an open database and a blob store. Call
// Recover before serving, and Flush before closing the database.
func NewLocal(db *sql.DB, blobs blob.Store) *Local {
	s := &Local{db: db, blobs: blobs, now: time.Now, SyncDelay: DefaultSyncDelay}
	s.sync.idle = sync.NewCond(&s.sync.mu)
	s.sync.wake = make(chan struct{}, 1)
	return s
}

var _ Store = (*Local)(nil)

const infoColumns = `id, path, nar_hash, nar_size, deriver, ca, sigs, ultimate, registration_time, account`

func (s *Local) scanInfo(ctx context.Context, row *sql.Row) (*PathInfo, error) {
	var (
		id                  int64
		path, hash, deriver string
		ca, sigs, account   string
		size, regTime       int64
		ultimate            bool
	)
	if err := row.Scan(&id, &path, &hash, &size, &deriver, &ca, &sigs, &ultimate, &regTime, &account); err != nil {
		return nil, err
	}
	h, err := nixhash.Parse(hash)
	if err != nil {
		return nil, fmt.Errorf("stored hash of %s: %w", path, err)
	}
	info := &PathInfo{
		Path:             storepath.Path(path),
		Deriver:          storepath.Path(deriver),
		NarHash:          h,
		NarSize:          uint64(size),
		CA:               ca,
		Ultimate:         ultimate,
		RegistrationTime: time.Unix(regTime, 0),
		Account:          account,
	}
	if sigs != "" {
		info.Sigs = strings.Split(sigs, " ")
	}
	rows, err := s.db.QueryContext(ctx,
		`SELECT p.path FROM refs r JOIN paths p ON p.id = r.reference WHERE r.referrer = ? ORDER BY p.path`, id)
	if err != nil {
		return nil, err
	}
	info.References, err = scanPaths(rows)
	return info, err
}

func scanPaths(rows *sql.Rows) ([]storepath.Path, error) {
	defer rows.Close()
	var out []storepath.Path
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			return nil, err
		}
		out = append(out, storepath.Path(p))
	}
	return out, rows.Err()
}

// QueryPathInfo implements Store.
func (s *Local) QueryPathInfo(ctx context.Context, p storepath.Path) (*PathInfo, error) {
	// An expected path is looked up first: it stops being expected only
	// after it is registered, so one or the other always answers.
	if in := s.lookupIncoming(p); in != nil {
		return in.declared(), nil
	}
	return s.registeredInfo(ctx, p)
}

// registeredInfo returns the info of a registered path, or ErrNotFound.
func (s *Local) registeredInfo(ctx context.Context, p storepath.Path) (*PathInfo, error) {
	info, err := s.scanInfo(ctx, s.db.QueryRowContext(ctx, `SELECT `+infoColumns+` FROM paths WHERE path = ?`, string(p)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, p)
	}
	if err != nil {
		return nil, fmt.Errorf("querying %s: %w", p, err)
	}
	return info, nil
}

// QueryPathFromHashPart implements Store.
func (s *Local) QueryPathFromHashPart(ctx context.Context, hashPart string) (storepath.Path, error) {
	var p string
	err := s.db.QueryRowContext(ctx, `SELECT path FROM paths WHERE hash_part = ?`, hashPart).Scan(&p)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("%w: no path has hash part %q", ErrNotFound, hashPart)
	}
	if err != nil {
		return "", fmt.Errorf("querying hash part %s: %w", hashPart, err)
	}
	return storepath.Path(p), nil
}

func jsonList(ps []storepath.Path) string {
	b, _ := json.Marshal(storepath.Strings(ps))
	return string(b)
}

// ValidPaths implements Store.
func (s *Local) ValidPaths(ctx context.Context, ps []storepath.Path) ([]storepath.Path, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	rows, err := s.db.QueryContext(ctx,
		`SELECT path FROM paths WHERE path IN (SELECT value FROM json_each(?))`, jsonList(ps))
	if err != nil {
		return nil, fmt.Errorf("querying valid paths: %w", err)
	}
	found, err := scanPaths(rows)
	if err != nil {
		return nil, fmt.Errorf("querying valid paths: %w", err)
	}
	valid := make(map[storepath.Path]bool, len(found))
	for _, p := range found {
		valid[p] = true
	}
	out := make([]storepath.Path, 0, len(found))
	for _, p := range ps {
		if valid[p] {
			out = append(out, p)
			delete(valid, p) // report duplicates once
		}
	}
	return out, nil
}

// Closure implements Store.
func (s *Local) Closure(ctx context.Context, ps []storepath.Path) ([]storepath.Path, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	valid, err := s.ValidPaths(ctx, ps)
	if err != nil {
		return nil, err
	}
	if len(valid) != len(dedup(ps)) {
		have := make(map[storepath.Path]bool, len(valid))
		for _, p := range valid {
			have[p] = true
		}
		for _, p := range ps {
			if !have[p] {
				return nil, fmt.Errorf("%w: %s", ErrNotFound, p)
			}
		}
	}
	rows, err := s.db.QueryContext(ctx, `
		WITH RECURSIVE closure(id) AS (
			SELECT id FROM paths WHERE path IN (SELECT value FROM json_each(?))
			UNION
			SELECT r.reference FROM refs r JOIN closure c ON r.referrer = c.id
		)
		SELECT p.path FROM paths p JOIN closure c ON p.id = c.id ORDER BY p.path`, jsonList(ps))
	if err != nil {
		return nil, fmt.Errorf("computing closure: %w", err)
	}
	return scanPaths(rows)
}

func dedup(ps []storepath.Path) map[storepath.Path]bool {
	m := make(map[storepath.Path]bool, len(ps))
	for _, p := range ps {
		m[p] = true
	}
	return m
}

// Referrers implements Store.
func (s *Local) Referrers(ctx context.Context, p storepath.Path) ([]storepath.Path, error) {
	rows, err := s.db.QueryContext(ctx, `
		SELECT r.path FROM refs x
		JOIN paths t ON t.id = x.reference
		JOIN paths r ON r.id = x.referrer
		WHERE t.path = ? ORDER BY r.path`, string(p))
	if err != nil {
		return nil, fmt.Errorf("querying referrers of %s: %w", p, err)
	}
	return scanPaths(rows)
}

// NarFromPath implements Store. The NAR of a path being added after
// Expect is followed as it arrives.
func (s *Local) NarFromPath(ctx context.Context, p storepath.Path) (io.ReadCloser, *PathInfo, error) {
	if rc, info, ok := s.followIncoming(ctx, p); ok { // first, as in QueryPathInfo
		return rc, info, nil
	}
	return s.registeredNar(ctx, p)
}

// registeredNar opens the NAR of a registered path.
func (s *Local) registeredNar(ctx context.Context, p storepath.Path) (io.ReadCloser, *PathInfo, error) {
	info, err := s.registeredInfo(ctx, p)
	if err != nil {
		return nil, nil, err
	}
	r, err := s.blobs.Open(ctx, blobKey(info.NarHash))
	if err != nil {
		return nil, nil, fmt.Errorf("opening NAR of %s: %w", p, err)
	}
	return r, info, nil
}

func blobKey(h nixhash.Hash) string { return h.Nix32() }

// AddToStore implements Store.
func (s *Local) AddToStore(ctx context.Context, info *PathInfo, narSrc io.Reader) (err error) {
	if in := s.claimIncoming(info.Path); in != nil {
		defer func() { s.finishIncoming(in, err) }()
		return s.addToStore(ctx, info, narSrc, in)
	}
	return s.addToStore(ctx, info, narSrc, nil)
}

// addToStore is AddToStore; in, if not nil, is the path's expectation,
// claimed by this add, which follows the NAR as it is written.
func (s *Local) addToStore(ctx context.Context, info *PathInfo, narSrc io.Reader, in *incoming) error {
	if !info.NarHash.IsZero() && info.NarHash.Algo != nixhash.SHA256 {
		return publicerr.New("adding %s: NAR hash must be sha256, not %s", info.Path, info.NarHash.Algo)
	}
	if info.Path == "" {
		return publicerr.New("adding path: no store path given")
	}
	if valid, err := s.ValidPaths(ctx, []storepath.Path{info.Path}); err != nil {
		return err
	} else if len(valid) == 1 {
		n, err := nar.Copy(io.Discard, narSrc)
		if err != nil {
			return fmt.Errorf("reading NAR of %s: %w", info.Path, err)
		}
		if info.NarSize != 0 && uint64(n) != info.NarSize {
			return fmt.Errorf("%w for %s: declared %d bytes, got %d", ErrSizeMismatch, info.Path, info.NarSize, n)
		}
		return nil
	}
	if err := s.checkReferences(ctx, info); err != nil {
		return err
	}
	ca, err := newCACheck(info)
	if err != nil {
		return err
	}

	w, err := s.blobs.Create(ctx)
	if err != nil {
		return err
	}
	defer w.Abort()
	var dst io.Writer = w
	if sp, ok := w.(blob.Spooled); ok && in != nil {
		in.mu.Lock()
		in.spool = sp.SpoolPath()
		in.cond.Broadcast()
		in.mu.Unlock()
		dst = &incomingWriter{w: w, in: in}
	}
	h := sha256.New()
	var n int64
	if ca != nil {
		n, err = ca.copy(io.MultiWriter(dst, h), narSrc)
	} else {
		n, err = nar.Copy(io.MultiWriter(dst, h), narSrc)
	}
	if err != nil {
		return fmt.Errorf("reading NAR of %s: %w", info.Path, err)
	}
	got := nixhash.FromDigest(nixhash.SHA256, h)
	if info.NarSize != 0 && uint64(n) != info.NarSize {
		return fmt.Errorf("%w for %s: declared %d bytes, got %d", ErrSizeMismatch, info.Path, info.NarSize, n)
	}
	if !info.NarHash.IsZero() && !info.NarHash.Equal(got) {
		return fmt.Errorf("%w for %s: declared %s, got %s", ErrHashMismatch, info.Path, info.NarHash, got)
	}
	info.NarHash, info.NarSize = got, uint64(n)
	if ca != nil {
		if err := ca.verify(info); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// Readers that have not opened the spool file yet wait for the end
	// of the add, then read the registered NAR: the spool file is
	// renamed away.
	key := blobKey(got)
	if err := w.Commit(key); err != nil {
		return err
	}
	return s.register(ctx, info)
}

func (s *Local) checkReferences(ctx context.Context, info *PathInfo) error {
	var others []storepath.Path
	for _, r := range info.References {
		if r != info.Path {
			others = append(others, r)
		}
	}
	valid, err := s.ValidPaths(ctx, others)
	if err != nil {
		return err
	}
	if len(valid) == len(dedup(others)) {
		return nil
	}
	have := dedup(valid)
	for _, r := range others {
		if !have[r] {
			return fmt.Errorf("cannot add %s: %w: %s is not in the farm store (upload it first)", info.Path, ErrInvalidReference, r)
		}
	}
	return nil
}

func (s *Local) register(ctx context.Context, info *PathInfo) error {
	if info.RegistrationTime.IsZero() {
		info.RegistrationTime = s.now()
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("registering %s: %w", info.Path, err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `INSERT INTO paths
		(path, hash_part, nar_hash, nar_size, deriver, ca, sigs, ultimate, registration_time, account)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO NOTHING`,
		string(info.Path), info.Path.HashPart(), info.NarHash.String(), int64(info.NarSize),
		string(info.Deriver), info.CA, strings.Join(info.Sigs, " "), info.Ultimate,
		info.RegistrationTime.Unix(), info.Account)
	if err != nil {
		return fmt.Errorf("registering %s: %w", info.Path, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil // registered concurrently by another upload of the same path
	}
	id, err := res.LastInsertId()
	if err != nil {
		return err
	}
	for _, r := range info.References {
		res, err := tx.ExecContext(ctx,
			`INSERT OR IGNORE INTO refs (referrer, reference) SELECT ?, id FROM paths WHERE path = ?`, id, string(r))
		if err != nil {
			return fmt.Errorf("registering reference %s of %s: %w", r, info.Path, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("cannot add %s: %w: %s is not in the farm store", info.Path, ErrInvalidReference, r)
		}
	}
	key := blobKey(info.NarHash)
	if _, err := tx.ExecContext(ctx, `INSERT INTO unsynced (path_id, blob) VALUES (?, ?)`, id, key); err != nil {
		return fmt.Errorf("registering %s: %w", info.Path, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("registering %s: %w", info.Path, err)
	}
	s.syncBehind(id, key)
	return nil
}

// AddSignatures implements Store.
func (s *Local) AddSignatures(ctx context.Context, p storepath.Path, sigs []string) error {
	info, err := s.QueryPathInfo(ctx, p)
	if err != nil {
		return err
	}
	have := make(map[string]bool)
	for _, sig := range info.Sigs {
		have[sig] = true
	}
	merged := info.Sigs
	for _, sig := range sigs {
		if strings.ContainsAny(sig, " \n") || sig == "" {
			return publicerr.New("invalid signature %q", sig)
		}
		if !have[sig] {
			have[sig] = true
			merged = append(merged, sig)
		}
	}
	_, err = s.db.ExecContext(ctx, `UPDATE paths SET sigs = ? WHERE path = ?`, strings.Join(merged, " "), string(p))
	return err
}
