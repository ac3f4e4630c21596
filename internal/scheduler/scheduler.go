// Package scheduler places builds on workers. It keeps one queue per
// account and serves the accounts in turn, so that one client's 500 builds
// cannot starve another's 5. A build goes to an eligible worker (Nix's
// rules: system, supported and mandatory features) with a free slot,
// preferring the lowest load per speed factor. A build whose worker is
// lost or fails to run it is retried elsewhere, a bounded number of times
// with backoff, and a worker that keeps failing is quarantined for a
// while. A build no worker can ever take fails after a grace period with
// a message naming what it needs and what the farm has.
//
// Queued builds are grouped by class (system and required features), so
// that a placement costs time in the number of accounts, classes and
// workers, not in the number of queued builds.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/metrics"
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
	// Limits, if set, returns an account's caps on builds running at once
	// (more wait in the queue) and builds waiting (a build submitted
	// beyond is refused); 0 is no cap. It is called outside the
	// scheduler's lock, once per Submit.
	Limits func(account string) AccountLimits
	// Metrics, if set, hears of queue times, retries, quarantines and
	// lost workers; it collects queues and slots with MetricsState.
	Metrics *metrics.Farm
	// Now is the scheduler's clock (time.Now); the watchdog keeps the
	// real one.
	Now func() time.Time
	Log *slog.Logger
}

// AccountLimits are an account's caps on its builds; 0 is no cap.
type AccountLimits struct {
	MaxRunning int
	MaxQueued  int
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
	if c.Now == nil {
		c.Now = time.Now
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
	sorted  []*workerState // by name; rebuilt when workers change
	classes map[string]*class
	// accounts holds each account's queued builds; order lists the
	// accounts with queued builds, served in turn starting at next.
	accounts map[string]*accountQueue
	order    []string
	next     int
	queued   int
	// running counts each account's running builds, and caps holds the
	// limits each account had at its latest Submit.
	running map[string]int
	caps    map[string]AccountLimits
	seq     uint64
	closed  bool

	// Queue feedback (waiting.go): watched counts the queued builds
	// with Request.OnQueue; dirty says the queue changed since their
	// statuses were last worked out, at lastPublish; pub calls the hooks
	// outside s.mu.
	watched     int
	dirty       bool
	lastPublish time.Time
	pub         *publisher

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
		cfg:      cfg,
		workers:  map[string]*workerState{},
		classes:  map[string]*class{},
		accounts: map[string]*accountQueue{},
		running:  map[string]int{},
		caps:     map[string]AccountLimits{},
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		pub:      newPublisher(),
	}
	go s.tick()
	go s.pub.run(s.stop)
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
	for _, acct := range s.order {
		for _, q := range s.accounts[acct].classes {
			q.each(func(j *job) {
				j.queued = false
				j.finish(nil, errors.New("the farm is shutting down"))
			})
		}
	}
	s.accounts, s.order, s.queued, s.watched = map[string]*accountQueue{}, nil, 0, 0
	for _, c := range s.classes {
		c.queued = 0
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
			now := s.now()
			s.expireUnbuildableLocked(now)
			s.dispatchLocked()
			s.publishLocked(now)
			s.mu.Unlock()
		}
	}
}

// ErrNameTaken is wrapped when a worker joins under a name that a
// registered worker holds.
var ErrNameTaken = errors.New("a registered worker has that name")

// ErrLeft is wrapped in RemoveWorker's reason when a worker leaves on
// purpose: an agent that said goodbye, was revoked, or the farm stopping.
// Such a worker is counted lost (nixfarm_worker_losses_total) only if
// builds were running on it; any other reason counts it lost.
var ErrLeft = errors.New("the worker left")

// AddWorker makes a worker available. A name that a registered worker
// holds is refused: a worker is never replaced by another of its name.
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
		return fmt.Errorf("worker %s: %w (a %s worker)", w.Name, ErrNameTaken, old.Kind)
	}
	now := s.now()
	s.dirty = true
	s.workers[w.Name] = &workerState{Worker: w, running: map[*job]context.CancelCauseFunc{}, lastHeartbeat: now, joined: now}
	s.resortLocked()
	s.cfg.Log.Info("worker joined", "worker", w.Name, "kind", w.Kind, "capabilities", w.Caps.String(), "max_jobs", w.Caps.MaxJobs)
	s.dispatchLocked()
	return nil
}

