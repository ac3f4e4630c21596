// Package records reads and prunes the farm's build records: one row of
// the state database's builds table per build the farm answered, whether
// a worker built it, it failed, or the farm answered from its store or
// an upstream cache. The coordinator writes them; this package is what
// the CLI (`nixfarm builds`), the SSH command and the HTTP API read.
//
// Every read takes a Viewer: an account sees only its own records, an
// admin every account's.
package records

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/publicerr"
)

// Status is where a build is, or how it ended, in the records' words.
type Status string

// The statuses of a record.
const (
	Queued              Status = "queued"
	Running             Status = "running"
	Built               Status = "built"
	Failed              Status = "failed"
	TimedOut            Status = "timed-out"
	Cancelled           Status = "cancelled"
	InfrastructureError Status = "infrastructure-error"
	Substituted         Status = "substituted"
	Cached              Status = "cached"
)

// Statuses lists every status, in the order of a build's life.
var Statuses = []Status{Queued, Running, Built, Failed, TimedOut, Cancelled, InfrastructureError, Substituted, Cached}

// ParseStatus checks s against the statuses.
func ParseStatus(s string) (Status, error) {
	for _, st := range Statuses {
		if string(st) == s {
			return st, nil
		}
	}
	names := make([]string, len(Statuses))
	for i, st := range Statuses {
		names[i] = string(st)
	}
	return "", publicerr.New("unknown build status %q; the statuses are %s", s, strings.Join(names, ", "))
}

// Final reports whether a build with this status has ended.
func (s Status) Final() bool { return s != Queued && s != Running }

// StatusOf maps the result of a build that ended to its record status:
// Nix's status, unless the farm rather than the build failed.
func StatusOf(res *build.Result) Status {
	if res.Infrastructure {
		return InfrastructureError
	}
	switch res.Status {
	case build.Built:
		return Built
	case build.Substituted:
		return Substituted
	case build.AlreadyValid, build.ResolvesToAlreadyValid:
		return Cached
	case build.TimedOut:
		return TimedOut
	}
	return Failed
}

// Output is one output of a build, with the size of its NAR.
type Output struct {
	Name    string `json:"name"`
	Path    string `json:"path"`
	NarSize uint64 `json:"narSize"`
}

// Record is one build.
type Record struct {
	ID             int64  `json:"id"`
	DrvPath        string `json:"drvPath"`
	Account        string `json:"account"`
	KeyFingerprint string `json:"keyFingerprint"`
	System         string `json:"system"`
	// RequiredFeatures are the derivation's requiredSystemFeatures.
	RequiredFeatures []string `json:"requiredFeatures"`
	Status           Status   `json:"status"`
	// NixStatus is Nix's BuildResult status of a build that ended.
	NixStatus string `json:"nixStatus,omitempty"`
	Error     string `json:"error,omitempty"`
	// Worker is the worker of the latest attempt; Workers every worker
	// tried, in order.
	Worker   string    `json:"worker"`
	Workers  []string  `json:"workers"`
	Attempts int       `json:"attempts"`
	QueuedAt time.Time `json:"queuedAt"`
	// StartedAt and StoppedAt are zero until the build starts and ends.
	StartedAt time.Time `json:"startedAt,omitzero"`
	StoppedAt time.Time `json:"stoppedAt,omitzero"`
	Outputs   []Output  `json:"outputs"`
	LogBytes  int64     `json:"logBytes"`
	// BytesUploaded and BytesDownloaded (client to farm and back, as
	// package traffic attributes them), and CPUSeconds and PeakMemory of
	// the builder, are 0 until measured.
	BytesUploaded   int64   `json:"bytesUploaded"`
	BytesDownloaded int64   `json:"bytesDownloaded"`
	CPUSeconds      float64 `json:"cpuSeconds"`
	PeakMemory      int64   `json:"peakMemory"`
}

// QueueTime is how long the build waited for a worker (so far, at now,
// if it still waits).
func (r *Record) QueueTime(now time.Time) time.Duration {
	switch {
	case !r.StartedAt.IsZero():
		return max(r.StartedAt.Sub(r.QueuedAt), 0)
	case r.Status == Queued:
		return max(now.Sub(r.QueuedAt), 0)
	}
	return 0
}

// BuildTime is how long the build ran (so far, at now, if it runs).
func (r *Record) BuildTime(now time.Time) time.Duration {
	switch {
	case r.StartedAt.IsZero():
		return 0
	case !r.StoppedAt.IsZero():
		return max(r.StoppedAt.Sub(r.StartedAt), 0)
	case r.Status == Running:
		return max(now.Sub(r.StartedAt), 0)
	}
	return 0
}

