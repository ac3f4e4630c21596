package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/nixfarm/nixfarm/internal/build"
)

func TestNilFarmIsANoOp(t *testing.T) {
	var f *Farm
	f.BuildEnded(&build.Result{Status: build.Built}, nil)
	f.BuildStarted(time.Second)
	f.BuildRetried()
	f.WorkerLost("w")
	f.WorkerQuarantined("w")
	f.SSHConnOpened()
	f.SSHConnClosed()
	f.SSHHandshakeFailed("timeout")
	f.SSHBytes(1, 2)
	f.CacheHit("nar")
	f.Substitution("ok")
	f.WatchScheduler(fakeScheduler{})
	f.WatchStore(&fakeStore{}, nil)
	if f.Registry() != nil {
		t.Error("a nil Farm has a registry")
	}
	rec := httptest.NewRecorder()
	f.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("a nil Farm's handler answered %d, want 404", rec.Code)
	}
}

func TestStatus(t *testing.T) {
	for _, c := range []struct {
		res  *build.Result
		err  error
		want string
	}{
		{&build.Result{Status: build.Built}, nil, "built"},
		{&build.Result{Status: build.PermanentFailure}, nil, "failed"},
		{&build.Result{Status: build.OutputRejected}, nil, "failed"},
		{&build.Result{Status: build.TimedOut}, nil, "timed-out"},
		{&build.Result{Status: build.MiscFailure}, nil, "failed"}, // a farm-side error is marked so (as the records have it)
		{&build.Result{Status: build.MiscFailure, Infrastructure: true}, nil, "infrastructure-error"},
		{&build.Result{Status: build.Substituted}, nil, "substituted"},
		{&build.Result{Status: build.AlreadyValid}, nil, "cached"},
		{nil, context.Canceled, "cancelled"},
		{nil, fmt.Errorf("waiting: %w", context.DeadlineExceeded), "cancelled"},
		{nil, errors.New("the farm is shutting down"), "infrastructure-error"},
	} {
		if got := Status(c.res, c.err); got != c.want {
			t.Errorf("Status(%v, %v) = %s, want %s", c.res, c.err, got, c.want)
		}
	}
}

func TestBuildHooks(t *testing.T) {
	f := New(nil)
	start := time.Unix(1000, 0)
	f.BuildEnded(&build.Result{Status: build.Built, Worker: "w1", StartTime: start, StopTime: start.Add(3 * time.Second)}, nil)
	f.BuildEnded(&build.Result{Status: build.PermanentFailure, Worker: "w1", StartTime: start, StopTime: start.Add(20 * time.Second)}, nil)
	// Neither ran on a worker: counted, but with no duration.
	f.BuildEnded(&build.Result{Status: build.AlreadyValid, StartTime: start, StopTime: start}, nil)
	f.BuildEnded(nil, context.Canceled)
	f.BuildStarted(2 * time.Second)
	f.BuildRetried()
	f.BuildRetried()

	want := map[string]float64{"built": 1, "failed": 1, "cached": 1, "cancelled": 1, "timed-out": 0, "infrastructure-error": 0, "substituted": 0}
	for status, n := range want {
		if got := testutil.ToFloat64(f.builds.WithLabelValues(status)); got != n {
			t.Errorf("builds_total{status=%q} = %v, want %v", status, got, n)
		}
	}
	if got := testutil.ToFloat64(f.retries); got != 2 {
		t.Errorf("build_retries_total = %v, want 2", got)
	}
	err := testutil.CollectAndCompare(f.buildDuration, strings.NewReader(`
# HELP nixfarm_build_duration_seconds How long builds that a worker ran took, from start to end, whatever their outcome.
# TYPE nixfarm_build_duration_seconds histogram
nixfarm_build_duration_seconds_bucket{le="0.1"} 0
nixfarm_build_duration_seconds_bucket{le="0.5"} 0
nixfarm_build_duration_seconds_bucket{le="1"} 0
nixfarm_build_duration_seconds_bucket{le="5"} 1
nixfarm_build_duration_seconds_bucket{le="15"} 1
nixfarm_build_duration_seconds_bucket{le="30"} 2
nixfarm_build_duration_seconds_bucket{le="60"} 2
nixfarm_build_duration_seconds_bucket{le="120"} 2
nixfarm_build_duration_seconds_bucket{le="300"} 2
nixfarm_build_duration_seconds_bucket{le="600"} 2
nixfarm_build_duration_seconds_bucket{le="1200"} 2
nixfarm_build_duration_seconds_bucket{le="1800"} 2
nixfarm_build_duration_seconds_bucket{le="3600"} 2
nixfarm_build_duration_seconds_bucket{le="7200"} 2
nixfarm_build_duration_seconds_bucket{le="14400"} 2
nixfarm_build_duration_seconds_bucket{le="28800"} 2
nixfarm_build_duration_seconds_bucket{le="+Inf"} 2
nixfarm_build_duration_seconds_sum 23
nixfarm_build_duration_seconds_count 2
`))
	if err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(f.queueTime); n != 1 {
		t.Errorf("build_queue_seconds: %d series", n)
	}
}

