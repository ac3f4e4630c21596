// Package coordinator turns build requests from the protocol servers into
// builds: it answers from the farm store when the outputs exist already,
// checks that the inputs are present, builds a derivation requested by
// several clients at once only once, resolves .drv closures into
// BasicDerivations in dependency order, records every build with its log,
// and hands the work to the scheduler.
package coordinator

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
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

// Scheduler places builds on workers.
type Scheduler interface {
	Schedule(ctx context.Context, req *build.Request) (*build.Result, error)
}

// Options tune the coordinator.
type Options struct {
	// CancelOnDisconnect stops a build once every client waiting for it
	// has gone. By default builds run to the end and their results are
	// kept.
	CancelOnDisconnect bool
	Log                *slog.Logger
}

// Coordinator implements the protocol servers' Builds interfaces.
type Coordinator struct {
	store  store.Store
	sched  Scheduler
	db     *sql.DB
	logDir string
	log    *slog.Logger
	opts   Options
	now    func() time.Time

	mu       sync.Mutex
	inflight map[storepath.Path]*inflight
	running  sync.WaitGroup // background builds
}

// inflight is a build under way, shared by every request for it.
type inflight struct {
	id      int64
	log     *fanout
	cancel  context.CancelFunc
	waiters int
	done    chan struct{}
	res     *build.Result
	err     error
}

// New returns a coordinator. Build records go to db, build logs to files in
// logDir. Builds interrupted by an earlier stop are marked as such.
func New(st store.Store, sched Scheduler, db *sql.DB, logDir string, opts Options) (*Coordinator, error) {
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating log directory: %w", err)
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Coordinator{store: st, sched: sched, db: db, logDir: logDir, log: opts.Log, opts: opts, now: time.Now,
		inflight: map[storepath.Path]*inflight{}}
	res, err := db.Exec(`UPDATE builds SET error = 'interrupted: nixfarm stopped before the build finished', stopped_at = ?
		WHERE stopped_at = 0`, c.now().UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("marking interrupted builds: %w", err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		c.log.Warn("builds were interrupted by the last stop; clients that retry will build them again", "builds", n)
	}
	return c, nil
}

// ErrMissingInput is returned when a build's inputs are not in the farm store.
var ErrMissingInput = errors.New("input is missing from the farm store")

// BuildDerivation builds a BasicDerivation whose inputs are in the farm
// store, or answers from the store, or joins the same build under way.
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

	c.mu.Lock()
	f, joined := c.inflight[req.DrvPath]
	if !joined {
		f, err = c.startLocked(ctx, req, log)
		if err != nil {
			c.mu.Unlock()
			return nil, err
		}
	} else {
		log.Info("joining the same build under way", "build", f.id)
	}
	f.waiters++
	c.mu.Unlock()
	unsubscribe := f.log.subscribe(req.Log)
	defer unsubscribe()

	select {
	case <-f.done:
	case <-ctx.Done():
		c.mu.Lock()
		f.waiters--
		if f.waiters == 0 && c.opts.CancelOnDisconnect {
			f.cancel()
		}
		c.mu.Unlock()
		if !c.opts.CancelOnDisconnect {
			log.Info("client went away; the build goes on and its result will be kept", "build", f.id)
		}
		return nil, ctx.Err()
	}
	if f.err != nil {
		return nil, f.err
	}
	res := *f.res
	if res.Status.Success() {
		setBasicHash(&res, req.Drv)
	}
	return &res, nil
}

// startLocked records a new build and starts it in the background.
func (c *Coordinator) startLocked(ctx context.Context, req *build.Request, log *slog.Logger) (*inflight, error) {
	queued := c.now()
	id, err := c.insert(ctx, req, queued)
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(c.logPath(id))
	if err != nil {
		return nil, fmt.Errorf("creating build log: %w", err)
	}
	// The build belongs to the farm, not to the client that asked first:
	// unless told otherwise, it outlives that client's connection.
	buildCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &inflight{id: id, log: newFanout(logFile), cancel: cancel, done: make(chan struct{})}
	c.inflight[req.DrvPath] = f
	breq := *req
	breq.Log = f.log
	log.Info("build queued", "build", id)
	c.running.Add(1)
	go func() {
		defer c.running.Done()
		defer cancel()
		res, err := c.sched.Schedule(buildCtx, &breq)
		if err != nil {
			res = &build.Result{Status: build.MiscFailure, ErrorMsg: err.Error(), StartTime: queued, StopTime: c.now()}
			log.Warn("build could not run", "build", id, "err", err)
		} else {
			log.Info("build finished", "build", id, "status", res.Status, "worker", res.Worker, "duration", res.StopTime.Sub(res.StartTime))
		}
		if uerr := c.update(context.WithoutCancel(ctx), id, res, f.log.size()); uerr != nil {
			log.Error("recording build", "build", id, "err", uerr)
		}
		logFile.Close()
		c.mu.Lock()
		delete(c.inflight, req.DrvPath)
		c.mu.Unlock()
		f.res, f.err = res, err
		close(f.done)
	}()
	return f, nil
}

// Waiting returns how many requests wait for the build of drvPath under
// way (0 if none is).
func (c *Coordinator) Waiting(drvPath storepath.Path) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.inflight[drvPath]; ok {
		return f.waiters
	}
	return 0
}

// Wait waits until every build under way is recorded. Call it after the
// scheduler is closed, before the database is.
func (c *Coordinator) Wait() { c.running.Wait() }

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