// OutputBytes is the total NAR size of the outputs.
func (r *Record) OutputBytes() uint64 {
	var n uint64
	for _, o := range r.Outputs {
		n += o.NarSize
	}
	return n
}

// DrvName is the derivation's name: its path without hash and ".drv".
func (r *Record) DrvName() string {
	base := filepath.Base(r.DrvPath)
	if _, name, ok := strings.Cut(base, "-"); ok {
		base = name
	}
	return strings.TrimSuffix(base, ".drv")
}

// Page is a page of a listing, as the CLI, the SSH command and the API
// render it in JSON.
type Page struct {
	Builds []Record `json:"builds"`
	// NextCursor, if not empty, is the Cursor of the next page.
	NextCursor string `json:"nextCursor,omitempty"`
}

// Viewer is who reads records: an account sees its own, an admin all.
type Viewer struct {
	Account string
	Admin   bool
}

// Filter selects records; zero fields select all. Since and Until bound
// the time the build was queued (Since inclusive, Until exclusive).
type Filter struct {
	Account      string
	Status       Status
	System       string
	Since        time.Time
	Until        time.Time
	DrvSubstring string
	// Limit bounds the page (DefaultLimit if 0, at most MaxLimit).
	Limit int
	// Cursor continues a listing where the previous page ended.
	Cursor string
}

// DefaultLimit and MaxLimit bound a page of records.
const (
	DefaultLimit = 50
	MaxLimit     = 1000
)

// ErrNotFound is returned for a record that does not exist, and
// ErrForbidden for one of another account.
var (
	ErrNotFound  = publicerr.Sentinel("no such build")
	ErrForbidden = publicerr.Sentinel("that build belongs to another account")
)

// Service reads and prunes the records in a state database.
type Service struct {
	db     *sql.DB
	logDir string
	now    func() time.Time
}

// New returns a Service over the database d, whose builds' logs are in
// logDir (see LogPath). now is the clock (time.Now if nil).
func New(d *sql.DB, logDir string, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{db: d, logDir: logDir, now: now}
}

// LogPath is where the log of build id is kept under logDir.
func LogPath(logDir string, id int64) string {
	return filepath.Join(logDir, strconv.FormatInt(id, 10)+".log")
}

const columns = `id, drv_path, account, key_fingerprint, system, required_features, status, record_status, error,
	worker, workers, attempts, queued_at, started_at, stopped_at, outputs, output_sizes, log_bytes,
	bytes_uploaded, bytes_downloaded, cpu_seconds, peak_memory`

