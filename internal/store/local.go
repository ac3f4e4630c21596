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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nixfarm/nixfarm/internal/blob"
	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Local is the farm store on one machine: metadata in a SQLite database
// opened by package db, NARs in a blob.Store keyed by the nix32 form of
// their SHA-256.
//
// Local holds every account's paths; each account reads and writes it
// through its View (For). An object is one content of one store path:
// its NAR and the references it declares. Objects with the same path,
// NAR and references are one object, and NARs with the same hash are one
// blob, however many accounts see them; a view row makes an object the
// account's version of its path. So two accounts can hold different
// contents under one path at once, each seeing its own, and neither can
// change what the other sees.
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
	// Key, if set, signs the paths the farm built and vouches for
	// (PathInfo.Sign) when they are registered. Set it before use.
	Key *signature.SecretKey
	// AccountKey, if set, returns the key that signs, in an account's
	// view, the outputs the farm built for it whose paths it could not
	// check (a BasicDerivation names any path it likes): the account's
	// own key, which vouches for nothing to anyone else. Set it before
	// use.
	AccountKey func(account string) *signature.SecretKey

	inMu     sync.Mutex
	incoming map[incomingKey]*incoming // see Expect

	// committing counts the adds that have committed a blob and not yet
	// registered its object, per blob key: a failed registration removes
	// its blob only when no other add is about to name it.
	commitMu   sync.Mutex
	committing map[string]int

	// stmts are the hot queries, prepared once (by query text): parsing
	// SQL is most of a point lookup's cost.
	stmts sync.Map

	// gen counts the changes to views and objects (Generation).
	gen atomic.Uint64
}

// Generation changes whenever any view or object does: what was read
// from the store while it stayed the same is still true. It is bumped
// after each change commits, so a reader that takes it before reading
// never pairs new data with an old generation.
func (s *Local) Generation() uint64 { return s.gen.Load() }

// changed bumps the generation after a change has committed.
func (s *Local) changed() { s.gen.Add(1) }

// query runs a query through a statement prepared once (see queryRow).
func (s *Local) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := s.prepared(ctx, query)
	if err != nil {
		return s.db.QueryContext(ctx, query, args...)
	}
	return st.QueryContext(ctx, args...)
}

// prepared returns the statement of query, prepared once.
func (s *Local) prepared(ctx context.Context, query string) (*sql.Stmt, error) {
	if st, ok := s.stmts.Load(query); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := s.db.PrepareContext(context.WithoutCancel(ctx), query)
	if err != nil {
		return nil, err
	}
	if prev, loaded := s.stmts.LoadOrStore(query, st); loaded {
		st.Close()
		return prev.(*sql.Stmt), nil
	}
	return st, nil
}

