package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Views gives each account its view of the farm store.
type Views interface {
	// For returns account's view: every operation of the Store it
	// returns sees only the paths that account may see, with the
	// contents that account sees, and answers for any other path as if
	// it did not exist.
	For(account string) Store
}

// UpstreamAccount owns the view that paths fetched from upstream binary
// caches are registered in, and PublicAccount the view anonymous readers
// of the farm's binary cache see (--public-cache). Neither is an account:
// their names hold a space, which no account name can (an SSH key's
// comment names its account with one word). Accounts see what the
// upstream view holds through the signatures they trust (signed.go).
const (
	UpstreamAccount = " upstream"
	PublicAccount   = " public"
)

// View is one account's view of a Local store. A path is in it when the
// account uploaded it, the farm built it for the account, or the farm
// shared with the account a build whose inputs were byte-identical.
type View struct {
	s       *Local
	account string
	limit   int64 // largest NAR the account may add; 0: no limit
	// trusted are the keys whose signatures make a path visible
	// (signed.go).
	trusted []signature.PublicKey
}

var (
	_ Store    = (*View)(nil)
	_ Expecter = (*View)(nil)
)

// Account is the account whose view this is.
func (v *View) Account() string { return v.account }

// WithMaxNarSize returns a copy of v that refuses NARs larger than n
// bytes with ErrTooLarge (n <= 0: no limit).
func (v *View) WithMaxNarSize(n int64) *View {
	c := *v
	c.limit = n
	return &c
}

// infoColumns are a path's info as one view sees it. What the view row
// holds is the account's own: when it got the path, its deriver, its
// signatures. The farm's signature and "built here" show only where the
// account got the path from the farm (built, shared, signed), not where
// it uploaded the same bytes: they would tell it that another account
// holds them.
const infoColumns = `o.id, v.path, o.nar_hash, o.nar_size, o.refs, v.deriver, o.ca,
	CASE WHEN v.how = 'upload' THEN '' ELSE o.sigs END, v.sigs,
	o.ultimate AND v.how != 'upload', v.added, o.account, o.worker`

// infoQuery is one path's info in one view (account, path).
const infoQuery = `SELECT ` + infoColumns + ` FROM views v JOIN objects o ON o.id = v.object WHERE v.account = ? AND v.path = ?`

// infoByHashPartQuery is the info of the path with a hash part in one
// view (account, the bounds of the paths with that hash part).
const infoByHashPartQuery = `SELECT ` + infoColumns + ` FROM views v JOIN objects o ON o.id = v.object
	WHERE v.account = ? AND v.path > ? AND v.path < ? LIMIT 1`

type scanner interface{ Scan(dest ...any) error }

func scanInfo(row scanner) (int64, *PathInfo, error) {
	var (
		id                        int64
		path, hash, refs, deriver string
		ca, osigs, vsigs, account string
		worker                    string
		size, regTime             int64
		ultimate                  bool
	)
	if err := row.Scan(&id, &path, &hash, &size, &refs, &deriver, &ca, &osigs, &vsigs, &ultimate, &regTime, &account, &worker); err != nil {
		return 0, nil, err
	}
	h, err := nixhash.Parse(hash)
	if err != nil {
		return 0, nil, fmt.Errorf("stored hash of %s: %w", path, err)
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
		Worker:           worker,
	}
	for _, f := range strings.Fields(refs) {
		info.References = append(info.References, storepath.Path(f))
	}
	info.Sigs = append(strings.Fields(osigs), strings.Fields(vsigs)...)
	return id, info, nil
}

// QueryPathInfo implements Store.
func (v *View) QueryPathInfo(ctx context.Context, p storepath.Path) (*PathInfo, error) {
	// An expected path is looked up first: it stops being expected only
	// after it is registered, so one or the other always answers.
	if in := v.s.lookupIncoming(v.account, p); in != nil {
		return in.declared(), nil
	}
	return v.registeredInfo(ctx, p)
}

