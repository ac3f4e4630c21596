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
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	dbpkg "github.com/nixfarm/nixfarm/internal/db"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/metrics"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/records"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Scheduler places builds on workers.
type Scheduler interface {
	// Submit queues a build and returns at once. done is called exactly
	// once, on a goroutine of its own, when the build ends or ctx is done.
	Submit(ctx context.Context, req *build.Request, done func(*build.Result, error))
}

// Options tune the coordinator.
type Options struct {
	// CancelOnDisconnect stops a build once every client waiting for it
	// has gone. By default builds run to the end and their results are
	// kept.
	CancelOnDisconnect bool
	// LimitLog, if set, wraps the log of each build it starts for an
	// account, to cut it off at the account's limit.
	LimitLog func(account string, w io.Writer) io.Writer
	// Substituter, if set, fetches from upstream binary caches what a
	// request lacks: inputs, and outputs that need not be built.
	Substituter Substituter
	// TrustedKeys returns the keys whose signatures make a path visible
	// to an account: what it may be offered from upstream caches.
	TrustedKeys func(ctx context.Context, account string) []signature.PublicKey
	// Metrics, if set, counts builds by final status and their durations.
	Metrics *metrics.Farm
	Log     *slog.Logger
}

// Coordinator implements the protocol servers' Builds interfaces.
type Coordinator struct {
	store  store.Views
	sched  Scheduler
	writes *dbpkg.Group // build records, group-committed
	db     *sql.DB
	logDir string
	log    *slog.Logger
	opts   Options
	now    func() time.Time

	mu       sync.Mutex
	inflight map[string]*inflight // by build key (sharing.go)
	running  sync.WaitGroup       // background builds
}

// inflight is a build under way, shared by every request for it: every
// request with the same build key, whichever its account.
type inflight struct {
	key     string // the build key (sharing.go)
	ik      string // the in-flight key (inflightKey)
	drvPath storepath.Path
	account string // the account it is built for
	record  int64  // its build record's ID, under Coordinator.mu (0 until recorded)

	// earlyRes, under Coordinator.mu, is the result of the latest attempt
	// that succeeded and announced its outputs while the farm still
	// copies them in (nil before one has); announced is closed, and
	// replaced, at each such announcement. A build retried after its
	// outputs failed to copy announces them again.
	earlyRes  *build.Result
	announced chan struct{}

	log     *fanout
	queue   *queueFeed      // where it stands in the scheduler's queue
	ctx     context.Context // the build's own, detached from clients
	cancel  context.CancelFunc
	waiters int
	done    chan struct{}
	res     *build.Result
	err     error
}

