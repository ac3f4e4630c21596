package scheduler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/publicerr"
)

// dispatchLocked gives queued builds to free workers, the accounts in
// turn, until no queued build has a free worker.
func (s *Scheduler) dispatchLocked() {
	if s.closed {
		return
	}
	now := s.now()
	for {
		j, w := s.pickLocked(now)
		if j == nil {
			return
		}
		s.dequeueLocked(j)
		s.startLocked(j, w)
	}
}

// pickLocked finds the next build to start and its worker: the account
// whose turn it is, or the next one that has a build some free worker
// can take; within an account, the oldest such build.
func (s *Scheduler) pickLocked(now time.Time) (*job, *workerState) {
	n := len(s.order)
	for i := 0; i < n; i++ {
		k := (s.next + i) % n
		if max := s.caps[s.order[k]].MaxRunning; max > 0 && s.running[s.order[k]] >= max {
			continue // its other builds wait for one of its own to end
		}
		a := s.accounts[s.order[k]]
		var best *job
		var bestWorker *workerState
		for _, key := range a.order {
			q := a.classes[key]
			j := q.ready(now)
			if j == nil || (best != nil && j.seq > best.seq) {
				continue
			}
			if w := s.bestWorkerLocked(j, now); w != nil {
				best, bestWorker = j, w
			}
		}
		if best != nil {
			s.next = (k + 1) % n
			return best, bestWorker
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
	for _, w := range s.sorted {
		if len(w.running) >= w.Caps.MaxJobs || w.quarantinedUntil.After(now) || !w.Caps.CanBuild(j.class.system, j.class.required) {
			continue
		}
		if best == nil || better(j, w, best) {
			best = w
		}
	}
	return best
}

func better(j *job, w, than *workerState) bool {
	wf, tf := j.failedOn[w.Name], j.failedOn[than.Name]
	if wf != tf {
		return !wf
	}
	wl, tl := float64(len(w.running))/w.Caps.SpeedFactor, float64(len(than.running))/than.Caps.SpeedFactor
	if wl != tl {
		return wl < tl
	}
	if w.Caps.SpeedFactor != than.Caps.SpeedFactor {
		return w.Caps.SpeedFactor > than.Caps.SpeedFactor
	}
	return len(w.running) < len(than.running)
}

func (s *Scheduler) anyCanBuildLocked(c *class) bool {
	for _, w := range s.sorted {
		if w.Caps.CanBuild(c.system, c.required) {
			return true
		}
	}
	return false
}

// expireUnbuildableLocked fails queued builds that no registered worker
// can take, once they have waited the grace period for one to appear.
func (s *Scheduler) expireUnbuildableLocked(now time.Time) {
	var failed []*job
	for _, acct := range s.order {
		a := s.accounts[acct]
		for _, key := range a.order {
			q := a.classes[key]
			c := q.class
			if s.anyCanBuildLocked(c) {
				c.unbuildableSince = time.Time{}
				continue
			}
			if c.unbuildableSince.IsZero() {
				c.unbuildableSince = now
				s.cfg.Log.Info("no worker can build these yet; waiting for one to join", "system", c.system,
					"features", c.required, "grace", s.cfg.UnbuildableGrace)
			}
			if now.Sub(c.unbuildableSince) >= s.cfg.UnbuildableGrace {
				failed = q.waitedSince(now.Add(-s.cfg.UnbuildableGrace), failed)
			}
		}
	}
	for _, j := range failed {
		msg := s.unbuildableMessageLocked(j)
		s.cfg.Log.Warn("build cannot be placed", "drv", j.req.DrvPath, "reason", msg)
		s.dequeueLocked(j)
		j.finish(&build.Result{Status: build.MiscFailure, ErrorMsg: msg, Infrastructure: true}, nil)
	}
}

func (s *Scheduler) unbuildableMessageLocked(j *job) string {
	var b strings.Builder
	c := j.class
	fmt.Fprintf(&b, "nixfarm has no worker that can build '%s': it needs a '%s' machine", j.req.DrvPath, c.system)
	if len(c.required) > 0 {
		fmt.Fprintf(&b, " with the features {%s}", strings.Join(c.required, ", "))
	} else {
		b.WriteString(" (no special features)")
	}
	if len(s.sorted) == 0 {
		b.WriteString(", and the farm has no workers at all. Ask the farm's operator to start one (nixfarm serve --local-worker, or nixfarm worker on another machine)")
		return b.String()
	}
	fmt.Fprintf(&b, ". The farm's %d workers are:", len(s.sorted))
	for _, w := range s.sorted {
		fmt.Fprintf(&b, "\n  %s (%s)", w.Name, w.Caps)
	}
	b.WriteString("\nTo fix it: list in your builders line (machines file) only the systems and features the farm's workers offer, so Nix builds the rest elsewhere, or ask the farm's operator for such a worker. `nixfarm doctor --drv DRV` checks a derivation against the farm")
	return b.String()
}

// startLocked runs an attempt of j on w.
func (s *Scheduler) startLocked(j *job, w *workerState) {
	ctx, cancel := context.WithCancelCause(j.ctx)
	w.running[j] = cancel
	s.running[j.req.Account]++
	j.attempts++
	if j.attempts == 1 {
		s.cfg.Metrics.BuildStarted(time.Since(j.enqueued))
	}
	j.started = s.now()
	s.dirty = true
	s.cfg.Log.Debug("build placed", "drv", j.req.DrvPath, "account", j.req.Account, "worker", w.Name,
		"attempt", j.attempts, "queued", j.started.Sub(j.enqueued).Round(time.Millisecond))
	if j.req.OnQueue != nil {
		j.published = build.QueueStatus{Worker: w.Name, Attempt: j.attempts, Waited: j.started.Sub(j.queuedAt)}
		s.pub.post(j, j.published)
	}
	go s.run(ctx, cancel, j, w, j.attempts)
}

// errTimedOut and errSilent are the causes the watchdog cancels with.
var (
	errTimedOut = errors.New("timed out")
	errSilent   = errors.New("silent")
)

func (s *Scheduler) run(ctx context.Context, cancel context.CancelCauseFunc, j *job, w *workerState, attempt int) {
	req := *j.req
	if req.OnStart != nil {
		req.OnStart(w.Name, attempt) // outside s.mu: it may write a record
	}
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

	// The build's log is written to only once s.mu is released: a client
	// behind it must never hold up the scheduler.
	var note string
	defer func() {
		if note != "" && j.req.Log != nil {
			io.WriteString(j.req.Log, note)
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(w.running, j)
	if s.running[j.req.Account]--; s.running[j.req.Account] <= 0 {
		delete(s.running, j.req.Account)
	}
	defer s.dispatchLocked()
	var limit *build.LimitError
	switch {
	case err == nil:
		w.failures = 0
		w.built++
		j.class.record(s.now().Sub(j.started))
		j.finish(res, nil)
	case errors.Is(cause, errTimedOut):
		j.finish(&build.Result{Status: build.TimedOut, ErrorMsg: fmt.Sprintf("building '%s' timed out after %d seconds", j.req.DrvPath, int(req.Options.Timeout.Seconds()))}, nil)
	case errors.Is(cause, errSilent):
		j.finish(&build.Result{Status: build.TimedOut, ErrorMsg: fmt.Sprintf("building '%s' timed out after %d seconds of silence", j.req.DrvPath, int(req.Options.MaxSilentTime.Seconds()))}, nil)
	case j.ctx.Err() != nil:
		j.finish(nil, j.ctx.Err())
	case errors.As(err, &limit):
		// Over one of the account's limits: another worker would not
		// change that.
		s.cfg.Log.Info("build failed over an account's limit", "drv", j.req.DrvPath, "account", j.req.Account, "err", err)
		j.finish(&build.Result{Status: build.MiscFailure, ErrorMsg: limit.Msg, Worker: w.Name}, nil)
	case s.closed:
		j.finish(nil, err)
	default:
		note = s.retryLocked(j, w, err)
	}
}

// retryLocked handles an attempt that failed for a reason other than the
// build itself: the worker was lost, or could not run it. It returns the
// line for the build's log, which the caller writes once s.mu is released
// (the retry waits its backoff, so the line comes first).
func (s *Scheduler) retryLocked(j *job, w *workerState, err error) string {
	if errors.Is(err, build.ErrWorkerBusy) {
		// Another build on that worker uses other contents under one of
		// this build's paths: nothing ran, and nobody is at fault. It
		// waits a little and goes to any worker.
		j.attempts--
		j.notBefore = s.now().Add(s.cfg.RetryBackoff)
		s.cfg.Log.Info("build waits for a worker busy with other contents of its paths", "drv", j.req.DrvPath, "worker", w.Name, "err", err)
		s.enqueueLocked(j, true)
		return ""
	}
	j.failedOn[w.Name] = true
	// A worker holding other contents under a path of the build, which it
	// cannot remove, fails the attempt like any other fault of the
	// worker's: an honest one rarely does (only when two accounts build
	// one derivation on different inputs), and a lying one must not be
	// asked first for ever.
	if cur, ok := s.workers[w.Name]; ok && cur == w {
		w.failures++
		if w.failures >= s.cfg.QuarantineAfter {
			w.quarantinedUntil = s.now().Add(s.cfg.QuarantineFor)
			s.cfg.Metrics.WorkerQuarantined(w.Name)
			s.cfg.Log.Warn("worker quarantined", "worker", w.Name, "failures", w.failures, "until", w.quarantinedUntil.Format(time.RFC3339))
		}
	}
	if j.attempts >= s.cfg.MaxAttempts {
		s.cfg.Log.Warn("build failed on every attempt", "drv", j.req.DrvPath, "attempts", j.attempts, "err", err)
		j.finish(&build.Result{Status: build.MiscFailure, Infrastructure: true,
			ErrorMsg: fmt.Sprintf("nixfarm tried to build '%s' %d times and no worker could run it; the last error: %s", j.req.DrvPath, j.attempts,
				publicerr.Message(context.Background(), s.cfg.Log, err, "build failed on every attempt", "drv", j.req.DrvPath))}, nil)
		return ""
	}
	backoff := s.cfg.RetryBackoff << (j.attempts - 1)
	j.notBefore = s.now().Add(backoff)
	s.cfg.Metrics.BuildRetried()
	s.cfg.Log.Warn("build will be retried", "drv", j.req.DrvPath, "worker", w.Name, "attempt", j.attempts, "backoff", backoff, "err", err)
	s.enqueueLocked(j, true)
	return fmt.Sprintf("nixfarm: %v; retrying on another worker\n", err)
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
