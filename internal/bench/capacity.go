package bench

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/blob"
	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/db"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// instant is a worker that finishes every build at once.
type instant struct{}

func (instant) Build(ctx context.Context, req *build.Request) (*build.Result, error) {
	now := time.Now()
	return &build.Result{Status: build.Built, StartTime: now, StopTime: now}, nil
}

// Capacity is S6: the coordinator alone, with in-process workers that
// finish instantly.
type Capacity struct {
	Dispatches int
	// SchedulerPerSecond counts dispatches through the scheduler alone.
	SchedulerPerSecond float64
	// CoordinatorPerSecond counts whole builds through the coordinator:
	// the store lookups, the build record written to SQLite, scheduling,
	// and the result recorded.
	CoordinatorPerSecond float64
	Queued               int
	// QueuedRSSMiB is this process's resident memory with Queued builds
	// waiting in the coordinator; BaselineMiB is the same before them.
	QueuedRSSMiB, BaselineMiB float64
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// capacityRequest is build i of a run: a distinct input-addressed
// derivation with one output, as a client would send it.
func capacityRequest(run string, i int, account string) *build.Request {
	name := fmt.Sprintf("cap-%s-%d", run, i)
	drvPath, _ := storepath.MakeText(name+".drv", []byte(name), nil)
	out, _ := storepath.MakeText(name, []byte(name), nil)
	return &build.Request{
		DrvPath: drvPath,
		Drv: &derivation.Basic{Name: name, Platform: "x86_64-linux", Builder: "/bin/sh",
			Outputs: map[string]derivation.Output{"out": {Path: string(out)}},
			Env:     map[string]string{"out": string(out)}},
		Account: account,
	}
}

// instantWorkers adds 16 instant workers of 8 slots each.
func instantWorkers(s *scheduler.Scheduler) error {
	for i := 0; i < 16; i++ {
		caps := worker.Capabilities{Systems: []string{"x86_64-linux"}, MaxJobs: 8, SpeedFactor: 1}
		if err := s.AddWorker(scheduler.Worker{Name: fmt.Sprint("w", i), Kind: "local", Caps: caps, Builder: instant{}}); err != nil {
			return err
		}
	}
	return nil
}

// SchedulerDispatch submits n builds from 4 accounts at once and returns
// how many the scheduler dispatched per second onto 16 instant workers.
func SchedulerDispatch(n int) (float64, error) {
	s := scheduler.New(scheduler.Config{Log: quiet})
	defer s.Close()
	if err := instantWorkers(s); err != nil {
		return 0, err
	}
	reqs := make([]*build.Request, n)
	for i := range reqs {
		reqs[i] = capacityRequest("sched", i, fmt.Sprint("account", i%4))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	wg.Add(n)
	start := time.Now()
	for _, req := range reqs {
		s.Submit(context.Background(), req, func(res *build.Result, err error) {
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
			}
			wg.Done()
		})
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds(), firstErr
}

// farm is a coordinator over a fresh SQLite database and blob directory.
type farm struct {
	db    *sql.DB
	sched *scheduler.Scheduler
	coord *coordinator.Coordinator
}

func newFarm(ctx context.Context, dir string, cfg scheduler.Config) (*farm, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	database, err := db.Open(ctx, filepath.Join(dir, "nixfarm.db"))
	if err != nil {
		return nil, err
	}
	blobs, err := blob.NewDir(filepath.Join(dir, "nar"))
	if err != nil {
		database.Close()
		return nil, err
	}
	cfg.Log = quiet
	f := &farm{db: database, sched: scheduler.New(cfg)}
	f.coord, err = coordinator.New(store.NewLocal(database, blobs), f.sched, database, filepath.Join(dir, "logs"),
		coordinator.Options{Log: quiet})
	if err != nil {
		f.close()
		return nil, err
	}
	return f, nil
}

func (f *farm) close() {
	f.sched.Close()
	if f.coord != nil {
		f.coord.Wait()
	}
	f.db.Close()
}

// CoordinatorDispatch runs n builds through a coordinator from 64
// clients at once and returns the builds finished per second.
func CoordinatorDispatch(ctx context.Context, dir string, n int) (float64, error) {
	f, err := newFarm(ctx, dir, scheduler.Config{})
	if err != nil {
		return 0, err
	}
	defer f.close()
	if err := instantWorkers(f.sched); err != nil {
		return 0, err
	}
	const clients = 64
	errs := make(chan error, clients)
	start := time.Now()
	for c := 0; c < clients; c++ {
		go func() {
			for i := c; i < n; i += clients {
				req := capacityRequest("coord", i, fmt.Sprint("account", c%4))
				res, err := f.coord.BuildDerivation(ctx, req)
				if err == nil && !res.Status.Success() {
					err = fmt.Errorf("build %s: %s", req.DrvPath, res.Status)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for c := 0; c < clients; c++ {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	return float64(n) / time.Since(start).Seconds(), err
}

// QueuedMemory queues n builds in a coordinator that has no worker, as
// 64 clients that submit and leave (the builds stay queued), and returns
// the process's resident memory before and with them.
func QueuedMemory(ctx context.Context, dir string, n int) (baseline, queued float64, err error) {
	runtime.GC()
	baseline = rssMiB()
	f, err := newFarm(ctx, dir, scheduler.Config{UnbuildableGrace: time.Hour})
	if err != nil {
		return 0, 0, err
	}
	defer f.close()
	const clients = 64
	errs := make(chan error, clients)
	for c := 0; c < clients; c++ {
		go func() {
			for i := c; i < n; i += clients {
				// The client leaves once its build is queued; the build
				// stays, as it does when a real client disconnects.
				cctx, cancel := context.WithCancel(ctx)
				req := capacityRequest("queued", i, fmt.Sprint("account", c%4))
				ret := make(chan error, 1)
				go func() {
					_, err := f.coord.BuildDerivation(cctx, req)
					ret <- err
				}()
				for f.coord.Waiting(req.DrvPath) == 0 && len(ret) == 0 {
					time.Sleep(50 * time.Microsecond)
				}
				if len(ret) > 0 { // returned before it was queued
					cancel()
					errs <- fmt.Errorf("build %s was not queued: %v", req.DrvPath, <-ret)
					return
				}
				cancel()
				<-ret
			}
			errs <- nil
		}()
	}
	for c := 0; c < clients; c++ {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		return baseline, 0, err
	}
	if q := f.sched.Queued(); q != n {
		return baseline, 0, fmt.Errorf("%d builds queued, want %d", q, n)
	}
	runtime.GC()
	return baseline, rssMiB(), nil
}

// MeasureCapacity runs the three S6 measurements in a temporary directory
// under dir.
func MeasureCapacity(ctx context.Context, dir string, n, queued int) (Capacity, error) {
	c := Capacity{Dispatches: n, Queued: queued}
	tmp, err := os.MkdirTemp(dir, "s6-")
	if err != nil {
		return c, err
	}
	defer os.RemoveAll(tmp)
	if c.SchedulerPerSecond, err = SchedulerDispatch(n); err != nil {
		return c, fmt.Errorf("scheduler dispatch: %w", err)
	}
	if c.CoordinatorPerSecond, err = CoordinatorDispatch(ctx, filepath.Join(tmp, "dispatch"), n); err != nil {
		return c, fmt.Errorf("coordinator dispatch: %w", err)
	}
	if c.BaselineMiB, c.QueuedRSSMiB, err = QueuedMemory(ctx, filepath.Join(tmp, "queued"), queued); err != nil {
		return c, fmt.Errorf("queued builds: %w", err)
	}
	return c, nil
}

// rssMiB reads this process's resident set size.
func rssMiB() float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			var kb float64
			fmt.Sscanf(strings.TrimPrefix(line, "VmRSS:"), "%f", &kb)
			return kb / 1024
		}
	}
	return 0
}

func (e *env) s6(ctx context.Context) ([]Result, error) {
	c, err := MeasureCapacity(ctx, e.dir, 20_000, e.cfg.S6Queued)
	if err != nil {
		return nil, err
	}
	e.progress("S6 %.0f builds/s through the coordinator (%.0f/s scheduler alone); %.0f MiB resident with %d queued (%.0f before)",
		c.CoordinatorPerSecond, c.SchedulerPerSecond, c.QueuedRSSMiB, c.Queued, c.BaselineMiB)
	fast := c.CoordinatorPerSecond >= 2000
	small := c.QueuedRSSMiB < 1024
	return []Result{
		{Scenario: "S6 coordinator: builds dispatched and recorded", Protocol: "in-process", Unit: "builds/s", HigherIsBetter: true,
			Values: map[string]float64{Nixfarm: c.CoordinatorPerSecond}, Target: "≥ 2,000/s", Met: &fast},
		{Scenario: "S6 scheduler alone: dispatches", Protocol: "in-process", Unit: "dispatches/s", HigherIsBetter: true,
			Values: map[string]float64{Nixfarm: c.SchedulerPerSecond}},
		{Scenario: fmt.Sprintf("S6 coordinator: memory with %d queued", c.Queued), Protocol: "in-process", Unit: "MiB",
			Values: map[string]float64{Nixfarm: c.QueuedRSSMiB}, Target: "< 1 GiB resident", Met: &small},
	}, nil
}
