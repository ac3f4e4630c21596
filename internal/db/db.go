// Package db opens the farm's SQLite database and keeps its schema current.
//
// The database holds the farm store's metadata (objects: one content of
// one store path; views: which object each account sees under each path;
// shares: the outputs of builds, by the contents of their inputs) and the
// record of every build. It uses modernc.org/sqlite, so nixfarm needs no cgo.
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
	// Per-account views over one store. An object is one content of one
	// store path (its NAR, and the references it declares); a view row
	// makes an object the account's version of that path. Builds' outputs
	// are recorded against the exact contents of their inputs (shares).
	`CREATE TABLE objects (
		id INTEGER PRIMARY KEY,
		path TEXT NOT NULL,
		nar_hash TEXT NOT NULL,
		nar_size INTEGER NOT NULL,
		refs TEXT NOT NULL DEFAULT '',
		deriver TEXT NOT NULL DEFAULT '',
		ca TEXT NOT NULL DEFAULT '',
		sigs TEXT NOT NULL DEFAULT '',
		ultimate INTEGER NOT NULL DEFAULT 0,
		registration_time INTEGER NOT NULL,
		account TEXT NOT NULL DEFAULT '',
		worker TEXT NOT NULL DEFAULT '',
		UNIQUE (path, nar_hash, refs)
	);
	INSERT INTO objects (id, path, nar_hash, nar_size, refs, deriver, ca, sigs, ultimate, registration_time, account)
		SELECT p.id, p.path, p.nar_hash, p.nar_size,
			COALESCE((SELECT group_concat(path, ' ') FROM (
				SELECT q.path FROM refs r JOIN paths q ON q.id = r.reference WHERE r.referrer = p.id ORDER BY q.path)), ''),
			p.deriver, p.ca, '', p.ultimate, p.registration_time, p.account
		FROM paths p;
	CREATE TABLE object_refs (
		object INTEGER NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
		reference TEXT NOT NULL,
		PRIMARY KEY (object, reference)
	) WITHOUT ROWID;
	CREATE INDEX object_refs_reference ON object_refs(reference);
	INSERT INTO object_refs (object, reference)
		SELECT r.referrer, q.path FROM refs r JOIN paths q ON q.id = r.reference;
	CREATE TABLE views (
		account TEXT NOT NULL,
		path TEXT NOT NULL,
		object INTEGER NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
		sigs TEXT NOT NULL DEFAULT '',
		deriver TEXT NOT NULL DEFAULT '',
		how TEXT NOT NULL,
		added INTEGER NOT NULL,
		PRIMARY KEY (account, path)
	) WITHOUT ROWID;
	CREATE INDEX views_object ON views(object);
	-- Before views, every account saw every path: each keeps seeing them
	-- all, so that no closure loses a path another account uploaded.
	INSERT INTO views (account, path, object, sigs, deriver, how, added)
		SELECT a.account, p.path, p.id, p.sigs, p.deriver, 'upload', p.registration_time
		FROM paths p CROSS JOIN (SELECT account FROM paths UNION SELECT account FROM builds) a;
	CREATE TABLE shares (
		build_key TEXT NOT NULL,
		output TEXT NOT NULL,
		object INTEGER NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
		worker TEXT NOT NULL DEFAULT '',
		account TEXT NOT NULL,
		deriver TEXT NOT NULL DEFAULT '',
		created INTEGER NOT NULL,
		PRIMARY KEY (build_key, output)
	) WITHOUT ROWID;
	CREATE INDEX shares_worker ON shares(worker);
	CREATE INDEX shares_object ON shares(object);
	CREATE TABLE unsynced_objects (
		object INTEGER PRIMARY KEY REFERENCES objects(id) ON DELETE CASCADE,
		blob TEXT NOT NULL
	);
	INSERT INTO unsynced_objects (object, blob) SELECT path_id, blob FROM unsynced;
	DROP TABLE unsynced;
	DROP TABLE refs;
	DROP TABLE paths;`,
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
	// accounts, keys and limits: the accounts an operator manages with
	// `nixfarm accounts`, their SSH keys (`nixfarm keys`) and the Nix
	// signing keys they trust. A NULL limit is the farm's default.
	`CREATE TABLE accounts (
		name TEXT PRIMARY KEY,
		created INTEGER NOT NULL,
		max_concurrent_builds INTEGER,
		max_queued_builds INTEGER,
		max_upload_size INTEGER,
		max_output_size INTEGER,
		max_log_size INTEGER,
		max_stored_bytes INTEGER
	) WITHOUT ROWID;
	CREATE TABLE keys (
		fingerprint TEXT PRIMARY KEY,
		account TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
		key TEXT NOT NULL,
		comment TEXT NOT NULL DEFAULT '',
		added INTEGER NOT NULL
	) WITHOUT ROWID;
	CREATE INDEX keys_account ON keys(account);
	CREATE TABLE trusted_keys (
		account TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
		key TEXT NOT NULL,
		added INTEGER NOT NULL,
		PRIMARY KEY (account, key)
	) WITHOUT ROWID;`,
	// 6: upstream caches. Every account trusts the keys the farm
	// substitutes with (serve --trusted-public-key) unless it narrows
	// that: a row here takes one of them away from it.
	`CREATE TABLE distrusted_keys (
		account TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
		key TEXT NOT NULL,
		added INTEGER NOT NULL,
		PRIMARY KEY (account, key)
	) WITHOUT ROWID;`,
	// 7: binary cache tokens (`nixfarm accounts token`): the SHA-256 (hex)
	// of each account's HTTP token for the binary cache, never the token.
	`CREATE TABLE cache_tokens (
		hash TEXT PRIMARY KEY,
		account TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
		created INTEGER NOT NULL,
		label TEXT NOT NULL DEFAULT ''
	) WITHOUT ROWID;
	CREATE INDEX cache_tokens_account ON cache_tokens(account);`,
	// 8: how many times each account name was removed, so that an account
	// made again under an old name gets a signing key of its own
	// (account/signing.go).
	`CREATE TABLE account_removals (
		name TEXT PRIMARY KEY,
		removals INTEGER NOT NULL
	) WITHOUT ROWID;`,
	// 9: build records (issue 14, package records): the key that asked,
	// what the build needed, the workers tried, the record's status
	// (records.Status: queued, running, built, failed, timed-out,
	// cancelled, infrastructure-error, substituted, cached), the outputs
	// with their NAR sizes (JSON), and columns for bytes moved and the
	// builder's CPU time and peak memory (0 until they are measured).
	`ALTER TABLE builds ADD COLUMN key_fingerprint TEXT NOT NULL DEFAULT '';
	ALTER TABLE builds ADD COLUMN system TEXT NOT NULL DEFAULT '';
	ALTER TABLE builds ADD COLUMN required_features TEXT NOT NULL DEFAULT '';
	ALTER TABLE builds ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE builds ADD COLUMN workers TEXT NOT NULL DEFAULT '';
	ALTER TABLE builds ADD COLUMN record_status TEXT NOT NULL DEFAULT '';
	ALTER TABLE builds ADD COLUMN output_sizes TEXT NOT NULL DEFAULT '';
	ALTER TABLE builds ADD COLUMN bytes_uploaded INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE builds ADD COLUMN bytes_downloaded INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE builds ADD COLUMN cpu_seconds REAL NOT NULL DEFAULT 0;
	ALTER TABLE builds ADD COLUMN peak_memory INTEGER NOT NULL DEFAULT 0;
	UPDATE builds SET workers = worker, attempts = (worker != ''), record_status = CASE
		WHEN stopped_at = 0 THEN 'infrastructure-error'
		WHEN status = 0 THEN 'built'
		WHEN status = 1 THEN 'substituted'
		WHEN status IN (2, 13) THEN 'cached'
		WHEN status = 8 THEN 'timed-out'
		ELSE 'failed' END;
	CREATE INDEX builds_account_id ON builds(account, id);
	CREATE INDEX builds_stopped_at ON builds(stopped_at);`,
	// 10 (issue 14, tokens): accounts' API tokens (`nixfarm tokens`): the
	// SHA-256 (hex) of each, never the token; scope read (the account's
	// own data) or admin (every account's). expires and revoked are Unix
	// seconds, 0 for never and live; revoked tokens stay for the listing.
	`CREATE TABLE api_tokens (
		id INTEGER PRIMARY KEY,
		hash TEXT NOT NULL UNIQUE,
		account TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
		scope TEXT NOT NULL CHECK (scope IN ('read', 'admin')),
		name TEXT NOT NULL DEFAULT '',
		created INTEGER NOT NULL,
		expires INTEGER NOT NULL DEFAULT 0,
		revoked INTEGER NOT NULL DEFAULT 0,
		last_used INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX api_tokens_account ON api_tokens(account);`,
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