// RemoveWorker takes a worker away; its running builds are cancelled with
// reason and retried elsewhere. A reason wrapping ErrLeft says it left on
// purpose (see ErrLeft).
func (s *Scheduler) RemoveWorker(name string, reason error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w, ok := s.workers[name]; ok {
		s.removeLocked(w, reason)
	}
}

func (s *Scheduler) removeLocked(w *workerState, reason error) {
	s.dirty = true
	delete(s.workers, w.Name)
	s.resortLocked()
	if !errors.Is(reason, ErrLeft) || len(w.running) > 0 {
		s.cfg.Metrics.WorkerLost(w.Name)
	}
	for _, cancel := range w.running {
		cancel(fmt.Errorf("worker %s was lost: %w", w.Name, reason))
	}
	s.cfg.Log.Warn("worker left", "worker", w.Name, "reason", reason, "running", len(w.running))
}

func (s *Scheduler) resortLocked() {
	s.sorted = s.sorted[:0]
	for _, w := range s.workers {
		s.sorted = append(s.sorted, w)
	}
	sort.Slice(s.sorted, func(a, b int) bool { return s.sorted[a].Name < s.sorted[b].Name })
}

// HasWorker reports whether a worker named name is registered.
func (s *Scheduler) HasWorker(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.workers[name]
	return ok
}

// Heartbeat records a worker's report of its load.
func (s *Scheduler) Heartbeat(name string, load Load) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w, ok := s.workers[name]; ok {
		w.lastHeartbeat = s.now()
		w.load = load
	}
}

// job is one build waiting for, or running on, a worker.
type job struct {
	ctx       context.Context
	req       *build.Request
	class     *class
	seq       uint64
	enqueued  time.Time // first queued
	queuedAt  time.Time // queued last (a retry is queued again)
	started   time.Time // its latest attempt started
	notBefore time.Time
	published build.QueueStatus // what OnQueue last heard

	attempts int
	failedOn map[string]bool
	queued   bool // in a queue (not running, not done)
	removed  bool // taken out of its queue while not at its head

	once       sync.Once
	done       func(*build.Result, error)
	stopCancel func() bool // stops watching the context
}

// finish reports the outcome, once. The callback runs on its own
// goroutine, so it may block and may call the scheduler.
func (j *job) finish(res *build.Result, err error) {
	j.once.Do(func() {
		if j.stopCancel != nil {
			j.stopCancel()
		}
		go j.done(res, err)
	})
}

// ErrUnbuildable is wrapped by the failure of a build no worker can take.
var ErrUnbuildable = errors.New("no worker can build it")

// Submit queues a build and returns at once; done is called once with
// the result, when the build ends or ctx is done (then the build is
// withdrawn, or cancelled if it runs).
func (s *Scheduler) Submit(ctx context.Context, req *build.Request, done func(*build.Result, error)) {
	required := worker.RequiredFeatures(req.Drv)
	var caps AccountLimits
	if s.cfg.Limits != nil {
		caps = s.cfg.Limits(req.Account)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		go done(nil, errors.New("the farm is shutting down"))
		return
	}
	s.setCapsLocked(req.Account, caps)
	if a := s.accounts[req.Account]; caps.MaxQueued > 0 && a != nil && a.queued >= caps.MaxQueued {
		s.mu.Unlock()
		msg := fmt.Sprintf("build of '%s' refused: the account has %d builds queued already, its limit (max-queued-builds = %d); wait for some to finish, or ask the farm's operator to raise it: nixfarm accounts set-limits ACCOUNT --max-queued-builds N",
			req.DrvPath, caps.MaxQueued, caps.MaxQueued)
		s.cfg.Log.Info("build refused", "drv", req.DrvPath, "account", req.Account, "reason", msg)
		now := s.cfg.Now()
		go done(&build.Result{Status: build.MiscFailure, ErrorMsg: msg, StartTime: now, StopTime: now}, nil)
		return
	}
	key := classKey(req.Drv.Platform, required)
	c, ok := s.classes[key]
	if !ok {
		c = &class{key: key, system: req.Drv.Platform, required: required}
		s.classes[key] = c
	}
	s.seq++
	j := &job{ctx: ctx, req: req, class: c, seq: s.seq, enqueued: s.now(), failedOn: map[string]bool{}, done: done}
	// The callback runs on its own goroutine and takes s.mu first, so
	// even if ctx is done already it finds j queued and j.stopCancel set.
	j.stopCancel = context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.dequeueLocked(j)
		s.mu.Unlock()
		j.finish(nil, ctx.Err())
	})
	s.enqueueLocked(j, false)
	if !s.anyCanBuildLocked(c) {
		s.expireUnbuildableLocked(s.now())
	}
	s.dispatchLocked()
	s.mu.Unlock()
}

