package db

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
)

// A database from before per-account views keeps every path visible to
// every account it knew, so that no closure loses a path another account
// uploaded (bob's path refers to alice's).
func TestMigrationToViewsKeepsClosures(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "nixfarm.db")
	old, err := sql.Open("sqlite", "file:"+path+"?_pragma=foreign_keys(1)")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range migrations[:2] {
		if _, err := old.Exec(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{
		`PRAGMA user_version = 2`,
		`INSERT INTO paths (id, path, hash_part, nar_hash, nar_size, registration_time, account, deriver, sigs)
			VALUES (1, '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'sha256:x', 1, 10, 'alice', '/nix/store/d-a.drv', 'k:s')`,
		`INSERT INTO paths (id, path, hash_part, nar_hash, nar_size, registration_time, account)
			VALUES (2, '/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 'sha256:y', 1, 11, 'bob')`,
		`INSERT INTO refs (referrer, reference) VALUES (2, 1)`,
		`INSERT INTO unsynced (path_id, blob) VALUES (2, 'blob-b')`,
		`INSERT INTO builds (drv_path, account, status, queued_at) VALUES ('/nix/store/x.drv', 'carol', 0, 0)`,
	} {
		if _, err := old.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	old.Close()

	d, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, account := range []string{"alice", "bob", "carol"} {
		var n int
		if err := d.QueryRow(`SELECT count(*) FROM views WHERE account = ?`, account).Scan(&n); err != nil || n != 2 {
			t.Errorf("%s sees %d paths (%v), want both", account, n, err)
		}
	}
	var refs, deriver, sigs string
	if err := d.QueryRow(`SELECT o.refs, v.deriver, v.sigs FROM objects o JOIN views v ON v.object = o.id
		WHERE o.id = 2 AND v.account = 'bob'`).Scan(&refs, &deriver, &sigs); err != nil || refs != "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a" {
		t.Errorf("bob's path refers to %q (%v)", refs, err)
	}
	if err := d.QueryRow(`SELECT v.deriver, v.sigs FROM views v WHERE v.account = 'carol' AND v.path LIKE '%-a'`).Scan(&deriver, &sigs); err != nil || deriver != "/nix/store/d-a.drv" || sigs != "k:s" {
		t.Errorf("alice's path as carol sees it: deriver %q, sigs %q (%v)", deriver, sigs, err)
	}
	var blob string
	if err := d.QueryRow(`SELECT blob FROM unsynced_objects WHERE object = 2`).Scan(&blob); err != nil || blob != "blob-b" {
		t.Errorf("unsynced: %q %v", blob, err)
	}
}
