// Package scheduler places builds on workers. It keeps one queue per
// account and serves the accounts in turn, so that one client's 500 builds
// cannot starve another's 5. A build goes to an eligible worker (Nix's
// rules: system, supported and mandatory features) with a free slot,
// preferring the lowest load per speed factor. A build whose worker is
// lost or fails to run it is retried elsewhere, a bounded number of times
// with backoff, and a worker that keeps failing is quarantined for a
// while. A build no worker can ever take fails after a grace period with
// a message naming what it needs and what the farm has.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// Config tunes the scheduler. Zero fields take the defaults shown.
type Config struct {
	// MaxAttempts bounds how many workers a build is tried on (3).
	MaxAttempts int
	// RetryBackoff is the wait before the first retry; it doubles (1s).
	RetryBackoff time.Duration
	// QuarantineAfter consecutive failures quarantine a worker (3) ...
	QuarantineAfter int
	// ... for QuarantineFor (1m).
	QuarantineFor time.Duration
	// UnbuildableGrace is how long a build no worker can take waits for
	// one to appear before it fails (30s).
	UnbuildableGrace time.Duration
	// WatchdogGrace is added to a build's timeout and max-silent-time
	// before the scheduler stops a build the worker failed to stop (30s).
	WatchdogGrace time.Duration
	Log           *slog.Logger
}

func (c *Config) defaults() {
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 3
	}
	if c.RetryBackoff == 0 {
		c.RetryBackoff = time.Second
	}
	if c.QuarantineAfter == 0 {
		c.QuarantineAfter = 3
	}
	if c.QuarantineFor == 0 {
		c.QuarantineFor = time.Minute
	}
	if c.UnbuildableGrace == 0 {
		c.UnbuildableGrace = 30 * time.Second
	}
	if c.WatchdogGrace == 0 {
		c.WatchdogGrace = 30 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
}

// Worker is a machine the scheduler may give builds to.
type Worker struct {
	Name    string
	Kind    string // "local", "static" or "agent"
	Caps    worker.Capabilities
	Builder build.Builder
}

// Load is what a worker reports about itself.
type Load struct {
	Running int     `json:"running"`
	Load1   float64 `json:"load1"`
}

// Scheduler places builds on workers. It is safe for concurrent use.
type Scheduler struct {
	cfg Config

	mu      sync.Mutex
	workers map[string]*workerState
	queues  map[string][]*job // per account, oldest first
	order   []string          // accounts in turn
	next    int               // the account served next
	closed  bool

	stop chan struct{}
	done chan struct{}
}

type workerState struct {
	Worker
	running          map[*job]context.CancelCauseFunc
	failures         int // consecutive
	quarantinedUntil time.Time
	lastHeartbeat    time.Time
	load             Load
	built            int
	joined           time.Time
}

// New starts a scheduler. Close stops it.
func New(cfg Config) *Scheduler {
	cfg.defaults()
	s := &Scheduler{
		cfg:     cfg,
		workers: map[string]*workerState{},
		queues:  map[string][]*job{},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go s.tick()
	return s
}

// Close stops the scheduler: queued builds fail, running ones are
// cancelled.
func (s *Scheduler) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	for acct, q := range s.queues {
		for _, j := range q {
			j.finish(nil, errors.New("the farm is shutting down"))
		}
		delete(s.queues, acct)
	}
	for _, w := range s.workers {
		for _, cancel := range w.running {
			cancel(errors.New("the farm is shutting down"))
		}
	}
	s.mu.Unlock()
	close(s.stop)
	<-s.done
}

// tick re-runs dispatch for backoffs, quarantines and grace periods.
func (s *Scheduler) tick() {
	defer close(s.done)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.mu.Lock()
			s.dispatchLocked()
			s.mu.Unlock()
		}
	}
}

