package scheduler_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/metrics"
	"github.com/nixfarm/nixfarm/internal/scheduler"
)

// gather returns the value of each series of name in m, by its labels'
// values joined with "/".
func gather(t *testing.T, m *metrics.Farm, name string) map[string]float64 {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, fam := range fams {
		if fam.GetName() != name {
			continue
		}
		for _, s := range fam.GetMetric() {
			key := ""
			for i, l := range s.GetLabel() {
				if i > 0 {
					key += "/"
				}
				key += l.GetValue()
			}
			switch {
			case s.Gauge != nil:
				out[key] = s.GetGauge().GetValue()
			case s.Counter != nil:
				out[key] = s.GetCounter().GetValue()
			case s.Histogram != nil:
				out[key] = float64(s.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

func TestMetricsQueuesAndSlots(t *testing.T) {
	m := metrics.New(nil)
	s := newScheduler(t, scheduler.Config{Metrics: m})
	m.WatchScheduler(s)
	w := &fake{name: "w", release: make(chan struct{})}
	s.AddWorker(scheduler.Worker{Name: "w", Caps: caps("x86_64-linux", "kvm", "", 1, 1), Builder: w})
	results := make(chan error, 4)
	for i, features := range []string{"", "", "kvm", "kvm,big-parallel"} {
		go func() {
			_, err := schedule(s, context.Background(), request(fmt.Sprint("b", i), "x86_64-linux", features, "alice"))
			results <- err
		}()
	}
	// One runs, two wait for the worker, one no worker can take.
	waitFor(t, func() bool { return s.Queued() == 3 })
	depth := gather(t, m, "nixfarm_queue_depth")
	// Which of the first three runs is not known: the queue holds the
	// other two of them and the unbuildable one.
	total := 0.0
	for _, n := range depth {
		total += n
	}
	if total != 3 || depth["big-parallel,kvm/x86_64-linux"] != 1 {
		t.Errorf("queue depth %v", depth)
	}
	if got := gather(t, m, "nixfarm_builds_running")[""]; got != 1 {
		t.Errorf("builds running %v, want 1", got)
	}
	if used, all := gather(t, m, "nixfarm_worker_slots_used"), gather(t, m, "nixfarm_worker_slots_total"); used["w"] != 1 || all["w"] != 1 {
		t.Errorf("slots used %v of %v", used, all)
	}
	close(w.release)
	waitFor(t, func() bool { return s.Queued() == 1 })
	if got := gather(t, m, "nixfarm_build_queue_seconds")[""]; got != 3 {
		t.Errorf("queue time observations %v, want 3 (one per started build)", got)
	}
	if depth := gather(t, m, "nixfarm_queue_depth"); len(depth) != 1 || depth["big-parallel,kvm/x86_64-linux"] != 1 {
		t.Errorf("after the builds: queue depth %v", depth)
	}
}

func TestMetricsRetriesQuarantinesLosses(t *testing.T) {
	m := metrics.New(nil)
	s := newScheduler(t, scheduler.Config{Metrics: m, RetryBackoff: time.Millisecond, QuarantineAfter: 2, QuarantineFor: time.Hour})
	bad := &fake{name: "bad", fail: errors.New("disk full")}
	s.AddWorker(scheduler.Worker{Name: "bad", Caps: caps("x86_64-linux", "", "", 4, 100), Builder: bad})
	s.AddWorker(scheduler.Worker{Name: "good", Caps: caps("x86_64-linux", "", "", 4, 1), Builder: &fake{name: "good"}})
	for i := 0; i < 2; i++ {
		if res, err := schedule(s, context.Background(), request(fmt.Sprint("r", i), "x86_64-linux", "", "alice")); err != nil || res.Status != build.Built {
			t.Fatalf("build %d: %+v %v", i, res, err)
		}
	}
	if got := gather(t, m, "nixfarm_build_retries_total")[""]; got != 2 {
		t.Errorf("retries %v, want 2", got)
	}
	if got := gather(t, m, "nixfarm_worker_quarantines_total"); got["bad"] != 1 || len(got) != 1 {
		t.Errorf("quarantines %v, want bad: 1", got)
	}
	s.RemoveWorker("good", errors.New("heartbeat timed out"))
	s.RemoveWorker("nobody", errors.New("not registered"))
	if got := gather(t, m, "nixfarm_worker_losses_total"); got["good"] != 1 || len(got) != 1 {
		t.Errorf("losses %v, want good: 1", got)
	}
}

// A worker that leaves on purpose (an agent's goodbye) while idle is not
// lost; one that leaves so with a build running is, and so is one that
// just goes.
func TestMetricsCleanLeaveIsNoLoss(t *testing.T) {
	m := metrics.New(nil)
	s := newScheduler(t, scheduler.Config{Metrics: m, RetryBackoff: time.Millisecond})
	s.AddWorker(scheduler.Worker{Name: "idle", Caps: caps("x86_64-linux", "", "", 4, 1), Builder: &fake{name: "idle"}})
	s.RemoveWorker("idle", fmt.Errorf("said goodbye: %w", scheduler.ErrLeft))
	if got := gather(t, m, "nixfarm_worker_losses_total"); len(got) != 0 {
		t.Errorf("an idle worker that said goodbye counted lost: %v", got)
	}

	busy := &fake{name: "busy", block: true}
	s.AddWorker(scheduler.Worker{Name: "busy", Caps: caps("x86_64-linux", "", "", 4, 1), Builder: busy})
	done := make(chan error, 1)
	go func() {
		_, err := schedule(s, context.Background(), request("b", "x86_64-linux", "", "alice"))
		done <- err
	}()
	waitFor(t, func() bool { return len(busy.names()) == 1 })
	s.RemoveWorker("busy", fmt.Errorf("said goodbye: %w", scheduler.ErrLeft))
	if got := gather(t, m, "nixfarm_worker_losses_total"); got["busy"] != 1 || len(got) != 1 {
		t.Errorf("losses %v, want busy: 1 (it left with a build running)", got)
	}
	s.AddWorker(scheduler.Worker{Name: "after", Caps: caps("x86_64-linux", "", "", 4, 1), Builder: &fake{name: "after"}})
	if err := <-done; err != nil {
		t.Errorf("the build of the lost worker, retried: %v", err)
	}
}