func TestWorkerHooks(t *testing.T) {
	f := New(nil)
	f.WorkerLost("agent-1")
	f.WorkerLost("agent-1")
	f.WorkerQuarantined("static-2")
	err := testutil.CollectAndCompare(f.Registry(), strings.NewReader(`
# HELP nixfarm_worker_losses_total Workers lost, by worker: an agent that went without saying goodbye (dropped connection, heartbeats stopped), or left with builds running.
# TYPE nixfarm_worker_losses_total counter
nixfarm_worker_losses_total{worker="agent-1"} 2
# HELP nixfarm_worker_quarantines_total Times a worker was quarantined after consecutive failures, by worker.
# TYPE nixfarm_worker_quarantines_total counter
nixfarm_worker_quarantines_total{worker="static-2"} 1
`), "nixfarm_worker_losses_total", "nixfarm_worker_quarantines_total")
	if err != nil {
		t.Error(err)
	}
}

func TestSSHHooks(t *testing.T) {
	f := New(nil)
	f.SSHConnOpened()
	f.SSHConnOpened()
	f.SSHConnClosed()
	f.SSHHandshakeFailed("refused-key")
	f.SSHHandshakeFailed("timeout")
	f.SSHHandshakeFailed("timeout")
	f.SSHBytes(100, 2000)
	f.SSHBytes(1, 0)
	// The agent listener's, apart from the client's.
	f.ConnOpened(ListenerAgent)
	f.ConnOpened(ListenerAgent)
	f.ConnOpened(ListenerAgent)
	f.ConnClosed(ListenerAgent)
	f.HandshakeFailed(ListenerAgent, "refused-credential")
	f.HandshakeFailed(ListenerAgent, "timeout")
	hs := func(l, r string) float64 { return testutil.ToFloat64(f.sshHandshake.WithLabelValues(l, r)) }
	for name, c := range map[string]struct {
		got, want float64
	}{
		"connections_total":        {testutil.ToFloat64(f.sshConns.WithLabelValues("client")), 2},
		"connections_open":         {testutil.ToFloat64(f.sshOpen.WithLabelValues("client")), 1},
		"refused-key":              {hs("client", "refused-key"), 1},
		"timeout":                  {hs("client", "timeout"), 2},
		"protocol":                 {hs("client", "protocol"), 0},
		"caps":                     {hs("client", "caps"), 0},
		"agent connections_total":  {testutil.ToFloat64(f.sshConns.WithLabelValues("agent")), 3},
		"agent connections_open":   {testutil.ToFloat64(f.sshOpen.WithLabelValues("agent")), 2},
		"agent refused-credential": {hs("agent", "refused-credential"), 1},
		"agent timeout":            {hs("agent", "timeout"), 1},
		"agent protocol":           {hs("agent", "protocol"), 0},
		"handshake series":         {float64(testutil.CollectAndCount(f.sshHandshake)), float64(len(HandshakeReasons) + len(AgentHandshakeReasons))},
		"ssh_bytes_in_total":       {testutil.ToFloat64(f.sshBytesIn), 101},
		"ssh_bytes_out_total":      {testutil.ToFloat64(f.sshBytesOut), 2000},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", name, c.got, c.want)
		}
	}
}