// AddWorker makes a worker available. A worker of the same name that is
// still registered is removed first, and its builds go elsewhere.
func (s *Scheduler) AddWorker(w Worker) error {
	if err := w.Caps.Validate(); err != nil {
		return fmt.Errorf("worker %s: %w", w.Name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("the scheduler is closed")
	}
	if old, ok := s.workers[w.Name]; ok {
		s.removeLocked(old, fmt.Errorf("worker %s registered again", w.Name))
	}
	now := time.Now()
	s.workers[w.Name] = &workerState{Worker: w, running: map[*job]context.CancelCauseFunc{}, lastHeartbeat: now, joined: now}
	s.cfg.Log.Info("worker joined", "worker", w.Name, "kind", w.Kind, "capabilities", w.Caps.String(), "max_jobs", w.Caps.MaxJobs)
	s.dispatchLocked()
	return nil
}

// RemoveWorker takes a worker away; its running builds are cancelled with
// reason and retried elsewhere.
func (s *Scheduler) RemoveWorker(name string, reason error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w, ok := s.workers[name]; ok {
		s.removeLocked(w, reason)
	}
}

func (s *Scheduler) removeLocked(w *workerState, reason error) {
	delete(s.workers, w.Name)
	for _, cancel := range w.running {
		cancel(fmt.Errorf("worker %s was lost: %w", w.Name, reason))
	}
	s.cfg.Log.Warn("worker left", "worker", w.Name, "reason", reason, "running", len(w.running))
}

// Heartbeat records a worker's report of its load.
func (s *Scheduler) Heartbeat(name string, load Load) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w, ok := s.workers[name]; ok {
		w.lastHeartbeat = time.Now()
		w.load = load
	}
}

// job is one build waiting for, or running on, a worker.
type job struct {
	ctx       context.Context
	req       *build.Request
	system    string
	required  []string
	enqueued  time.Time
	notBefore time.Time
	attempts  int
	failedOn  map[string]bool
	lastErr   error
	// unbuildableSince is set while no registered worker could take it.
	unbuildableSince time.Time

	once sync.Once
	done chan struct{}
	res  *build.Result
	err  error
}

func (j *job) finish(res *build.Result, err error) {
	j.once.Do(func() {
		j.res, j.err = res, err
		close(j.done)
	})
}

// ErrUnbuildable is wrapped by the failure of a build no worker can take.
var ErrUnbuildable = errors.New("no worker can build it")

// Schedule runs a build on a suitable worker and returns its result. It
// blocks until the build ends or ctx is done, in which case the build is
// withdrawn (or cancelled if it runs).
func (s *Scheduler) Schedule(ctx context.Context, req *build.Request) (*build.Result, error) {
	j := &job{
		ctx:      ctx,
		req:      req,
		system:   req.Drv.Platform,
		required: worker.RequiredFeatures(req.Drv),
		enqueued: time.Now(),
		failedOn: map[string]bool{},
		done:     make(chan struct{}),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errors.New("the farm is shutting down")
	}
	acct := req.Account
	if _, ok := s.queues[acct]; !ok {
		s.order = append(s.order, acct)
	}
	s.queues[acct] = append(s.queues[acct], j)
	s.dispatchLocked()
	s.mu.Unlock()

	select {
	case <-j.done:
	case <-ctx.Done():
		s.mu.Lock()
		s.dequeueLocked(j)
		s.mu.Unlock()
		j.finish(nil, ctx.Err())
		<-j.done
	}
	return j.res, j.err
}

func (s *Scheduler) dequeueLocked(j *job) {
	acct := j.req.Account
	q := s.queues[acct]
	if i := slices.Index(q, j); i >= 0 {
		s.queues[acct] = slices.Delete(q, i, i+1)
	}
	if len(s.queues[acct]) == 0 {
		delete(s.queues, acct)
		if i := slices.Index(s.order, acct); i >= 0 {
			s.order = slices.Delete(s.order, i, i+1)
			if s.next > i {
				s.next--
			}
		}
	}
}