// New returns a coordinator. Build records go to db, build logs to files in
// logDir. Builds interrupted by an earlier stop are marked as such.
func New(st store.Views, sched Scheduler, db *sql.DB, logDir string, opts Options) (*Coordinator, error) {
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating log directory: %w", err)
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Coordinator{store: st, sched: sched, db: db, writes: dbpkg.NewGroup(db), logDir: logDir, log: opts.Log, opts: opts, now: time.Now,
		inflight: map[string]*inflight{}}
	res, err := db.Exec(`UPDATE builds SET error = 'interrupted: nixfarm stopped before the build finished', stopped_at = ?,
		record_status = ? WHERE stopped_at = 0`, c.now().UnixMilli(), string(records.InfrastructureError))
	if err != nil {
		return nil, fmt.Errorf("marking interrupted builds: %w", err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		c.log.Warn("builds were interrupted by the last stop; clients that retry will build them again", "builds", n)
	}
	return c, nil
}

// ErrMissingInput is returned when a build's inputs are not in the farm store.
var ErrMissingInput = publicerr.Sentinel("input is missing from the farm store")

// BuildDerivation builds a BasicDerivation whose inputs are in the farm
// store, or answers from the store, or joins the same build under way. It
// answers as soon as the outputs can be fetched, which may be while the
// farm is still copying them in from the worker.
func (c *Coordinator) BuildDerivation(ctx context.Context, req *build.Request) (*build.Result, error) {
	return c.buildDerivation(ctx, req, true)
}

// buildDerivation is BuildDerivation; early says whether to answer before
// the outputs are registered in the farm store.
func (c *Coordinator) buildDerivation(ctx context.Context, req *build.Request, early bool) (*build.Result, error) {
	log := c.log.With("drv", req.DrvPath, "account", req.Account)
	if err := checkKind(req.DrvPath, req.Drv.Kind()); err != nil {
		return nil, err
	}
	st := c.store.For(req.Account)
	outputs := req.Drv.OutputPaths()
	if done, err := allValid(ctx, st, outputs); err != nil {
		return nil, err
	} else if done {
		log.Info("outputs already in the farm store")
		return c.answered(ctx, req, outputs)
	}
	if start := c.now(); c.substituteOutputs(ctx, req.Account, outputs, req.Progress, log) {
		log.Info("outputs substituted from upstream caches")
		return c.substituted(ctx, req, outputs, start)
	}
	inputs, err := storepath.ParseList(req.Drv.InputSrcs)
	if err != nil {
		return nil, fmt.Errorf("derivation %s: %w", req.DrvPath, err)
	}
	closure, err := st.ClosureInfos(ctx, inputs)
	if errors.Is(err, store.ErrNotFound) && c.opts.Substituter != nil {
		// Inputs the farm lacks may be had from upstream caches.
		_, upErr := c.fromUpstream(ctx, req.Account, inputs, req.Progress, false)
		if closure, err = st.ClosureInfos(ctx, inputs); errors.Is(err, store.ErrNotFound) {
			return nil, missingInputs(err, upErr)
		}
	}
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, missingInputs(err, nil)
		}
		return nil, err
	}
	key := buildKey(req.DrvPath, req.Drv, closure)
	if shared, err := adopt(ctx, st, key, outputs); err != nil {
		return nil, err
	} else if shared {
		log.Info("outputs shared from an identical build for another account")
		return c.answered(ctx, req, outputs)
	}

	return c.run(ctx, req, st, key, inflightKey(key, req.Options, ""), early, log)
}

// inflightKey names a build under way: requests with the same one join
// it. Another account's build is joined only with the same limits on
// the build's time, which could fail it; alone, if set, makes the key
// the account's own (after another account's build failed it).
func inflightKey(key string, opts build.Options, alone string) string {
	k := fmt.Sprintf("%s timeout=%d silent=%d", key, opts.Timeout, opts.MaxSilentTime)
	if alone != "" {
		k += " account=" + alone
	}
	return k
}

// run builds req under the in-flight key ik, or joins the build under way
// with that key.
func (c *Coordinator) run(ctx context.Context, req *build.Request, st store.Store, key, ik string, early bool, log *slog.Logger) (*build.Result, error) {
	c.mu.Lock()
	f, joined := c.inflight[ik]
	if !joined {
		f = c.registerLocked(ctx, key, ik, req)
	}
	f.waiters++
	c.mu.Unlock()
	if joined {
		log.Info("joining the same build under way", "for_account", f.account)
	} else {
		c.start(ctx, req, f, log)
	}
	// The client gets the log from a goroutine of its own; the result
	// follows what was queued for it.
	unsubscribe := f.log.subscribe(req.Log)
	defer unsubscribe(ctx)
	// So does its build's place in the queue.
	if req.OnQueue != nil {
		defer f.queue.follow(req.OnQueue, QueueUpdateEvery)()
	}
	// Outputs stream early only to the account they are being copied in
	// for; another account's request has them once they are registered
	// and shared with it.
	mine := f.account == req.Account
	res, err := c.wait(ctx, f, early && mine, log)
	if err != nil {
		return nil, err
	}
	if mine {
		// Another account's record is not this request's to add to.
		c.mu.Lock()
		res.Record = f.record
		c.mu.Unlock()
	}
	if !mine && !res.Status.Success() {
		// Another account's build failed; it ran under that account's
		// limits and options, so this account's request is built on its
		// own rather than failed with it.
		log.Info("the build joined for another account failed; building for this account", "status", res.Status)
		return c.run(ctx, req, st, key, inflightKey(key, req.Options, req.Account), early, log)
	}
	if !mine && res.Status.Success() {
		if shared, err := adopt(ctx, st, key, res.Outputs); err != nil {
			return nil, err
		} else if !shared {
			return &build.Result{Status: build.MiscFailure, StartTime: res.StartTime, StopTime: res.StopTime,
				ErrorMsg: fmt.Sprintf("the outputs of %s were built for another request and could not be shared: some of them are in the farm store already, with other contents, for this account", req.DrvPath)}, nil
		}
	}
	setBasicHash(res, req.Drv)
	return res, nil
}

