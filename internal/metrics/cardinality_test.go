package metrics

import (
	"fmt"
	"strings"
	"testing"
)

// TestQueueDepthBounded: the systems and features of queued builds come
// from clients' derivations, and /metrics is served to anyone. One
// account queueing builds of thousands of made-up systems, or of systems
// that are not names at all, must not make as many series, nor put its
// strings in the labels.
func TestQueueDepthBounded(t *testing.T) {
	var queues []QueueDepth
	for i := range 5000 {
		queues = append(queues, QueueDepth{System: fmt.Sprintf("sys%d", i), Queued: 1})
	}
	hostile := []QueueDepth{
		{System: "x86_64-linux\n# TYPE evil counter", Queued: 1},
		{System: strings.Repeat("a", 100000), Queued: 1},
		{System: "x86_64-linux", Features: []string{"kvm", "<script>"}, Queued: 1},
		{System: "", Queued: 1},
	}
	queues = append(queues, hostile...)
	// Real classes, with more builds waiting, keep their labels.
	queues = append(queues, QueueDepth{System: "x86_64-linux", Queued: 40},
		QueueDepth{System: "x86_64-linux", Features: []string{"big-parallel", "kvm"}, Queued: 30})
	f := New(nil)
	f.WatchScheduler(fakeScheduler{SchedulerState{Queues: queues}})
	fams, err := f.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	series, total := 0, 0.0
	labels := map[string]float64{}
	for _, fam := range fams {
		if fam.GetName() != "nixfarm_queue_depth" {
			continue
		}
		for _, m := range fam.GetMetric() {
			series++
			total += m.GetGauge().GetValue()
			var key []string
			for _, l := range m.GetLabel() {
				if len(l.GetValue()) > 256 || strings.ContainsAny(l.GetValue(), "\n<> ") {
					t.Errorf("label %s=%.80q comes from a client as it is", l.GetName(), l.GetValue())
				}
				key = append(key, l.GetValue())
			}
			labels[strings.Join(key, "/")] = m.GetGauge().GetValue()
		}
	}
	if series > MaxQueueSeries+1 {
		t.Errorf("%d series of nixfarm_queue_depth, want at most %d", series, MaxQueueSeries+1)
	}
	if want := float64(5000 + len(hostile) + 70); total != want {
		t.Errorf("the series sum to %v builds, want %v", total, want)
	}
	if labels["/x86_64-linux"] != 40 || labels["big-parallel,kvm/x86_64-linux"] != 30 {
		t.Errorf("the largest real classes lost their labels: %v", labels["/x86_64-linux"])
	}
}