// dispatchLocked gives queued builds to free workers, one account at a
// time in turn, and fails builds nothing can take once their grace is up.
func (s *Scheduler) dispatchLocked() {
	if s.closed {
		return
	}
	now := time.Now()
	s.expireUnbuildableLocked(now)
	for {
		j, w := s.pickLocked(now)
		if j == nil {
			return
		}
		s.dequeueLocked(j)
		s.startLocked(j, w)
	}
}

// pickLocked finds the next build to start and its worker, serving
// accounts in turn; within an account the oldest build that has a free
// worker goes first.
func (s *Scheduler) pickLocked(now time.Time) (*job, *workerState) {
	n := len(s.order)
	for i := 0; i < n; i++ {
		k := (s.next + i) % n
		for _, j := range s.queues[s.order[k]] {
			if j.notBefore.After(now) {
				continue
			}
			if w := s.bestWorkerLocked(j, now); w != nil {
				s.next = (k + 1) % n
				return j, w
			}
		}
	}
	return nil, nil
}

// bestWorkerLocked returns the eligible worker with a free slot and the
// lowest load per speed factor (ties: higher speed factor, then fewer
// running builds), avoiding workers this build already failed on when
// another will do.
func (s *Scheduler) bestWorkerLocked(j *job, now time.Time) *workerState {
	var best *workerState
	bestScore := func(w *workerState) (bool, float64) {
		return j.failedOn[w.Name], float64(len(w.running)) / w.Caps.SpeedFactor
	}
	for _, w := range s.sortedWorkersLocked() {
		if len(w.running) >= w.Caps.MaxJobs || w.quarantinedUntil.After(now) || !w.Caps.CanBuild(j.system, j.required) {
			continue
		}
		if best == nil {
			best = w
			continue
		}
		wf, ws := bestScore(w)
		bf, bs := bestScore(best)
		switch {
		case wf != bf:
			if !wf {
				best = w
			}
		case ws != bs:
			if ws < bs {
				best = w
			}
		case w.Caps.SpeedFactor != best.Caps.SpeedFactor:
			if w.Caps.SpeedFactor > best.Caps.SpeedFactor {
				best = w
			}
		case len(w.running) < len(best.running):
			best = w
		}
	}
	return best
}

func (s *Scheduler) sortedWorkersLocked() []*workerState {
	ws := make([]*workerState, 0, len(s.workers))
	for _, w := range s.workers {
		ws = append(ws, w)
	}
	sort.Slice(ws, func(a, b int) bool { return ws[a].Name < ws[b].Name })
	return ws
}

// expireUnbuildableLocked fails queued builds that no registered worker
// can take, once they have waited the grace period for one to appear.
func (s *Scheduler) expireUnbuildableLocked(now time.Time) {
	var failed []*job
	for _, q := range s.queues {
		for _, j := range q {
			if s.anyCanBuildLocked(j) {
				j.unbuildableSince = time.Time{}
				continue
			}
			if j.unbuildableSince.IsZero() {
				j.unbuildableSince = now
				s.cfg.Log.Info("no worker can build this yet; waiting for one to join", "drv", j.req.DrvPath,
					"system", j.system, "features", j.required, "grace", s.cfg.UnbuildableGrace)
			}
			if now.Sub(j.unbuildableSince) >= s.cfg.UnbuildableGrace {
				failed = append(failed, j)
			}
		}
	}
	for _, j := range failed {
		msg := s.unbuildableMessageLocked(j)
		s.cfg.Log.Warn("build cannot be placed", "drv", j.req.DrvPath, "reason", msg)
		s.dequeueLocked(j)
		j.finish(&build.Result{Status: build.MiscFailure, ErrorMsg: msg}, nil)
	}
}

func (s *Scheduler) anyCanBuildLocked(j *job) bool {
	for _, w := range s.workers {
		if w.Caps.CanBuild(j.system, j.required) {
			return true
		}
	}
	return false
}