// answered records and returns the answer to a request whose outputs the
// account has already.
func (c *Coordinator) answered(ctx context.Context, req *build.Request, outputs map[string]storepath.Path) (*build.Result, error) {
	now := c.now()
	res := &build.Result{Status: build.AlreadyValid, StartTime: now, StopTime: now, Outputs: outputs}
	id, err := c.record(ctx, req, res, now)
	if err != nil {
		return nil, err
	}
	res.Record = id
	setBasicHash(res, req.Drv)
	return res, nil
}

// wait waits for the build f and returns a copy of its result; if early,
// it answers as soon as a successful attempt has announced its outputs
// and the farm store serves them. A request that stops waiting, answered
// early or gone, is no longer counted in f.waiters.
//
// An early answer cannot be taken back: if the copy of the outputs fails
// after it, the client's download fails, though a retry of the build may
// succeed. What wait can do is not to answer from an attempt whose copy
// has failed already: it checks that the farm store still serves the
// announced outputs, and otherwise waits for the next announcement or the
// end of the build.
func (c *Coordinator) wait(ctx context.Context, f *inflight, early bool, log *slog.Logger) (*build.Result, error) {
	for {
		// A build that has ended answers with its final result, even if
		// an announcement came before.
		select {
		case <-f.done:
			return finalResult(f)
		default:
		}
		c.mu.Lock()
		announced, earlyRes := f.announced, f.earlyRes
		c.mu.Unlock()
		if !early {
			announced = nil
		} else if earlyRes != nil && c.servesAll(ctx, f.account, earlyRes.Outputs) {
			c.mu.Lock()
			f.waiters--
			c.mu.Unlock()
			res := *earlyRes
			return &res, nil
		}
		select {
		case <-f.done:
			return finalResult(f)
		case <-announced:
		case <-ctx.Done():
			c.mu.Lock()
			f.waiters--
			if f.waiters == 0 && c.opts.CancelOnDisconnect {
				f.cancel()
			}
			c.mu.Unlock()
			if !c.opts.CancelOnDisconnect {
				log.Info("client went away; the build goes on and its result will be kept")
			}
			return nil, ctx.Err()
		}
	}
}

func finalResult(f *inflight) (*build.Result, error) {
	if f.err != nil {
		return nil, f.err
	}
	res := *f.res
	return &res, nil
}

// servesAll reports whether the farm store serves every one of paths,
// registered or being copied in.
func (c *Coordinator) servesAll(ctx context.Context, account string, paths map[string]storepath.Path) bool {
	st := c.store.For(account)
	for _, p := range paths {
		if _, err := st.QueryPathInfo(ctx, p); err != nil {
			return false
		}
	}
	return true
}