func TestCacheAndSubstitutionHooks(t *testing.T) {
	f := New(nil)
	f.CacheHit("narinfo")
	f.CacheHit("narinfo")
	f.CacheHit("nar")
	f.Substitution("ok")
	f.Substitution("refused")
	f.Substitution("") // a fetch given up on: not counted
	err := testutil.CollectAndCompare(f.Registry(), strings.NewReader(`
# HELP nixfarm_binary_cache_hits_total Binary cache requests served, by kind: narinfo, nar.
# TYPE nixfarm_binary_cache_hits_total counter
nixfarm_binary_cache_hits_total{kind="nar"} 1
nixfarm_binary_cache_hits_total{kind="narinfo"} 2
# HELP nixfarm_substitutions_total Paths fetched from upstream caches, per attempt on one cache, by result: ok, refused (the farm would not take it), failed.
# TYPE nixfarm_substitutions_total counter
nixfarm_substitutions_total{result="failed"} 0
nixfarm_substitutions_total{result="ok"} 1
nixfarm_substitutions_total{result="refused"} 1
`), "nixfarm_binary_cache_hits_total", "nixfarm_substitutions_total")
	if err != nil {
		t.Error(err)
	}
}

type fakeScheduler struct{ st SchedulerState }

func (s fakeScheduler) MetricsState() SchedulerState { return s.st }

func TestSchedulerCollector(t *testing.T) {
	f := New(nil)
	f.WatchScheduler(fakeScheduler{SchedulerState{
		Queues: []QueueDepth{
			{System: "x86_64-linux", Queued: 3},
			{System: "x86_64-linux", Features: []string{"big-parallel", "kvm"}, Queued: 2},
		},
		Workers: []WorkerSlots{{Name: "local", Used: 1, Total: 4}, {Name: "agent-a", Used: 2, Total: 2}},
	}})
	err := testutil.CollectAndCompare(f.Registry(), strings.NewReader(`
# HELP nixfarm_builds_queued Builds waiting for a worker, in all.
# TYPE nixfarm_builds_queued gauge
nixfarm_builds_queued 5
# HELP nixfarm_builds_running Build attempts running on workers.
# TYPE nixfarm_builds_running gauge
nixfarm_builds_running 3
# HELP nixfarm_queue_depth Builds waiting for a worker, by system and required features (comma-separated, empty for none); classes with none waiting are left out, and beyond the 32 largest, or with a system or feature that is not a name, are summed as the system (other).
# TYPE nixfarm_queue_depth gauge
nixfarm_queue_depth{features="",system="x86_64-linux"} 3
nixfarm_queue_depth{features="big-parallel,kvm",system="x86_64-linux"} 2
# HELP nixfarm_worker_slots_total A worker's slots (its max-jobs), by worker.
# TYPE nixfarm_worker_slots_total gauge
nixfarm_worker_slots_total{worker="agent-a"} 2
nixfarm_worker_slots_total{worker="local"} 4
# HELP nixfarm_worker_slots_used A worker's slots its running builds use, by worker.
# TYPE nixfarm_worker_slots_used gauge
nixfarm_worker_slots_used{worker="agent-a"} 2
nixfarm_worker_slots_used{worker="local"} 1
`), "nixfarm_builds_queued", "nixfarm_builds_running", "nixfarm_queue_depth", "nixfarm_worker_slots_total", "nixfarm_worker_slots_used")
	if err != nil {
		t.Error(err)
	}
}