func (s *Scheduler) unbuildableMessageLocked(j *job) string {
	var b strings.Builder
	fmt.Fprintf(&b, "nixfarm has no worker that can build '%s': it needs a '%s' machine", j.req.DrvPath, j.system)
	if len(j.required) > 0 {
		fmt.Fprintf(&b, " with the features {%s}", strings.Join(j.required, ", "))
	} else {
		b.WriteString(" (no special features)")
	}
	ws := s.sortedWorkersLocked()
	if len(ws) == 0 {
		b.WriteString(", and the farm has no workers at all")
		return b.String()
	}
	fmt.Fprintf(&b, ". The farm's %d workers are:", len(ws))
	for _, w := range ws {
		fmt.Fprintf(&b, "\n  %s (%s)", w.Name, w.Caps)
	}
	return b.String()
}

// startLocked runs an attempt of j on w.
func (s *Scheduler) startLocked(j *job, w *workerState) {
	ctx, cancel := context.WithCancelCause(j.ctx)
	w.running[j] = cancel
	j.attempts++
	attempt := j.attempts
	s.cfg.Log.Info("build placed", "drv", j.req.DrvPath, "account", j.req.Account, "worker", w.Name,
		"attempt", attempt, "queued", time.Since(j.enqueued).Round(time.Millisecond))
	go s.run(ctx, cancel, j, w, attempt)
}

// errTimedOut and errSilent are the causes the watchdog cancels with.
var (
	errTimedOut = errors.New("timed out")
	errSilent   = errors.New("silent")
)

func (s *Scheduler) run(ctx context.Context, cancel context.CancelCauseFunc, j *job, w *workerState, attempt int) {
	req := *j.req
	wd := newWatchdog(req.Log)
	req.Log = wd
	if t := req.Options.Timeout; t > 0 {
		timer := time.AfterFunc(t+s.cfg.WatchdogGrace, func() { cancel(errTimedOut) })
		defer timer.Stop()
	}
	if t := req.Options.MaxSilentTime; t > 0 {
		stop := wd.watch(t+s.cfg.WatchdogGrace, func() { cancel(errSilent) })
		defer stop()
	}
	res, err := w.Builder.Build(ctx, &req)
	cause := context.Cause(ctx)
	cancel(nil)

	s.mu.Lock()
	defer s.mu.Unlock()
	delete(w.running, j)
	defer s.dispatchLocked()
	switch {
	case err == nil:
		w.failures = 0
		w.built++
		j.finish(res, nil)
	case errors.Is(cause, errTimedOut):
		j.finish(&build.Result{Status: build.TimedOut, ErrorMsg: fmt.Sprintf("building '%s' timed out after %d seconds", j.req.DrvPath, int(req.Options.Timeout.Seconds()))}, nil)
	case errors.Is(cause, errSilent):
		j.finish(&build.Result{Status: build.TimedOut, ErrorMsg: fmt.Sprintf("building '%s' timed out after %d seconds of silence", j.req.DrvPath, int(req.Options.MaxSilentTime.Seconds()))}, nil)
	case j.ctx.Err() != nil:
		j.finish(nil, j.ctx.Err())
	case s.closed:
		j.finish(nil, err)
	default:
		s.retryLocked(j, w, err)
	}
}

// retryLocked handles an attempt that failed for a reason other than the
// build itself: the worker was lost, or could not run it.
func (s *Scheduler) retryLocked(j *job, w *workerState, err error) {
	j.lastErr = err
	j.failedOn[w.Name] = true
	if cur, ok := s.workers[w.Name]; ok && cur == w {
		w.failures++
		if w.failures >= s.cfg.QuarantineAfter {
			w.quarantinedUntil = time.Now().Add(s.cfg.QuarantineFor)
			s.cfg.Log.Warn("worker quarantined", "worker", w.Name, "failures", w.failures, "until", w.quarantinedUntil.Format(time.RFC3339))
		}
	}
	if j.attempts >= s.cfg.MaxAttempts {
		s.cfg.Log.Warn("build failed on every attempt", "drv", j.req.DrvPath, "attempts", j.attempts, "err", err)
		j.finish(&build.Result{Status: build.MiscFailure,
			ErrorMsg: fmt.Sprintf("nixfarm tried to build '%s' %d times and no worker could run it; the last error: %v", j.req.DrvPath, j.attempts, err)}, nil)
		return
	}
	backoff := s.cfg.RetryBackoff << (j.attempts - 1)
	j.notBefore = time.Now().Add(backoff)
	s.cfg.Log.Warn("build will be retried", "drv", j.req.DrvPath, "worker", w.Name, "attempt", j.attempts, "backoff", backoff, "err", err)
	if j.req.Log != nil {
		fmt.Fprintf(j.req.Log, "nixfarm: %v; retrying on another worker\n", err)
	}
	acct := j.req.Account
	if _, ok := s.queues[acct]; !ok {
		s.order = append(s.order, acct)
	}
	s.queues[acct] = append([]*job{j}, s.queues[acct]...) // ahead of younger builds
}

