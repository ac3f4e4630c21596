package store

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/blob"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Durability. A path is registered as soon as its NAR blob is complete,
// and its blob is synced to disk behind it, so that no upload waits for
// the disk. Until then the path is listed in the unsynced table, written
// in the same transaction as the path itself: if the registration
// survives a crash, so does the entry, and Recover checks the blob
// against its NAR hash before the store serves anything.
//
// Blobs are synced SyncDelay after registration. By then the kernel has
// usually written them back on its own (Linux does within 30 s), so the
// fsync only confirms it. Syncing at once instead forces the writeback
// of everything dirty on the file system (ext4 commits other files' data
// with the journal), which throttled the workers' own Nix stores.

// DefaultSyncDelay is Local.SyncDelay's default.
const DefaultSyncDelay = 30 * time.Second

// syncer syncs registered blobs in batches, in the background.
type syncer struct {
	mu       sync.Mutex
	pending  []syncItem // in order of registration
	running  bool
	flushing int           // Flush calls waiting: sync everything now
	wake     chan struct{} // interrupts the wait for the next item due
	idle     *sync.Cond    // signalled when pending is empty and nothing runs
	err      error         // the last failure, for Flush
}

type syncItem struct {
	id  int64
	key string
	due time.Time
}

func (s *Local) syncBehind(id int64, key string) {
	y := &s.sync
	y.mu.Lock()
	defer y.mu.Unlock()
	y.pending = append(y.pending, syncItem{id, key, time.Now().Add(s.SyncDelay)})
	if !y.running {
		y.running = true
		go s.syncLoop()
	}
}

func (s *Local) syncLoop() {
	y := &s.sync
	y.mu.Lock()
	for len(y.pending) > 0 {
		n := len(y.pending)
		if y.flushing == 0 {
			now := time.Now()
			n, _ = slices.BinarySearchFunc(y.pending, now, func(it syncItem, t time.Time) int { return it.due.Compare(t) })
			if n == 0 {
				wait := y.pending[0].due.Sub(now)
				y.mu.Unlock()
				select {
				case <-time.After(wait):
				case <-y.wake:
				}
				y.mu.Lock()
				continue
			}
		}
		batch := y.pending[:n:n]
		y.pending = y.pending[n:]
		y.mu.Unlock()
		err := s.syncBatch(batch)
		y.mu.Lock()
		if err != nil {
			// The entries stay, so the next start checks these blobs. A
			// failed fsync may have dropped the data: retrying it could
			// report success over a loss.
			y.err = err
			if s.Log != nil {
				s.Log.Error("NARs may not be on disk; they will be checked at the next start", "err", err)
			}
		}
	}
	y.running = false
	y.idle.Broadcast()
	y.mu.Unlock()
}

func (s *Local) syncBatch(batch []syncItem) error {
	ctx := context.Background()
	keys := make([]string, len(batch))
	ids := make([]int64, len(batch))
	for i, it := range batch {
		keys[i], ids[i] = it.key, it.id
	}
	if err := s.blobs.Sync(ctx, keys); err != nil {
		return fmt.Errorf("syncing %d NARs to disk: %w", len(keys), err)
	}
	list, _ := json.Marshal(ids)
	if _, err := s.db.ExecContext(ctx, `DELETE FROM unsynced_objects WHERE object IN (SELECT value FROM json_each(?))`, string(list)); err != nil {
		return fmt.Errorf("recording synced NARs: %w", err)
	}
	return nil
}

