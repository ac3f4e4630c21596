package coordinator_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/metrics"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// Builds are counted by final status as they are recorded; only those a
// worker ran have a duration.
func TestMetricsBuildsByStatus(t *testing.T) {
	f := newFarm(t)
	m := metrics.New(nil)
	c, err := coordinator.New(f.st.(store.Views), testutil.Scheduler(t, f.builder), f.db, filepath.Join(t.TempDir(), "logs"), coordinator.Options{Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ok := f.addDrv(t, "ok", []string{"out"}, nil)
	broken := f.addDrv(t, "broken", []string{"out"}, nil)
	f.builder.fail["broken"] = true
	for _, c2 := range []struct {
		drv  string
		want build.Status
	}{{"ok", build.Built}, {"ok", build.AlreadyValid}, {"broken", build.PermanentFailure}} {
		p := ok
		if c2.drv == "broken" {
			p = broken
		}
		d, _ := store.ReadDerivation(ctx, f.st, p)
		res, err := c.BuildDerivation(ctx, &build.Request{DrvPath: p, Drv: d.Basic(c2.drv, nil), Account: "alice"})
		if err != nil || res.Status != c2.want {
			t.Fatalf("%s: %v %+v", c2.drv, err, res)
		}
	}
	c.Wait()
	want := map[string]float64{"built": 1, "cached": 1, "failed": 1, "timed-out": 0, "cancelled": 0, "infrastructure-error": 0, "substituted": 0}
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	durations := uint64(0)
	for _, fam := range fams {
		switch fam.GetName() {
		case "nixfarm_builds_total":
			for _, s := range fam.GetMetric() {
				got[s.GetLabel()[0].GetValue()] = s.GetCounter().GetValue()
			}
		case "nixfarm_build_duration_seconds":
			durations = fam.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	for s, n := range want {
		if got[s] != n {
			t.Errorf("builds_total{status=%s} = %v, want %v", s, got[s], n)
		}
	}
	// The fake builder names its worker only when it succeeds.
	if durations != 1 {
		t.Errorf("%d build durations, want 1", durations)
	}
}
