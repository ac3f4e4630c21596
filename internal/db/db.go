// Package db opens the farm's SQLite database and keeps its schema current.
//
// The database holds path metadata for the farm store and the record of
// every build. It uses modernc.org/sqlite, so nixfarm needs no cgo.
package db

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// migrations are applied in order; the database's user_version records how
// many have run. Never edit a migration that has shipped: append a new one.
var migrations = []string{
	`CREATE TABLE paths (
		id INTEGER PRIMARY KEY,
		path TEXT NOT NULL UNIQUE,
		hash_part TEXT NOT NULL UNIQUE,
		nar_hash TEXT NOT NULL,
		nar_size INTEGER NOT NULL,
		deriver TEXT NOT NULL DEFAULT '',
		ca TEXT NOT NULL DEFAULT '',
		sigs TEXT NOT NULL DEFAULT '',
		ultimate INTEGER NOT NULL DEFAULT 0,
		registration_time INTEGER NOT NULL,
		account TEXT NOT NULL DEFAULT ''
	);
	CREATE TABLE refs (
		referrer INTEGER NOT NULL REFERENCES paths(id) ON DELETE CASCADE,
		reference INTEGER NOT NULL REFERENCES paths(id) ON DELETE RESTRICT,
		PRIMARY KEY (referrer, reference)
	) WITHOUT ROWID;
	CREATE INDEX refs_reference ON refs(reference);
	CREATE TABLE builds (
		id INTEGER PRIMARY KEY,
		drv_path TEXT NOT NULL,
		account TEXT NOT NULL,
		worker TEXT NOT NULL DEFAULT '',
		status INTEGER NOT NULL,
		error TEXT NOT NULL DEFAULT '',
		outputs TEXT NOT NULL DEFAULT '',
		queued_at INTEGER NOT NULL,
		started_at INTEGER NOT NULL DEFAULT 0,
		stopped_at INTEGER NOT NULL DEFAULT 0,
		log_bytes INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX builds_drv_path ON builds(drv_path);`,
	// Paths whose NAR blob may not be on disk yet: registered with the
	// path, removed once the blob is synced, checked after a crash.
	`CREATE TABLE unsynced (
		path_id INTEGER PRIMARY KEY REFERENCES paths(id) ON DELETE CASCADE,
		blob TEXT NOT NULL
	);`,
	// Worker credentials: one secret per agent name, stored as its
	// SHA-256; revoked ones are kept (revoked_at set) for the listing.
	`CREATE TABLE worker_credentials (
		id INTEGER PRIMARY KEY,
		name TEXT NOT NULL,
		secret_hash TEXT NOT NULL UNIQUE,
		created_at INTEGER NOT NULL,
		revoked_at INTEGER NOT NULL DEFAULT 0,
		last_seen_at INTEGER NOT NULL DEFAULT 0
	);
	CREATE UNIQUE INDEX worker_credentials_active ON worker_credentials(name) WHERE revoked_at = 0;`,
}

const maxConns = 8

// Open opens (creating if needed) the SQLite database at path and applies
// pending migrations. Writers take the lock at BEGIN, so concurrent write
// transactions queue instead of failing.
func Open(ctx context.Context, path string) (*sql.DB, error) {
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Set("_txlock", "immediate")
	dsn := "file:" + path + "?" + q.Encode()
	d, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening database %s: %w", path, err)
	}
	// Opening a connection costs as much as hundreds of queries (the
	// pragmas, the schema read), so connections are kept, not churned.
	// SQLite takes one writer at a time anyway; a few connections let
	// readers run beside it.
	d.SetMaxOpenConns(maxConns)
	d.SetMaxIdleConns(maxConns)
	if err := migrate(ctx, d); err != nil {
		d.Close()
		return nil, fmt.Errorf("migrating database %s: %w", path, err)
	}
	return d, nil
}

func migrate(ctx context.Context, d *sql.DB) error {
	tx, err := d.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var version int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this nixfarm (%d): refusing to touch it", version, len(migrations))
	}
	for i := version; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(migrations))); err != nil {
		return err
	}
	return tx.Commit()
}
