package store_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

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
		if err := database.QueryRow(`SELECT count(*) FROM unsynced`).Scan(&n); err != nil {
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
	if _, err := database.Exec(`INSERT INTO unsynced (path_id, blob)
		SELECT id, ? FROM paths WHERE path = ? UNION ALL SELECT id, ? FROM paths WHERE path = ?
		UNION ALL SELECT id, ? FROM paths WHERE path = ? UNION ALL SELECT id, ? FROM paths WHERE path = ?`,
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
	database.QueryRow(`SELECT count(*) FROM unsynced`).Scan(&n)
	if n != 1 {
		t.Fatalf("%d unsynced paths, want 1 until the delay has passed", n)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	database.QueryRow(`SELECT count(*) FROM unsynced`).Scan(&n)
	if n != 0 {
		t.Fatalf("%d unsynced paths after Flush", n)
	}
}
