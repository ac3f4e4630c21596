// Package coordinator turns build requests from the protocol servers into
// builds: it answers from the farm store when the outputs exist already,
// checks that the inputs are present, resolves .drv closures into
// BasicDerivations in dependency order, records every build with its log,
// and hands the work to a build.Builder.
package coordinator

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Coordinator implements serveproto.Builds.
type Coordinator struct {
	store   store.Store
	builder build.Builder
	db      *sql.DB
	logDir  string
	log     *slog.Logger
	now     func() time.Time
}

// New returns a coordinator. Build records go to db, build logs to files in
// logDir.
func New(st store.Store, builder build.Builder, db *sql.DB, logDir string, log *slog.Logger) (*Coordinator, error) {
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating log directory: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Coordinator{store: st, builder: builder, db: db, logDir: logDir, log: log, now: time.Now}, nil
}

// ErrMissingInput is returned when a build's inputs are not in the farm store.
var ErrMissingInput = errors.New("input is missing from the farm store")

// BuildDerivation implements serveproto.Builds.
func (c *Coordinator) BuildDerivation(ctx context.Context, req *build.Request) (*build.Result, error) {
	log := c.log.With("drv", req.DrvPath, "account", req.Account)
	if err := checkKind(req.DrvPath, req.Drv.Kind()); err != nil {
		return nil, err
	}
	outputs := req.Drv.OutputPaths()
	if done, err := c.allValid(ctx, outputs); err != nil {
		return nil, err
	} else if done {
		now := c.now()
		res := &build.Result{Status: build.AlreadyValid, StartTime: now, StopTime: now, Outputs: outputs}
		if _, err := c.record(ctx, req, res, now); err != nil {
			return nil, err
		}
		log.Info("outputs already in the farm store")
		setBasicHash(res, req.Drv)
		return res, nil
	}
	inputs, err := storepath.ParseList(req.Drv.InputSrcs)
	if err != nil {
		return nil, fmt.Errorf("derivation %s: %w", req.DrvPath, err)
	}
	if _, err := c.store.Closure(ctx, inputs); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("%w: %w", ErrMissingInput, err)
		}
		return nil, err
	}

	queued := c.now()
	id, err := c.insert(ctx, req, queued)
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(c.logPath(id))
	if err != nil {
		return nil, fmt.Errorf("creating build log: %w", err)
	}
	defer logFile.Close()
	tee := &logTee{file: logFile, client: req.Log}
	breq := *req
	breq.Log = tee

	log.Info("build started", "build", id)
	res, err := c.builder.Build(ctx, &breq)
	if err != nil {
		res = &build.Result{Status: build.MiscFailure, ErrorMsg: err.Error(), StartTime: queued, StopTime: c.now()}
		log.Warn("build could not run", "build", id, "err", err)
	} else {
		log.Info("build finished", "build", id, "status", res.Status, "worker", res.Worker, "duration", res.StopTime.Sub(res.StartTime))
	}
	if uerr := c.update(context.WithoutCancel(ctx), id, res, tee.n); uerr != nil {
		log.Error("recording build", "build", id, "err", uerr)
	}
	if err == nil {
		setBasicHash(res, req.Drv)
	}
	return res, err
}

// setBasicHash names a successful result's realisations after the
// BasicDerivation as received, as a stock builder does: it cannot know the
// input derivations.
func setBasicHash(res *build.Result, drv *derivation.Basic) {
	if res.Status.Success() && res.HashModulo.IsZero() {
		if h, err := derivation.HashModulo(drv.Derivation(), nil); err == nil {
			res.HashModulo = h
		}
	}
}

// checkKind refuses derivations whose output paths are known only after
// the build (floating content-addressed, impure, deferred).
func checkKind(drvPath storepath.Path, kind derivation.Kind) error {
	if kind.HasKnownOutputPaths() {
		return nil
	}
	return fmt.Errorf("derivation %s is %s; nixfarm builds input-addressed and fixed-output derivations only", drvPath, kind)
}

func (c *Coordinator) allValid(ctx context.Context, outputs map[string]storepath.Path) (bool, error) {
	want := make([]storepath.Path, 0, len(outputs))
	for _, p := range outputs {
		want = append(want, p)
	}
	valid, err := c.store.ValidPaths(ctx, want)
	return len(valid) == len(want), err
}

func (c *Coordinator) logPath(id int64) string {
	return filepath.Join(c.logDir, strconv.FormatInt(id, 10)+".log")
}

func outputList(outputs map[string]storepath.Path) string {
	var b strings.Builder
	for name, p := range outputs {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(name + "=" + string(p))
	}
	return b.String()
}

func (c *Coordinator) insert(ctx context.Context, req *build.Request, queued time.Time) (int64, error) {
	res, err := c.db.ExecContext(ctx,
		`INSERT INTO builds (drv_path, account, status, queued_at) VALUES (?, ?, ?, ?)`,
		string(req.DrvPath), req.Account, int64(build.MiscFailure), queued.UnixMilli())
	if err != nil {
		return 0, fmt.Errorf("recording build: %w", err)
	}
	return res.LastInsertId()
}

func (c *Coordinator) update(ctx context.Context, id int64, res *build.Result, logBytes int64) error {
	_, err := c.db.ExecContext(ctx,
		`UPDATE builds SET worker = ?, status = ?, error = ?, outputs = ?, started_at = ?, stopped_at = ?, log_bytes = ? WHERE id = ?`,
		res.Worker, int64(res.Status), res.ErrorMsg, outputList(res.Outputs),
		res.StartTime.UnixMilli(), res.StopTime.UnixMilli(), logBytes, id)
	return err
}

// record stores a build that needed no builder.
func (c *Coordinator) record(ctx context.Context, req *build.Request, res *build.Result, at time.Time) (int64, error) {
	id, err := c.insert(ctx, req, at)
	if err != nil {
		return 0, err
	}
	return id, c.update(ctx, id, res, 0)
}

// logTee writes a build log to its file and to the client. A client that
// went away must not stop the log from being kept.
type logTee struct {
	mu     sync.Mutex
	file   io.Writer
	client io.Writer
	n      int64
}

func (t *logTee) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, err := t.file.Write(p)
	t.n += int64(n)
	if t.client != nil {
		if _, cerr := t.client.Write(p); cerr != nil {
			t.client = nil
		}
	}
	return n, err
}