// Flush syncs every path registered so far now, and reports a failure to
// sync any of them since the last Flush.
func (s *Local) Flush(ctx context.Context) error {
	y := &s.sync
	stop := context.AfterFunc(ctx, func() {
		y.mu.Lock()
		y.idle.Broadcast()
		y.mu.Unlock()
	})
	defer stop()
	y.mu.Lock()
	defer y.mu.Unlock()
	y.flushing++
	defer func() { y.flushing-- }()
	select {
	case y.wake <- struct{}{}:
	default:
	}
	for (y.running || len(y.pending) > 0) && ctx.Err() == nil {
		y.idle.Wait()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err := y.err
	y.err = nil
	return err
}

// Recovery is what Recover found.
type Recovery struct {
	// Checked counts the paths whose blobs were not known to be on disk.
	Checked int
	// Removed lists the paths unregistered because their blob was
	// damaged or missing, with the paths that refer to them.
	Removed []storepath.Path
	// Orphans counts the blobs removed because no path named them.
	Orphans int
}

// Recover checks the blobs of paths registered but not known to be on
// disk, as after a crash: each must hash to its path's NAR hash. A blob
// that does not is removed, with every path whose NAR it is and every
// path that refers to those, so the store never serves a damaged NAR or
// an incomplete closure. Blobs that no registered path names, left by a
// crash or a failed add between the commit of a blob and the
// registration of its path, are removed too: they were never checked,
// and a later add of the same NAR would adopt them. Call it before
// serving: it would remove the blobs of adds in progress.
func (s *Local) Recover(ctx context.Context) (Recovery, error) {
	var rec Recovery
	rows, err := s.db.QueryContext(ctx, `SELECT u.object, u.blob, o.nar_hash, o.nar_size FROM unsynced_objects u JOIN objects o ON o.id = u.object`)
	if err != nil {
		return rec, fmt.Errorf("listing unsynced paths: %w", err)
	}
	type entry struct {
		id           int64
		key, narHash string
		narSize      int64
	}
	var entries []entry
	for rows.Next() {
		var e entry
		if err := rows.Scan(&e.id, &e.key, &e.narHash, &e.narSize); err != nil {
			rows.Close()
			return rec, fmt.Errorf("listing unsynced paths: %w", err)
		}
		entries = append(entries, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return rec, fmt.Errorf("listing unsynced paths: %w", err)
	}
	rec.Checked = len(entries)
	var good []syncItem
	intact := map[string]bool{}    // blob key: whether it holds its NAR
	damaged := map[string]string{} // blob key: NAR hash
	for _, e := range entries {
		ok, checked := intact[e.key]
		if !checked {
			ok, err = s.blobMatches(ctx, e.key, e.narHash, e.narSize)
			if err != nil {
				return rec, err
			}
			intact[e.key] = ok
		}
		if ok {
			good = append(good, syncItem{id: e.id, key: e.key})
		} else {
			damaged[e.key] = e.narHash
		}
	}
	for key, narHash := range damaged {
		// The blob goes first: left behind its paths, it would be adopted
		// by the next add of the same NAR. If its paths stay registered
		// instead, the next Recover finds the blob missing.
		if err := s.blobs.Remove(ctx, key); err != nil {
			return rec, fmt.Errorf("removing damaged NAR %s: %w", key, err)
		}
		removed, err := s.unregisterBlob(ctx, key, narHash)
		if err != nil {
			return rec, err
		}
		rec.Removed = append(rec.Removed, removed...)
	}
	if rec.Orphans, err = s.removeOrphans(ctx); err != nil {
		return rec, err
	}
	if len(good) > 0 {
		if err := s.syncBatch(good); err != nil {
			return rec, err
		}
	}
	return rec, nil
}

// blobMatches reports whether the blob under key hashes to narHash in
// narSize bytes; a missing blob does not. Failures to read it are errors,
// not damage: they may pass.
func (s *Local) blobMatches(ctx context.Context, key, narHash string, narSize int64) (bool, error) {
	want, err := nixhash.Parse(narHash)
	if err != nil {
		return false, fmt.Errorf("checking NAR %s: stored hash: %w", key, err)
	}
	r, err := s.blobs.Open(ctx, key)
	if errors.Is(err, blob.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("checking NAR %s: %w", key, err)
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return false, fmt.Errorf("checking NAR %s: %w", key, err)
	}
	return n == narSize && want.Equal(nixhash.FromDigest(nixhash.SHA256, h)), nil
}

// removeOrphans removes the blobs that no registered path names, and
// returns how many it removed.
func (s *Local) removeOrphans(ctx context.Context) (int, error) {
	keys, err := s.blobs.Keys(ctx)
	if err != nil {
		return 0, err
	}
	orphans := make(map[string]bool, len(keys))
	for _, key := range keys {
		orphans[key] = true
	}
	rows, err := s.db.QueryContext(ctx, `SELECT DISTINCT nar_hash FROM objects`)
	if err != nil {
		return 0, fmt.Errorf("listing the NARs of registered paths: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var narHash string
		if err := rows.Scan(&narHash); err != nil {
			return 0, fmt.Errorf("listing the NARs of registered paths: %w", err)
		}
		h, err := nixhash.Parse(narHash)
		if err != nil {
			return 0, fmt.Errorf("stored NAR hash %q: %w", narHash, err)
		}
		delete(orphans, blobKey(h))
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("listing the NARs of registered paths: %w", err)
	}
	rows.Close()
	for key := range orphans {
		if err := s.blobs.Remove(ctx, key); err != nil {
			return 0, fmt.Errorf("removing unregistered NAR %s: %w", key, err)
		}
	}
	return len(orphans), nil
}

// unregisterBlob unregisters every path whose NAR is the blob key (of NAR
// hash narHash), and every path that refers to one of them, directly or
// not.
func (s *Local) unregisterBlob(ctx context.Context, key, narHash string) ([]storepath.Path, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	// Referrers are found by path name, in every account's view: an
	// object referring to a doomed path goes whichever version of it its
	// viewers hold, so no view is left with a hole in a closure.
	rows, err := tx.QueryContext(ctx, `WITH RECURSIVE doomed(id) AS (
			SELECT object FROM unsynced_objects WHERE blob = ?
			UNION SELECT id FROM objects WHERE nar_hash = ?
			UNION SELECT r.object FROM doomed x JOIN objects d ON d.id = x.id JOIN object_refs r ON r.reference = d.path
		) SELECT id, path FROM objects WHERE id IN doomed`, key, narHash)
	if err != nil {
		return nil, fmt.Errorf("finding the paths of damaged NAR %s: %w", key, err)
	}
	var ids []int64
	var paths []storepath.Path
	for rows.Next() {
		var id int64
		var p string
		if err := rows.Scan(&id, &p); err != nil {
			rows.Close()
			return nil, err
		}
		ids = append(ids, id)
		paths = append(paths, storepath.Path(p))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	list, _ := json.Marshal(ids)
	// Views, references, shares and unsynced entries of the objects go
	// with them (ON DELETE CASCADE).
	for _, q := range []string{
		`DELETE FROM objects WHERE id IN (SELECT value FROM json_each(?))`,
	} {
		if _, err := tx.ExecContext(ctx, q, string(list)); err != nil {
			return nil, fmt.Errorf("unregistering the paths of damaged NAR %s: %w", key, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	s.changed()
	return paths, nil
}