type fakeStore struct {
	mu           sync.Mutex
	calls        int
	paths, bytes int64
	err          error
}

func (s *fakeStore) Stats(ctx context.Context) (int64, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	return s.paths, s.bytes, s.err
}

func TestStoreCollectorCachesItsAnswer(t *testing.T) {
	now := time.Unix(1000, 0)
	st := &fakeStore{paths: 7, bytes: 4096}
	f := New(nil)
	f.WatchStore(st, func() time.Time { return now })
	want := func(paths, bytes int64) string {
		return fmt.Sprintf(`
# HELP nixfarm_store_bytes Sum of the NAR sizes of the farm store's objects, in bytes.
# TYPE nixfarm_store_bytes gauge
nixfarm_store_bytes %d
# HELP nixfarm_store_paths Store objects in the farm store (one content of one store path).
# TYPE nixfarm_store_paths gauge
nixfarm_store_paths %d
`, bytes, paths)
	}
	scrape := func(w string) {
		t.Helper()
		if err := testutil.CollectAndCompare(f.Registry(), strings.NewReader(w), "nixfarm_store_bytes", "nixfarm_store_paths"); err != nil {
			t.Error(err)
		}
	}
	scrape(want(7, 4096))
	st.paths, st.bytes = 8, 5000
	now = now.Add(StoreTTL - time.Millisecond)
	scrape(want(7, 4096)) // still the cached answer
	if st.calls != 1 {
		t.Errorf("the store was asked %d times within its TTL, want 1", st.calls)
	}
	now = now.Add(time.Millisecond)
	scrape(want(8, 5000))
	// A failure serves the last answer, and is not retried before the TTL.
	st.err, st.paths = errors.New("database is locked"), 9
	now = now.Add(StoreTTL)
	scrape(want(8, 5000))
	scrape(want(8, 5000))
	if st.calls != 3 {
		t.Errorf("the store was asked %d times, want 3", st.calls)
	}
}

func TestStoreCollectorWithoutAnAnswer(t *testing.T) {
	f := New(nil)
	f.WatchStore(&fakeStore{err: errors.New("no database")}, nil)
	if n := testutil.CollectAndCount(f.Registry(), "nixfarm_store_bytes", "nixfarm_store_paths"); n != 0 {
		t.Errorf("%d store series with no answer from the store", n)
	}
}

// TestHandlerParses scrapes the handler over HTTP, as Prometheus does,
// and parses the text format.
func TestHandlerParses(t *testing.T) {
	f := New(nil)
	f.WatchScheduler(fakeScheduler{SchedulerState{Workers: []WorkerSlots{{Name: "local", Used: 0, Total: 1}}}})
	f.WatchStore(&fakeStore{paths: 1, bytes: 2}, nil)
	f.BuildEnded(&build.Result{Status: build.Built}, nil)
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	for _, name := range []string{"nixfarm_builds_total", "nixfarm_build_duration_seconds", "nixfarm_build_queue_seconds",
		"nixfarm_builds_running", "nixfarm_builds_queued", "nixfarm_worker_slots_used", "nixfarm_worker_slots_total",
		"nixfarm_store_paths", "nixfarm_store_bytes", "nixfarm_ssh_connections_total", "nixfarm_ssh_connections_open",
		"nixfarm_ssh_handshake_failures_total", "nixfarm_ssh_bytes_in_total", "nixfarm_ssh_bytes_out_total",
		"nixfarm_binary_cache_hits_total", "nixfarm_substitutions_total", "nixfarm_build_retries_total",
		"go_goroutines"} {
		if fams[name] == nil {
			t.Errorf("/metrics has no %s", name)
		}
	}
	for _, m := range fams["nixfarm_builds_total"].GetMetric() {
		if m.GetLabel()[0].GetValue() == "built" && m.GetCounter().GetValue() != 1 {
			t.Errorf("builds_total{status=built} = %v, want 1", m.GetCounter().GetValue())
		}
	}
}
