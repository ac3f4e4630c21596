package bench

import (
	"context"
	"testing"
)

// The S6 benchmarks. CI runs them once (-benchtime=1x) so they keep
// working; `nixfarm bench --scenarios S6` reports the same figures.

func BenchmarkSchedulerDispatch(b *testing.B) {
	perSecond, err := SchedulerDispatch(b.N)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(perSecond, "dispatches/s")
}

func BenchmarkCoordinatorDispatch(b *testing.B) {
	perSecond, err := CoordinatorDispatch(context.Background(), b.TempDir(), b.N)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(perSecond, "builds/s")
}

// BenchmarkQueuedMemory queues b.N builds (at least 1,000) with no worker
// and reports the resident memory they take.
func BenchmarkQueuedMemory(b *testing.B) {
	n := max(b.N, 1000)
	baseline, queued, err := QueuedMemory(context.Background(), b.TempDir(), n)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(queued, "MiB-resident")
	b.ReportMetric((queued-baseline)*1024/float64(n), "KiB/queued-build")
}

func TestCapacity(t *testing.T) {
	c, err := MeasureCapacity(context.Background(), t.TempDir(), 500, 500)
	if err != nil {
		t.Fatal(err)
	}
	if c.SchedulerPerSecond <= 0 || c.CoordinatorPerSecond <= 0 || c.QueuedRSSMiB <= 0 {
		t.Fatalf("capacity not measured: %+v", c)
	}
}
