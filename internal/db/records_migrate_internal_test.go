package db

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
)

// Builds recorded before the build records (migration 9) get a record
// status from Nix's, and their worker as the workers tried.
func TestMigrationToBuildRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nixfarm.db")
	old, err := sql.Open("sqlite", "file:"+path+"?_pragma=foreign_keys(1)")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range migrations[:8] {
		if _, err := old.Exec(m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := old.Exec(`PRAGMA user_version = 8`); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for i, tc := range []struct {
		status, stopped int
		worker, want    string
	}{
		{0, 5, "local", "built"}, {1, 5, "", "substituted"}, {2, 5, "", "cached"}, {8, 5, "w", "timed-out"},
		{3, 5, "w", "failed"}, {9, 5, "", "failed"}, {9, 0, "", "infrastructure-error"},
	} {
		drv := "/nix/store/x" + string(rune('a'+i)) + ".drv"
		if _, err := old.Exec(`INSERT INTO builds (drv_path, account, worker, status, queued_at, stopped_at) VALUES (?, 'alice', ?, ?, 1, ?)`,
			drv, tc.worker, tc.status, tc.stopped); err != nil {
			t.Fatal(err)
		}
		want[drv] = tc.want + " " + tc.worker
	}
	old.Close()

	d, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	rows, err := d.Query(`SELECT drv_path, record_status, workers FROM builds`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var drv, status, workers string
		if err := rows.Scan(&drv, &status, &workers); err != nil {
			t.Fatal(err)
		}
		if got := status + " " + workers; got != want[drv] {
			t.Errorf("%s: %q, want %q", drv, got, want[drv])
		}
		n++
	}
	if n != len(want) {
		t.Errorf("%d builds after the migration, want %d", n, len(want))
	}
}
