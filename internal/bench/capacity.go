package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// instant is a worker that finishes every build at once.
type instant struct{}

func (instant) Build(ctx context.Context, req *build.Request) (*build.Result, error) {
	return &build.Result{Status: build.Built}, nil
}

// Capacity is S6: the scheduler alone, with in-process workers that
// finish instantly.
type Capacity struct {
	Dispatches    int
	PerSecond     float64
	Queued        int
	QueuedRSSMiB  float64
	BaselineMiB   float64
}

func capacityRequest(i int, account string) *build.Request {
	name := fmt.Sprintf("cap-%d", i)
	return &build.Request{
		DrvPath: storepath.Path("/nix/store/" + strings.Repeat("c", 32) + "-" + name + ".drv"),
		Drv:     &derivation.Basic{Name: name, Platform: "x86_64-linux", Env: map[string]string{}},
		Account: account,
	}
}

// MeasureCapacity dispatches n builds from 4 accounts onto 16 instant
// workers of 8 slots each, then queues queued builds with no worker and
// reads the resident memory.
func MeasureCapacity(n, queued int) (Capacity, error) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	c := Capacity{Dispatches: n, Queued: queued}

	s := scheduler.New(scheduler.Config{Log: quiet})
	for i := 0; i < 16; i++ {
		caps := worker.Capabilities{Systems: []string{"x86_64-linux"}, MaxJobs: 8, SpeedFactor: 1}
		if err := s.AddWorker(scheduler.Worker{Name: fmt.Sprint("w", i), Kind: "local", Caps: caps, Builder: instant{}}); err != nil {
			return c, err
		}
	}
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Schedule(context.Background(), capacityRequest(i, fmt.Sprint("account", i%4)))
		}()
	}
	wg.Wait()
	c.PerSecond = float64(n) / time.Since(start).Seconds()
	s.Close()

	runtime.GC()
	c.BaselineMiB = rssMiB()
	s = scheduler.New(scheduler.Config{Log: quiet, UnbuildableGrace: time.Hour})
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < queued; i++ {
		go s.Schedule(ctx, capacityRequest(i, fmt.Sprint("account", i%4)))
	}
	for s.Queued() < queued {
		time.Sleep(10 * time.Millisecond)
	}
	runtime.GC()
	c.QueuedRSSMiB = rssMiB()
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
	c, err := MeasureCapacity(20_000, e.cfg.S6Queued)
	if err != nil {
		return nil, err
	}
	e.progress("S6 %.0f dispatches/s; %.0f MiB resident with %d queued", c.PerSecond, c.QueuedRSSMiB, c.Queued)
	fast := c.PerSecond >= 2000
	small := c.QueuedRSSMiB < 1024
	return []Result{
		{Scenario: "S6 coordinator: dispatches", Protocol: "in-process", Unit: "dispatches/s", HigherIsBetter: true,
			Values: map[string]float64{Nixfarm: c.PerSecond}, Target: "≥ 2,000/s", Met: &fast},
		{Scenario: fmt.Sprintf("S6 coordinator: memory with %d queued", c.Queued), Protocol: "in-process", Unit: "MiB",
			Values: map[string]float64{Nixfarm: c.QueuedRSSMiB}, Target: "< 1 GiB resident", Met: &small},
	}, nil
}
