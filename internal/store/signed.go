package store

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/nixfarm/nixfarm/internal/nixhash"

	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Visibility by signature. An account that trusts a key (`nixfarm
// accounts trust`) sees every path the farm holds with a valid signature
// by that key, whoever uploaded it: the signature vouches for the bytes,
// not the uploader. Such a path joins the account's view the first time
// the account asks for it, with its references (which must be signed by
// a trusted key too, or be in the view already), so the view stays
// closed under references.

// WithTrustedKeys returns a copy of v that also sees paths signed by one
// of keys.
func (v *View) WithTrustedKeys(keys []signature.PublicKey) *View {
	c := *v
	c.trusted = keys
	return &c
}

// maxSignedVersions bounds the contents of one path a lookup checks for a
// trusted signature: an account can upload any number of versions of a
// path, and must not make every other account's lookups slow.
const maxSignedVersions = 16

// maxSignedClosure bounds the paths one lookup adopts by signature.
const maxSignedClosure = 100_000

// adoptSigned adds to the view those of ps it lacks that the farm holds
// with a signature by a trusted key, with their references.
func (v *View) adoptSigned(ctx context.Context, ps []storepath.Path) error {
	if len(v.trusted) == 0 || len(ps) == 0 {
		return nil
	}
	have, err := v.validPaths(ctx, ps)
	if err != nil || len(have) == len(dedup(ps)) {
		return err
	}
	// The signed candidates, and their references, breadth first.
	type candidate struct {
		id   int64
		refs []storepath.Path
		sigs string // the signatures by trusted keys
	}
	cands := map[storepath.Path]candidate{}
	seen := dedup(have)
	var outside []storepath.Path // references that are no candidates
	queue := append([]storepath.Path(nil), ps...)
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		id, refs, sigs, ok, err := v.signedObject(ctx, p)
		if err != nil {
			return err
		}
		if !ok {
			outside = append(outside, p)
			continue
		}
		if len(cands) >= maxSignedClosure {
			return fmt.Errorf("the signed closure of %s has more than %d paths", ps[0], maxSignedClosure)
		}
		cands[p] = candidate{id, refs, sigs}
		for _, r := range refs {
			if r != p {
				queue = append(queue, r)
			}
		}
	}
	if len(cands) == 0 {
		return nil
	}
	inView, err := v.validPaths(ctx, outside)
	if err != nil {
		return err
	}
	ok := dedup(inView)
	for p := range cands {
		ok[p] = true
	}
	// A candidate with a reference the account cannot have stays out,
	// and so does everything referring to it.
	for changed := true; changed; {
		changed = false
		for p, c := range cands {
			if !ok[p] {
				continue
			}
			for _, r := range c.refs {
				if r != p && !ok[r] && !slices.Contains(have, r) {
					ok[p], changed = false, true
					break
				}
			}
		}
	}
	tx, err := v.s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("adopting signed paths: %w", err)
	}
	defer tx.Rollback()
	now := v.s.now().Unix()
	for p, c := range cands {
		if !ok[p] {
			continue
		}
		// The signatures that made the path visible go with it, so the
		// account's Nix, which trusts those keys, takes the path too.
		if _, err := tx.ExecContext(ctx, `INSERT INTO views (account, path, object, sigs, how, added)
			VALUES (?, ?, ?, ?, 'signed', ?) ON CONFLICT(account, path) DO NOTHING`, v.account, string(p), c.id, c.sigs, now); err != nil {
			return fmt.Errorf("adopting signed paths: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	v.s.changed()
	return nil
}

// signedObject finds an object of path p carrying a valid signature by a
// trusted key (its own, or one an account added to its view of it), and
// returns its id, references and the signatures by trusted keys.
func (v *View) signedObject(ctx context.Context, p storepath.Path) (int64, []storepath.Path, string, bool, error) {
	rows, err := v.s.db.QueryContext(ctx, `SELECT o.id, o.nar_hash, o.nar_size, o.refs,
			o.sigs || ' ' || COALESCE((SELECT group_concat(w.sigs, ' ') FROM views w WHERE w.object = o.id), '')
		FROM objects o WHERE o.path = ? ORDER BY o.id LIMIT ?`, string(p), maxSignedVersions)
	if err != nil {
		return 0, nil, "", false, fmt.Errorf("looking for signed contents of %s: %w", p, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id             int64
			hash, refsText string
			size           int64
			sigs           string
		)
		if err := rows.Scan(&id, &hash, &size, &refsText, &sigs); err != nil {
			return 0, nil, "", false, err
		}
		info, err := parseObject(p, hash, size, refsText)
		if err != nil {
			return 0, nil, "", false, err
		}
		fp := signature.Fingerprint(p, info.NarHash, info.NarSize, info.References)
		var good []string
		for _, sig := range strings.Fields(sigs) {
			if signature.VerifyAny(v.trusted, fp, []string{sig}) && !slices.Contains(good, sig) {
				good = append(good, sig)
			}
		}
		if len(good) > 0 {
			return id, info.References, strings.Join(good, " "), true, nil
		}
	}
	return 0, nil, "", false, rows.Err()
}

// parseObject reads an object's stored hash, size and references.
func parseObject(p storepath.Path, hash string, size int64, refs string) (*PathInfo, error) {
	h, err := nixhash.Parse(hash)
	if err != nil {
		return nil, fmt.Errorf("stored hash of %s: %w", p, err)
	}
	info := &PathInfo{Path: p, NarHash: h, NarSize: uint64(size)}
	for _, f := range strings.Fields(refs) {
		info.References = append(info.References, storepath.Path(f))
	}
	return info, nil
}