// registeredInfo returns the info of a registered path, or ErrNotFound.
func (v *View) registeredInfo(ctx context.Context, p storepath.Path) (*PathInfo, error) {
	query := func() (*PathInfo, error) {
		_, info, err := scanInfo(v.s.queryRow(ctx, infoQuery, v.account, string(p)))
		return info, err
	}
	info, err := query()
	if errors.Is(err, sql.ErrNoRows) && len(v.trusted) > 0 {
		// Not in the view yet; perhaps signed by a key it trusts.
		if err := v.adoptSigned(ctx, []storepath.Path{p}); err != nil {
			return nil, err
		}
		info, err = query()
	}
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, p)
	}
	if err != nil {
		return nil, fmt.Errorf("querying %s: %w", p, err)
	}
	return info, nil
}

// QueryPathFromHashPart implements Store.
func (v *View) QueryPathFromHashPart(ctx context.Context, hashPart string) (storepath.Path, error) {
	if len(hashPart) != storepath.HashLen {
		return "", fmt.Errorf("%w: no path has hash part %q", ErrNotFound, hashPart)
	}
	// Paths with this hash part sort between "<dir>/<hash>-" and
	// "<dir>/<hash>." ('.' follows '-').
	prefix := storepath.Dir + "/" + hashPart
	var p string
	query := func() error {
		return v.s.queryRow(ctx, `SELECT path FROM views WHERE account = ? AND path > ? AND path < ? LIMIT 1`,
			v.account, prefix+"-", prefix+".").Scan(&p)
	}
	err := query()
	if errors.Is(err, sql.ErrNoRows) && len(v.trusted) > 0 {
		// A path the view lacks may be signed by a key it trusts (a binary
		// cache client asks by hash part).
		var cands []storepath.Path
		rows, qerr := v.s.db.QueryContext(ctx, `SELECT DISTINCT path FROM objects WHERE path > ? AND path < ? LIMIT ?`,
			prefix+"-", prefix+".", maxSignedVersions)
		if qerr != nil {
			return "", fmt.Errorf("querying hash part %s: %w", hashPart, qerr)
		}
		if cands, qerr = scanPaths(rows); qerr != nil {
			return "", fmt.Errorf("querying hash part %s: %w", hashPart, qerr)
		}
		if len(cands) > 0 {
			if err := v.adoptSigned(ctx, cands); err != nil {
				return "", err
			}
			err = query()
		}
	}
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("%w: no path has hash part %q", ErrNotFound, hashPart)
	}
	if err != nil {
		return "", fmt.Errorf("querying hash part %s: %w", hashPart, err)
	}
	return storepath.Path(p), nil
}

// QueryPathInfoFromHashPart is QueryPathFromHashPart and QueryPathInfo
// in one query, for the binary cache's narinfos: a path the view holds is
// one point lookup.
func (v *View) QueryPathInfoFromHashPart(ctx context.Context, hashPart string) (*PathInfo, error) {
	if len(hashPart) != storepath.HashLen {
		return nil, fmt.Errorf("%w: no path has hash part %q", ErrNotFound, hashPart)
	}
	prefix := storepath.Dir + "/" + hashPart
	_, info, err := scanInfo(v.s.queryRow(ctx, infoByHashPartQuery, v.account, prefix+"-", prefix+"."))
	if errors.Is(err, sql.ErrNoRows) {
		// Being copied in, or visible by a trusted signature.
		p, err := v.QueryPathFromHashPart(ctx, hashPart)
		if err != nil {
			return nil, err
		}
		return v.QueryPathInfo(ctx, p)
	}
	if err != nil {
		return nil, fmt.Errorf("querying hash part %s: %w", hashPart, err)
	}
	return info, nil
}

// ValidPaths implements Store.
func (v *View) ValidPaths(ctx context.Context, ps []storepath.Path) ([]storepath.Path, error) {
	if err := v.adoptSigned(ctx, ps); err != nil {
		return nil, err
	}
	return v.validPaths(ctx, ps)
}