// enqueueLocked adds j to its account's queue; retries wait apart.
func (s *Scheduler) enqueueLocked(j *job, retry bool) {
	if c, ok := s.classes[j.class.key]; !ok {
		s.classes[j.class.key] = j.class
	} else if c != j.class {
		j.class = c // its class was forgotten (dequeueLocked) and made again
	}
	acct := j.req.Account
	a, ok := s.accounts[acct]
	if !ok {
		a = &accountQueue{classes: map[string]*classQueue{}}
		s.accounts[acct] = a
		s.order = append(s.order, acct)
	}
	q, ok := a.classes[j.class.key]
	if !ok {
		q = &classQueue{class: j.class}
		a.classes[j.class.key] = q
		a.order = append(a.order, j.class.key)
	}
	if retry {
		q.retries = append(q.retries, j)
	} else {
		q.push(j)
	}
	j.queued = true
	j.queuedAt = s.now()
	s.queued++
	a.queued++
	j.class.queued++
	s.dirty = true
	if j.req.OnQueue != nil {
		s.watched++
	}
}

// dequeueLocked takes a queued j out of its queue (a no-op if it is not
// queued, or if its queue is gone: Close drops the queues).
func (s *Scheduler) dequeueLocked(j *job) {
	if !j.queued {
		return
	}
	j.queued = false
	s.dirty = true
	if j.req.OnQueue != nil {
		s.watched--
	}
	a := s.accounts[j.req.Account]
	if a == nil {
		return
	}
	q := a.classes[j.class.key]
	if q == nil {
		return
	}
	q.remove(j)
	s.queued--
	a.queued--
	j.class.queued--
	if c := j.class; c.queued == 0 && len(c.durations) == 0 && s.classes[c.key] == c && !s.anyCanBuildLocked(c) {
		// A class no worker offers, with nothing left to wait: its
		// system and features are the client's, so it is not kept (a
		// build of it still running is queued again under the class of
		// its key: enqueueLocked).
		delete(s.classes, c.key)
	}
	s.pruneLocked(j.req.Account, a, q)
}

// pruneLocked drops an empty class queue, and an account with none left.
func (s *Scheduler) pruneLocked(acct string, a *accountQueue, q *classQueue) {
	if !q.empty() {
		return
	}
	delete(a.classes, q.class.key)
	for i, k := range a.order {
		if k == q.class.key {
			a.order = append(a.order[:i], a.order[i+1:]...)
			break
		}
	}
	if len(a.classes) > 0 {
		return
	}
	delete(s.accounts, acct)
	for i, name := range s.order {
		if name == acct {
			s.order = append(s.order[:i], s.order[i+1:]...)
			if s.next > i {
				s.next--
			}
			break
		}
	}
	if s.next >= len(s.order) {
		s.next = 0
	}
}

// setCapsLocked records an account's caps; an account without caps
// (all zero) is not kept.
func (s *Scheduler) setCapsLocked(account string, caps AccountLimits) {
	if caps == (AccountLimits{}) {
		delete(s.caps, account)
		return
	}
	s.caps[account] = caps
}

// AccountBuilds returns how many of account's builds run and wait.
func (s *Scheduler) AccountBuilds(account string) (running, queued int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.accounts[account]; a != nil {
		queued = a.queued
	}
	return s.running[account], queued
}

// Queued returns how many builds wait for a worker.
func (s *Scheduler) Queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queued
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
	DrvPath storepath.Path `json:"drvPath,omitempty"` // with the API token only
	Account string         `json:"account,omitempty"`
	Attempt int            `json:"attempt"`
}

// Workers lists the registered workers, by name.
func (s *Scheduler) Workers() []WorkerInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	out := []WorkerInfo{}
	for _, w := range s.sorted {
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