// queryRow runs a point query through a statement prepared once. A
// statement that cannot be prepared falls back to the plain query.
func (s *Local) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	st, err := s.prepared(ctx, query)
	if err != nil {
		return s.db.QueryRowContext(ctx, query, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

// NewLocal returns a store over an open database and a blob store. Call
// Recover before serving, and Flush before closing the database.
func NewLocal(db *sql.DB, blobs blob.Store) *Local {
	s := &Local{db: db, blobs: blobs, now: time.Now, SyncDelay: DefaultSyncDelay, committing: map[string]int{}}
	s.sync.idle = sync.NewCond(&s.sync.mu)
	s.sync.wake = make(chan struct{}, 1)
	return s
}

// For returns account's view of the store.
func (s *Local) For(account string) Store { return &View{s: s, account: account} }

var _ Views = (*Local)(nil)

func blobKey(h nixhash.Hash) string { return h.Nix32() }

// normalizeRefs sorts references and drops duplicates: Nix holds them as
// a set, so a client that lists one twice means it once.
func normalizeRefs(refs []storepath.Path) []storepath.Path {
	out := slices.Clone(refs)
	slices.Sort(out)
	return slices.Compact(out)
}

// addToStore streams one NAR into a blob, checks it against info, and
// registers it as account's version of info.Path. in, if not nil, is the
// path's expectation, claimed by this add, which follows the NAR as it is
// written.
func (s *Local) addToStore(ctx context.Context, v *View, info *PathInfo, narSrc io.Reader, in *incoming) error {
	if !info.NarHash.IsZero() && info.NarHash.Algo != nixhash.SHA256 {
		return publicerr.New("adding %s: NAR hash must be sha256, not %s", info.Path, info.NarHash.Algo)
	}
	if info.Path == "" {
		return publicerr.New("adding path: no store path given")
	}
	info.References = normalizeRefs(info.References)
	// A path the account holds already is not added again, as in Nix;
	// but a build's output always is (as an object, the account keeping
	// its own version), since the build is shared as what it produced.
	if valid, err := v.ValidPaths(ctx, []storepath.Path{info.Path}); err != nil {
		return err
	} else if len(valid) == 1 && !info.Ultimate {
		n, err := nar.Copy(io.Discard, narSrc)
		if err != nil {
			return fmt.Errorf("reading NAR of %s: %w", info.Path, err)
		}
		if info.NarSize != 0 && uint64(n) != info.NarSize {
			return fmt.Errorf("%w for %s: declared %d bytes, got %d", ErrSizeMismatch, info.Path, info.NarSize, n)
		}
		return nil
	}
	if err := v.checkReferences(ctx, info); err != nil {
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
	if v.limit > 0 {
		dst = &limitWriter{w: dst, left: v.limit, path: info.Path}
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
		info.CA = ca.ca.String()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// Readers that have not opened the spool file yet wait for the end
	// of the add, then read the registered NAR: the spool file is
	// renamed away.
	key := blobKey(got)
	s.commitMu.Lock()
	s.committing[key]++
	s.commitMu.Unlock()
	err = w.Commit(key)
	if err == nil {
		err = s.register(ctx, v, info, "upload")
	}
	s.commitMu.Lock()
	if s.committing[key]--; s.committing[key] == 0 {
		delete(s.committing, key)
		if err != nil {
			// Nothing was registered: the blob goes unless an object
			// names it already (a NAR added before).
			s.removeUnnamed(key, got)
		}
	}
	s.commitMu.Unlock()
	return err
}

// removeUnnamed removes the blob key unless an object names it. It is
// called with commitMu held, so no add of the same NAR can commit it
// meanwhile; it touches only the database and the local disk.
func (s *Local) removeUnnamed(key string, narHash nixhash.Hash) {
	ctx := context.Background()
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM objects WHERE nar_hash = ?`, narHash.String()).Scan(&n); err != nil || n > 0 {
		return // kept: removed at the next start if no object names it
	}
	if err := s.blobs.Remove(ctx, key); err != nil && s.Log != nil {
		s.Log.Warn("removing the NAR of a failed add", "blob", key, "err", err)
	}
}

// limitWriter fails a write past a limit.
type limitWriter struct {
	w    io.Writer
	left int64
	path storepath.Path
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		return 0, fmt.Errorf("%w: %s is larger than the account's limit", ErrTooLarge, l.path)
	}
	l.left -= int64(len(p))
	return l.w.Write(p)
}

// ErrTooLarge is returned when a NAR exceeds the size an account may add.
var ErrTooLarge = errors.New("NAR too large")

// register records info as an object (or finds the identical one) and
// makes it account's version of info.Path, unless the account has one
// already. how says where the account got it: upload, built, shared.
func (s *Local) register(ctx context.Context, v *View, info *PathInfo, how string) error {
	if info.RegistrationTime.IsZero() {
		info.RegistrationTime = s.now()
	}
	refs := strings.Join(storepath.Strings(info.References), " ")
	var sigs string
	if info.Sign && s.Key != nil {
		sigs = s.Key.Sign(signature.Fingerprint(info.Path, info.NarHash, info.NarSize, info.References))
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("registering %s: %w", info.Path, err)
	}
	defer tx.Rollback()
	if err := v.checkReferencesTx(ctx, tx, info); err != nil {
		return err
	}
	// Within a view a hash part names one path, as in a Nix store.
	prefix := storepath.Dir + "/" + info.Path.HashPart()
	var taken string
	err = tx.QueryRowContext(ctx, `SELECT path FROM views WHERE account = ? AND path > ? AND path < ? AND path != ? LIMIT 1`,
		v.account, prefix+"-", prefix+".", string(info.Path)).Scan(&taken)
	if err == nil {
		return fmt.Errorf("cannot add %s: its hash part is taken by %s", info.Path, taken)
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("registering %s: %w", info.Path, err)
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO objects
		(path, nar_hash, nar_size, refs, deriver, ca, sigs, ultimate, registration_time, account, worker)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path, nar_hash, refs) DO NOTHING`,
		string(info.Path), info.NarHash.String(), int64(info.NarSize), refs,
		string(info.Deriver), info.CA, sigs, info.Ultimate,
		info.RegistrationTime.Unix(), v.account, info.Worker)
	if err != nil {
		return fmt.Errorf("registering %s: %w", info.Path, err)
	}
	var id int64
	created := false
	if n, _ := res.RowsAffected(); n == 1 {
		created = true
		if id, err = res.LastInsertId(); err != nil {
			return err
		}
		for _, r := range info.References {
			if _, err := tx.ExecContext(ctx, `INSERT INTO object_refs (object, reference) VALUES (?, ?)`, id, string(r)); err != nil {
				return fmt.Errorf("registering reference %s of %s: %w", r, info.Path, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO unsynced_objects (object, blob) VALUES (?, ?)`, id, blobKey(info.NarHash)); err != nil {
			return fmt.Errorf("registering %s: %w", info.Path, err)
		}
	} else {
		if err := tx.QueryRowContext(ctx, `SELECT id FROM objects WHERE path = ? AND nar_hash = ? AND refs = ?`,
			string(info.Path), info.NarHash.String(), refs).Scan(&id); err != nil {
			return fmt.Errorf("registering %s: %w", info.Path, err)
		}
		if info.Ultimate {
			// The farm built what an account had uploaded: the same
			// bytes, now known to be the build's.
			if _, err := tx.ExecContext(ctx, `UPDATE objects SET ultimate = 1,
				sigs = CASE WHEN sigs = '' THEN ? ELSE sigs END,
				worker = CASE WHEN worker = '' THEN ? ELSE worker END WHERE id = ?`, sigs, info.Worker, id); err != nil {
				return fmt.Errorf("registering %s: %w", info.Path, err)
			}
		} else if sigs != "" {
			// The farm vouches for contents it already held (a path
			// fetched from an upstream cache that an account uploaded).
			if _, err := tx.ExecContext(ctx, `UPDATE objects SET sigs = CASE WHEN sigs = '' THEN ? ELSE sigs END WHERE id = ?`, sigs, id); err != nil {
				return fmt.Errorf("registering %s: %w", info.Path, err)
			}
		}
	}
	if info.Ultimate {
		how = "built"
	}
	var viewSigs string
	if !info.Ultimate {
		viewSigs = strings.Join(validSigs(info.Sigs), " ")
	} else if !info.Sign {
		viewSigs = s.accountSig(v.account, info.Path, info.NarHash, info.NarSize, info.References)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO views (account, path, object, sigs, deriver, how, added)
		VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(account, path) DO NOTHING`,
		v.account, string(info.Path), id, viewSigs, string(info.Deriver), how, info.RegistrationTime.Unix()); err != nil {
		return fmt.Errorf("registering %s: %w", info.Path, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("registering %s: %w", info.Path, err)
	}
	s.changed()
	if created {
		s.syncBehind(id, blobKey(info.NarHash))
	}
	return nil
}

// validSigs drops signatures that could not be stored (empty, or with
// the separator in them).
func validSigs(sigs []string) []string {
	var out []string
	for _, sig := range sigs {
		if sig != "" && !strings.ContainsAny(sig, " \n") && !slices.Contains(out, sig) {
			out = append(out, sig)
		}
	}
	return out
}

func jsonList(ps []storepath.Path) string {
	b, _ := json.Marshal(storepath.Strings(ps))
	return string(b)
}

func dedup(ps []storepath.Path) map[storepath.Path]bool {
	m := make(map[storepath.Path]bool, len(ps))
	for _, p := range ps {
		m[p] = true
	}
	return m
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

// accountSig signs a path with the account's own key ("" if none).
func (s *Local) accountSig(account string, p storepath.Path, narHash nixhash.Hash, narSize uint64, refs []storepath.Path) string {
	if s.AccountKey == nil {
		return ""
	}
	k := s.AccountKey(account)
	if k == nil {
		return ""
	}
	return k.Sign(signature.Fingerprint(p, narHash, narSize, refs))
}