// registerLocked makes req the build under way for its derivation, so
// that the same request from other clients joins it.
func (c *Coordinator) registerLocked(ctx context.Context, key, ik string, req *build.Request) *inflight {
	// The build belongs to the farm, not to the client that asked first:
	// unless told otherwise, it outlives that client's connection.
	f := &inflight{key: key, ik: ik, drvPath: req.DrvPath, account: req.Account,
		log: newFanout(), queue: newQueueFeed(), done: make(chan struct{}), announced: make(chan struct{})}
	f.ctx, f.cancel = context.WithCancel(context.WithoutCancel(ctx))
	c.inflight[ik] = f
	return f
}

// end finishes f with err (res nil) or res, and lets the derivation be
// built again.
func (c *Coordinator) end(f *inflight, res *build.Result, err error) {
	f.cancel()
	c.mu.Lock()
	delete(c.inflight, f.ik)
	c.mu.Unlock()
	f.res, f.err = res, err
	close(f.done)
}

// start records the build registered as f and queues it. The record is
// written outside c.mu, so that records of builds arriving together are
// committed together.
func (c *Coordinator) start(ctx context.Context, req *build.Request, f *inflight, log *slog.Logger) {
	queued := c.now()
	id, err := c.insert(context.WithoutCancel(ctx), req, queued)
	if err != nil {
		c.end(f, nil, err)
		return
	}
	c.mu.Lock()
	f.record = id
	c.mu.Unlock()
	f.log.setPath(c.logPath(id))
	log = log.With("build", id)
	breq := *req
	breq.Log = f.log
	if c.opts.LimitLog != nil {
		breq.Log = c.opts.LimitLog(req.Account, f.log)
	}
	breq.OnStart = c.onStart(context.WithoutCancel(ctx), id, log)
	breq.OnQueue = f.queue.publish
	breq.OnOutputs = func(res *build.Result) {
		c.mu.Lock()
		f.earlyRes = res
		close(f.announced)
		f.announced = make(chan struct{})
		c.mu.Unlock()
	}
	log.Info("build queued")
	c.running.Add(1)
	c.sched.Submit(f.ctx, &breq, func(res *build.Result, err error) {
		defer c.running.Done()
		c.opts.Metrics.BuildEnded(res, err)
		if err != nil {
			res = &build.Result{Status: build.MiscFailure, StartTime: queued, StopTime: c.now(),
				ErrorMsg: publicerr.Message(ctx, log, err, "build could not run")}
			if publicerr.Is(err) {
				log.Warn("build could not run", "err", err)
			}
		} else {
			log.Info("build finished", "status", res.Status, "worker", res.Worker, "duration", res.StopTime.Sub(res.StartTime))
		}
		if res.Status.Success() {
			c.share(context.WithoutCancel(ctx), f, res, log)
		}
		// The log is whole on disk before the record says the build
		// ended: who follows the log stops when the record does.
		if err := f.log.close(); err != nil {
			log.Warn("writing build log", "err", err)
		}
		if uerr := c.update(context.WithoutCancel(ctx), id, req.Account, res, endStatus(res, err), f.log.size()); uerr != nil {
			log.Error("recording build", "err", uerr)
		}
		c.end(f, res, nil)
	})
}

// Waiting returns how many requests wait for the build of drvPath under
// way (0 if none is).
func (c *Coordinator) Waiting(drvPath storepath.Path) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, f := range c.inflight {
		if f.drvPath == drvPath {
			n += f.waiters
		}
	}
	return n
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
	return publicerr.New("derivation %s is %s; nixfarm builds input-addressed and fixed-output derivations only", drvPath, kind)
}

func allValid(ctx context.Context, st store.Store, outputs map[string]storepath.Path) (bool, error) {
	want := make([]storepath.Path, 0, len(outputs))
	for _, p := range outputs {
		want = append(want, p)
	}
	valid, err := st.ValidPaths(ctx, want)
	return len(valid) == len(want), err
}

func (c *Coordinator) logPath(id int64) string { return records.LogPath(c.logDir, id) }

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
