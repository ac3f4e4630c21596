package store_test

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/blob"
	"github.com/nixfarm/nixfarm/internal/db"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// Blobs are synced behind registration; after a crash, Recover drops the
// paths whose blob did not make it to disk, with the paths that refer to
// them, and keeps the rest.
func TestRecoverAfterCrash(t *testing.T) {
	ctx := context.Background()
	s, database, dir := testutil.Store(t)
	count := func() int {
		var n int
		if err := database.QueryRow(`SELECT count(*) FROM unsynced_objects`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	a := add(t, s, path("a", 'a'), "contents of a")
	b := add(t, s, path("b", 'b'), "contents of b", a.Path)
	c := add(t, s, path("c", 'c'), "contents of c")
	d := add(t, s, path("d", 'd'), "contents of d")
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Fatalf("%d paths still unsynced after Flush", n)
	}

	// The machine crashed before a, b, c and d were synced; a's blob was
	// lost, d's is missing.
	if _, err := database.Exec(`INSERT INTO unsynced_objects (object, blob)
		SELECT id, ? FROM objects WHERE path = ? UNION ALL SELECT id, ? FROM objects WHERE path = ?
		UNION ALL SELECT id, ? FROM objects WHERE path = ? UNION ALL SELECT id, ? FROM objects WHERE path = ?`,
		a.NarHash.Nix32(), string(a.Path), b.NarHash.Nix32(), string(b.Path),
		c.NarHash.Nix32(), string(c.Path), d.NarHash.Nix32(), string(d.Path)); err != nil {
		t.Fatal(err)
	}
	blobPath := func(key string) string { return filepath.Join(dir, "nar", key[:2], key) }
	if err := os.WriteFile(blobPath(a.NarHash.Nix32()), []byte("torn"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(blobPath(d.NarHash.Nix32())); err != nil {
		t.Fatal(err)
	}

	rec, err := s.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(rec.Removed)
	want := []storepath.Path{a.Path, b.Path, d.Path}
	slices.Sort(want)
	if rec.Checked != 4 || !slices.Equal(rec.Removed, want) {
		t.Fatalf("recovery %+v, want 4 checked and %v removed", rec, want)
	}
	valid, err := s.ValidPaths(ctx, []storepath.Path{a.Path, b.Path, c.Path, d.Path})
	if err != nil || !slices.Equal(valid, []storepath.Path{c.Path}) {
		t.Fatalf("valid after recovery: %v, %v", valid, err)
	}
	if _, err := os.Stat(blobPath(a.NarHash.Nix32())); !os.IsNotExist(err) {
		t.Fatalf("damaged blob kept: %v", err)
	}
	if n := count(); n != 0 {
		t.Fatalf("%d paths still unsynced after recovery", n)
	}
	// The lost paths can be uploaded again.
	add(t, s, a.Path, "contents of a")
	add(t, s, b.Path, "contents of b", a.Path)
}

// Blobs are synced SyncDelay after registration, or at once by Flush.
func TestSyncDelay(t *testing.T) {
	ctx := context.Background()
	s, database, _ := testutil.Store(t)
	s.SyncDelay = time.Hour
	add(t, s, path("late", 'l'), "synced late")
	var n int
	database.QueryRow(`SELECT count(*) FROM unsynced_objects`).Scan(&n)
	if n != 1 {
		t.Fatalf("%d unsynced paths, want 1 until the delay has passed", n)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	database.QueryRow(`SELECT count(*) FROM unsynced_objects`).Scan(&n)
	if n != 0 {
		t.Fatalf("%d unsynced paths after Flush", n)
	}
}

// faultyBlobs is a blob store whose Open and Remove fail on demand, and
// which counts Opens.
type faultyBlobs struct {
	blob.Store
	openErr, removeErr error
	opens              int
}

func (b *faultyBlobs) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	b.opens++
	if b.openErr != nil {
		return nil, b.openErr
	}
	return b.Store.Open(ctx, key)
}

func (b *faultyBlobs) Remove(ctx context.Context, key string) error {
	if b.removeErr != nil {
		return b.removeErr
	}
	return b.Store.Remove(ctx, key)
}

// faultyStore returns a store over faultyBlobs, its database and its
// directory.
func faultyStore(t *testing.T) (*testutil.TestStore, *sql.DB, string, *faultyBlobs) {
	t.Helper()
	dir := t.TempDir()
	database, err := db.Open(context.Background(), filepath.Join(dir, "nixfarm.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { database.Close() })
	d, err := blob.NewDir(filepath.Join(dir, "nar"))
	if err != nil {
		t.Fatal(err)
	}
	d.NoSync = true
	b := &faultyBlobs{Store: d}
	s := store.NewLocal(database, b)
	t.Cleanup(func() { s.Flush(context.Background()) })
	return &testutil.TestStore{Local: s, Store: s.For(testutil.Account)}, database, dir, b
}

// crashBefore marks paths unsynced, as a crash before their blobs were
// synced leaves them.
func crashBefore(t *testing.T, s *testutil.TestStore, database *sql.DB, infos ...*store.PathInfo) {
	t.Helper()
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, info := range infos {
		if _, err := database.Exec(`INSERT INTO unsynced_objects (object, blob) SELECT id, ? FROM objects WHERE path = ?`,
			info.NarHash.Nix32(), string(info.Path)); err != nil {
			t.Fatal(err)
		}
	}
}

func blobFile(dir string, h nixhash.Hash) string {
	key := h.Nix32()
	return filepath.Join(dir, "nar", key[:2], key)
}

// Blobs that no path names were never checked: Recover removes them, so
// that no later add adopts a damaged one.
func TestRecoverRemovesOrphanBlobs(t *testing.T) {
	ctx := context.Background()
	s, _, dir := testutil.Store(t)
	kept := add(t, s, path("kept", 'k'), "kept")
	orphan := nixhash.SHA256Of(fileNar(t, "never registered"))
	if err := os.MkdirAll(filepath.Dir(blobFile(dir, orphan)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blobFile(dir, orphan), []byte("torn"), 0o444); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(blobFile(dir, orphan)); !os.IsNotExist(err) {
		t.Fatalf("orphan blob kept: %v", err)
	}
	if _, err := os.Stat(blobFile(dir, kept.NarHash)); err != nil {
		t.Fatalf("registered blob removed: %v", err)
	}
}

// A damaged blob that cannot be removed keeps its paths registered and
// unsynced, so the next Recover checks it again.
func TestRecoverRemovesDamagedBlobBeforeItsPaths(t *testing.T) {
	ctx := context.Background()
	s, database, dir, b := faultyStore(t)
	a := add(t, s, path("a", 'a'), "contents of a")
	crashBefore(t, s, database, a)
	if err := os.Chmod(blobFile(dir, a.NarHash), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blobFile(dir, a.NarHash), []byte("torn"), 0o644); err != nil {
		t.Fatal(err)
	}
	b.removeErr = errors.New("disk gone read-only")
	if _, err := s.Recover(ctx); err == nil {
		t.Fatal("Recover succeeded without removing the damaged blob")
	}
	var n int
	if err := database.QueryRow(`SELECT count(*) FROM unsynced_objects`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d unsynced paths, %v; want the damaged one still listed", n, err)
	}
	b.removeErr = nil
	rec, err := s.Recover(ctx)
	if err != nil || !slices.Equal(rec.Removed, []storepath.Path{a.Path}) {
		t.Fatalf("second recovery: %+v, %v", rec, err)
	}
}

// Only a missing or mismatching blob is damaged: a failure to read it is
// an error, and unregisters nothing. A blob shared by paths is read once.
func TestRecoverReadErrors(t *testing.T) {
	ctx := context.Background()
	s, database, _, b := faultyStore(t)
	a := add(t, s, path("a", 'a'), "same")
	twin := add(t, s, path("twin", 't'), "same")
	crashBefore(t, s, database, a, twin)
	b.openErr = &fs.PathError{Op: "open", Path: a.NarHash.Nix32(), Err: syscall.EMFILE}
	if _, err := s.Recover(ctx); !errors.Is(err, syscall.EMFILE) {
		t.Fatalf("Recover: %v, want EMFILE", err)
	}
	if valid, _ := s.ValidPaths(ctx, []storepath.Path{a.Path, twin.Path}); len(valid) != 2 {
		t.Fatalf("valid after a read error: %v", valid)
	}
	b.openErr, b.opens = nil, 0
	rec, err := s.Recover(ctx)
	if err != nil || rec.Checked != 2 || len(rec.Removed) != 0 {
		t.Fatalf("recovery %+v, %v; want 2 checked, none removed", rec, err)
	}
	if b.opens != 1 {
		t.Fatalf("the shared blob was read %d times", b.opens)
	}
}