// WorkerInfo describes a worker for listings.
type WorkerInfo struct {
	Name                string              `json:"name"`
	Kind                string              `json:"kind"`
	State               string              `json:"state"` // idle, busy, full, quarantined
	Capabilities        worker.Capabilities `json:"capabilities"`
	Running             []RunningBuild      `json:"running"`
	Load                Load                `json:"load"`
	LastHeartbeat       time.Time           `json:"lastHeartbeat"`
	Joined              time.Time           `json:"joined"`
	Built               int                 `json:"built"`
	ConsecutiveFailures int                 `json:"consecutiveFailures"`
	QuarantinedUntil    *time.Time          `json:"quarantinedUntil,omitempty"`
}

// RunningBuild is a build a worker runs.
type RunningBuild struct {
	DrvPath storepath.Path `json:"drvPath"`
	Account string         `json:"account"`
	Attempt int            `json:"attempt"`
}

// Workers lists the registered workers, by name.
func (s *Scheduler) Workers() []WorkerInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	var out []WorkerInfo
	for _, w := range s.sortedWorkersLocked() {
		info := WorkerInfo{Name: w.Name, Kind: w.Kind, Capabilities: w.Caps, Load: w.load,
			LastHeartbeat: w.lastHeartbeat, Joined: w.joined, Built: w.built, ConsecutiveFailures: w.failures, Running: []RunningBuild{}}
		for j := range w.running {
			info.Running = append(info.Running, RunningBuild{DrvPath: j.req.DrvPath, Account: j.req.Account, Attempt: j.attempts})
		}
		sort.Slice(info.Running, func(a, b int) bool { return info.Running[a].DrvPath < info.Running[b].DrvPath })
		switch {
		case w.quarantinedUntil.After(now):
			info.State = "quarantined"
			q := w.quarantinedUntil
			info.QuarantinedUntil = &q
		case len(w.running) == 0:
			info.State = "idle"
		case len(w.running) >= w.Caps.MaxJobs:
			info.State = "full"
		default:
			info.State = "busy"
		}
		out = append(out, info)
	}
	return out
}

// Queued returns how many builds wait for a worker.
func (s *Scheduler) Queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, q := range s.queues {
		n += len(q)
	}
	return n
}

// watchdog passes a build's log on and notes when it last saw output.
type watchdog struct {
	dst  io.Writer
	mu   sync.Mutex
	last time.Time
}

func newWatchdog(dst io.Writer) *watchdog { return &watchdog{dst: dst, last: time.Now()} }

func (w *watchdog) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.last = time.Now()
	w.mu.Unlock()
	if w.dst == nil {
		return len(p), nil
	}
	return w.dst.Write(p)
}

// watch calls fire once the log has been silent for d. It returns a
// function that stops watching.
func (w *watchdog) watch(d time.Duration, fire func()) func() {
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(min(d/4, time.Second))
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-t.C:
				w.mu.Lock()
				silent := now.Sub(w.last)
				w.mu.Unlock()
				if silent >= d {
					fire()
					return
				}
			}
		}
	}()
	return func() { close(stop) }
}