// List returns the records f selects that v may see, newest first, and
// the cursor of the next page ("" after the last).
func (s *Service) List(ctx context.Context, v Viewer, f Filter) ([]Record, string, error) {
	var where []string
	var args []any
	add := func(cond string, arg any) {
		where = append(where, cond)
		args = append(args, arg)
	}
	switch {
	case !v.Admin:
		if f.Account != "" && f.Account != v.Account {
			return nil, "", fmt.Errorf("%w: you see only your own account's builds (%s)", ErrForbidden, v.Account)
		}
		add("account = ?", v.Account)
	case f.Account != "":
		add("account = ?", f.Account)
	}
	if f.Status != "" {
		if _, err := ParseStatus(string(f.Status)); err != nil {
			return nil, "", err
		}
		add("record_status = ?", string(f.Status))
	}
	if f.System != "" {
		add("system = ?", f.System)
	}
	if !f.Since.IsZero() {
		add("queued_at >= ?", f.Since.UnixMilli())
	}
	if !f.Until.IsZero() {
		add("queued_at < ?", f.Until.UnixMilli())
	}
	if f.DrvSubstring != "" {
		add("instr(drv_path, ?) > 0", f.DrvSubstring)
	}
	if f.Cursor != "" {
		after, err := strconv.ParseInt(f.Cursor, 10, 64)
		if err != nil || after <= 0 {
			return nil, "", publicerr.New("invalid cursor %q: give back the nextCursor of the previous page", f.Cursor)
		}
		add("id < ?", after)
	}
	limit := f.Limit
	switch {
	case limit < 0:
		return nil, "", publicerr.New("invalid limit %d", limit)
	case limit == 0:
		limit = DefaultLimit
	case limit > MaxLimit:
		limit = MaxLimit
	}
	q := `SELECT ` + columns + ` FROM builds`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY id DESC LIMIT ?`
	args = append(args, limit+1)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("listing builds: %w", err)
	}
	defer rows.Close()
	out := []Record{}
	for rows.Next() {
		r, err := scan(rows)
		if err != nil {
			return nil, "", err
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("listing builds: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = strconv.FormatInt(out[limit-1].ID, 10)
	}
	return out, next, nil
}

// Get returns record id, if v may see it.
func (s *Service) Get(ctx context.Context, v Viewer, id int64) (*Record, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+columns+` FROM builds WHERE id = ?`, id)
	r, err := scan(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: %d", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	if !v.Admin && r.Account != v.Account {
		return nil, fmt.Errorf("%w: %d", ErrForbidden, id)
	}
	return &r, nil
}

// Prune removes the records of builds that ended more than olderThan
// ago, and their logs, and returns how many it removed. Builds under
// way are kept whatever their age.
func (s *Service) Prune(ctx context.Context, olderThan time.Duration) (int, error) {
	if olderThan <= 0 {
		return 0, nil
	}
	cutoff := s.now().Add(-olderThan).UnixMilli()
	removed := 0
	for {
		// In batches, so that a first prune of a large table does not
		// hold the database's write lock for long.
		ids, err := s.expired(ctx, cutoff, 500)
		if err != nil || len(ids) == 0 {
			return removed, err
		}
		// The logs go first, and a record only once its log is gone: ids
		// are rowids, which new builds reuse once the newest records are
		// deleted, so a log left behind (a crash, a failed removal) would
		// be shown as theirs.
		var rmErr error
		gone := make([]int64, 0, len(ids))
		for _, id := range ids {
			if err := os.Remove(LogPath(s.logDir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
				rmErr = fmt.Errorf("removing a pruned build's log: %w", err)
				break
			}
			gone = append(gone, id)
		}
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return removed, fmt.Errorf("pruning build records: %w", err)
		}
		for _, id := range gone {
			if _, err := tx.ExecContext(ctx, `DELETE FROM builds WHERE id = ?`, id); err != nil {
				tx.Rollback()
				return removed, fmt.Errorf("pruning build records: %w", err)
			}
		}
		if err := tx.Commit(); err != nil {
			return removed, fmt.Errorf("pruning build records: %w", err)
		}
		removed += len(gone)
		if rmErr != nil {
			return removed, rmErr
		}
	}
}

func (s *Service) expired(ctx context.Context, cutoff int64, n int) ([]int64, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM builds WHERE stopped_at > 0 AND stopped_at < ? LIMIT ?`, cutoff, n)
	if err != nil {
		return nil, fmt.Errorf("finding old build records: %w", err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("finding old build records: %w", err)
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

type scanner interface{ Scan(...any) error }

func scan(row scanner) (Record, error) {
	var r Record
	var features, workers, outputs, sizes string
	var nixStatus int64
	var queued, started, stopped int64
	if err := row.Scan(&r.ID, &r.DrvPath, &r.Account, &r.KeyFingerprint, &r.System, &features, &nixStatus, &r.Status, &r.Error,
		&r.Worker, &workers, &r.Attempts, &queued, &started, &stopped, &outputs, &sizes, &r.LogBytes,
		&r.BytesUploaded, &r.BytesDownloaded, &r.CPUSeconds, &r.PeakMemory); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return r, err
		}
		return r, fmt.Errorf("reading a build record: %w", err)
	}
	r.RequiredFeatures = strings.Fields(features)
	r.Workers = []string{}
	if workers != "" {
		r.Workers = strings.Split(workers, ",")
	}
	r.QueuedAt = fromMilli(queued)
	r.StartedAt = fromMilli(started)
	r.StoppedAt = fromMilli(stopped)
	if r.Status.Final() {
		r.NixStatus = build.Status(nixStatus).String()
	}
	r.Outputs = []Output{}
	if sizes != "" {
		if err := json.Unmarshal([]byte(sizes), &r.Outputs); err != nil {
			return r, fmt.Errorf("reading the outputs of build %d: %w", r.ID, err)
		}
	} else {
		// Records from before sizes were kept: the paths only.
		for _, o := range strings.Fields(outputs) {
			name, path, _ := strings.Cut(o, "=")
			r.Outputs = append(r.Outputs, Output{Name: name, Path: path})
		}
	}
	return r, nil
}

func fromMilli(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}