// validPaths is ValidPaths without adopting signed paths.
func (v *View) validPaths(ctx context.Context, ps []storepath.Path) ([]storepath.Path, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	rows, err := v.s.query(ctx, `SELECT path FROM views WHERE account = ? AND path IN (SELECT value FROM json_each(?))`, v.account, jsonList(ps))
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

// closureQuery computes the closure of a JSON list of paths in the view
// of account (both bound twice: account, list).
const closureQuery = `WITH RECURSIVE closure(path) AS (
		SELECT value FROM json_each(?)
		UNION
		SELECT r.reference FROM closure c
		JOIN views v ON v.account = ? AND v.path = c.path
		JOIN object_refs r ON r.object = v.object
	)`

// Closure implements Store.
func (v *View) Closure(ctx context.Context, ps []storepath.Path) ([]storepath.Path, error) {
	infos, err := v.ClosureInfos(ctx, ps)
	if err != nil {
		return nil, err
	}
	out := make([]storepath.Path, len(infos))
	for i, info := range infos {
		out[i] = info.Path
	}
	return out, nil
}

// ClosureInfos is Closure with the info of every path, in path order.
func (v *View) ClosureInfos(ctx context.Context, ps []storepath.Path) ([]*PathInfo, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	valid, err := v.ValidPaths(ctx, ps)
	if err != nil {
		return nil, err
	}
	if err := missing(ps, valid); err != nil {
		return nil, err
	}
	rows, err := v.s.db.QueryContext(ctx, closureQuery+`
		SELECT `+infoColumns+` FROM closure c
		JOIN views v ON v.account = ? AND v.path = c.path
		JOIN objects o ON o.id = v.object
		ORDER BY c.path`, jsonList(ps), v.account, v.account)
	if err != nil {
		return nil, fmt.Errorf("computing closure: %w", err)
	}
	defer rows.Close()
	var out []*PathInfo
	for rows.Next() {
		_, info, err := scanInfo(rows)
		if err != nil {
			return nil, fmt.Errorf("computing closure: %w", err)
		}
		out = append(out, info)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("computing closure: %w", err)
	}
	// A view is closed under references; a hole is reported, not skipped.
	have := make(map[storepath.Path]bool, len(out))
	for _, info := range out {
		have[info.Path] = true
	}
	for _, info := range out {
		for _, r := range info.References {
			if !have[r] {
				return nil, fmt.Errorf("%w: %s, a reference of %s", ErrNotFound, r, info.Path)
			}
		}
	}
	return out, nil
}

// missing returns ErrNotFound naming the first of ps not in valid.
func missing(ps, valid []storepath.Path) error {
	if len(valid) == len(dedup(ps)) {
		return nil
	}
	have := dedup(valid)
	for _, p := range ps {
		if !have[p] {
			return fmt.Errorf("%w: %s", ErrNotFound, p)
		}
	}
	return nil
}

// Referrers implements Store.
func (v *View) Referrers(ctx context.Context, p storepath.Path) ([]storepath.Path, error) {
	rows, err := v.s.db.QueryContext(ctx, `
		SELECT v.path FROM object_refs r
		JOIN views v ON v.object = r.object AND v.account = ?
		WHERE r.reference = ? ORDER BY v.path`, v.account, string(p))
	if err != nil {
		return nil, fmt.Errorf("querying referrers of %s: %w", p, err)
	}
	return scanPaths(rows)
}

// NarFromPath implements Store. The NAR of a path being added after
// Expect is followed as it arrives.
func (v *View) NarFromPath(ctx context.Context, p storepath.Path) (io.ReadCloser, *PathInfo, error) {
	if rc, info, ok := v.s.followIncoming(ctx, v, p); ok { // first, as in QueryPathInfo
		return rc, info, nil
	}
	return v.registeredNar(ctx, p)
}

// registeredNar opens the NAR of a registered path.
func (v *View) registeredNar(ctx context.Context, p storepath.Path) (io.ReadCloser, *PathInfo, error) {
	info, err := v.registeredInfo(ctx, p)
	if err != nil {
		return nil, nil, err
	}
	r, err := v.s.blobs.Open(ctx, blobKey(info.NarHash))
	if err != nil {
		return nil, nil, fmt.Errorf("opening NAR of %s: %w", p, err)
	}
	return r, info, nil
}

// AddToStore implements Store.
func (v *View) AddToStore(ctx context.Context, info *PathInfo, narSrc io.Reader) (err error) {
	if in := v.s.claimIncoming(v.account, info.Path); in != nil {
		defer func() { v.s.finishIncoming(in, err) }()
		return v.s.addToStore(ctx, v, info, narSrc, in)
	}
	return v.s.addToStore(ctx, v, info, narSrc, nil)
}

// Expect implements Expecter.
func (v *View) Expect(infos []*PathInfo) (done func()) { return v.s.expect(v.account, infos) }

func (v *View) checkReferences(ctx context.Context, info *PathInfo) error {
	var others []storepath.Path
	for _, r := range info.References {
		if r != info.Path {
			others = append(others, r)
		}
	}
	valid, err := v.ValidPaths(ctx, others)
	if err != nil {
		return err
	}
	return missingReference(info, others, valid)
}

// checkReferencesTx is checkReferences inside the registering transaction.
func (v *View) checkReferencesTx(ctx context.Context, tx *sql.Tx, info *PathInfo) error {
	var others []storepath.Path
	for _, r := range info.References {
		if r != info.Path {
			others = append(others, r)
		}
	}
	if len(others) == 0 {
		return nil
	}
	rows, err := tx.QueryContext(ctx,
		`SELECT path FROM views WHERE account = ? AND path IN (SELECT value FROM json_each(?))`, v.account, jsonList(others))
	if err != nil {
		return fmt.Errorf("registering %s: %w", info.Path, err)
	}
	valid, err := scanPaths(rows)
	if err != nil {
		return fmt.Errorf("registering %s: %w", info.Path, err)
	}
	return missingReference(info, others, valid)
}

func missingReference(info *PathInfo, refs, valid []storepath.Path) error {
	if len(valid) == len(dedup(refs)) {
		return nil
	}
	have := dedup(valid)
	for _, r := range refs {
		if !have[r] {
			return fmt.Errorf("cannot add %s: %w: %s is not in the farm store (upload it first)", info.Path, ErrInvalidReference, r)
		}
	}
	return nil
}

// AddSignatures implements Store. The signatures are the account's: other
// accounts seeing the same contents do not see them.
func (v *View) AddSignatures(ctx context.Context, p storepath.Path, sigs []string) error {
	for _, sig := range sigs {
		if strings.ContainsAny(sig, " \n") || sig == "" {
			return publicerr.New("invalid signature %q", sig)
		}
	}
	// One write transaction (taken at BEGIN) reads and updates, so
	// concurrent additions all land.
	tx, err := v.s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("adding signatures to %s: %w", p, err)
	}
	defer tx.Rollback()
	var have string
	err = tx.QueryRowContext(ctx, `SELECT sigs FROM views WHERE account = ? AND path = ?`, v.account, string(p)).Scan(&have)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w: %s", ErrNotFound, p)
	}
	if err != nil {
		return fmt.Errorf("adding signatures to %s: %w", p, err)
	}
	merged := validSigs(append(strings.Fields(have), sigs...))
	if _, err := tx.ExecContext(ctx, `UPDATE views SET sigs = ? WHERE account = ? AND path = ?`,
		strings.Join(merged, " "), v.account, string(p)); err != nil {
		return fmt.Errorf("adding signatures to %s: %w", p, err)
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	v.s.changed()
	return nil
}
