package worker_test

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/usage"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// fakeMeter records what is asked of its probes; each probe's sample is
// its number of seconds of CPU.
type fakeMeter struct {
	mu     sync.Mutex
	events []string
	probes int
}

func (m *fakeMeter) Kind() string { return "fake" }

func (m *fakeMeter) Start(pid int) (usage.Probe, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.probes++
	return &fakeProbe{m: m, n: m.probes}, nil
}

func (m *fakeMeter) log(n int, what string) {
	m.mu.Lock()
	m.events = append(m.events, string(rune('0'+n))+what)
	m.mu.Unlock()
}

type fakeProbe struct {
	m     *fakeMeter
	n     int
	reset bool
}

func (p *fakeProbe) Reset() error { p.m.log(p.n, "reset"); p.reset = true; return nil }
func (p *fakeProbe) Close() error { p.m.log(p.n, "close"); return nil }
func (p *fakeProbe) Sample() (usage.Usage, error) {
	p.m.log(p.n, "sample")
	return usage.Usage{CPU: time.Duration(p.n) * time.Second, PeakMemory: int64(p.n) << 20, Measured: p.reset}, nil
}

// A build's result carries what its session's probe measured from the
// build's start (reset) to the session's end, failed builds too; each
// probe is closed after its sample.
func TestBuildUsage(t *testing.T) {
	testutil.RequireTools(t, "nix-store")
	st, _, dir := testutil.Store(t)
	bb := testutil.AddBusybox(t, st, "busybox")
	m := &fakeMeter{}
	w := worker.NewExecutor("local", st, &worker.Local{StoreURI: filepath.Join(dir, "worker"), Meter: m}, nil)
	ctx := context.Background()
	drvPath, drv := basic(t, bb, "usage-test", "echo hi > $out")
	var log bytes.Buffer
	res, err := w.Build(ctx, &build.Request{DrvPath: drvPath, Drv: drv, Account: "alice", Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if !res.UsageMeasured || res.CPUTime != time.Second || res.PeakMemory != 1<<20 {
		t.Errorf("result's usage: %v, %d bytes, measured %v", res.CPUTime, res.PeakMemory, res.UsageMeasured)
	}
	drvPath, drv = basic(t, bb, "usage-fail", "exit 3")
	res, err = w.Build(ctx, &build.Request{DrvPath: drvPath, Drv: drv, Account: "alice", Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status.Success() || !res.UsageMeasured || res.CPUTime != 2*time.Second {
		t.Errorf("failed build's result: %+v", res)
	}
	// A probe is closed in the background, after its sample.
	events := func() []string {
		m.mu.Lock()
		defer m.mu.Unlock()
		return slices.Clone(m.events)
	}
	for deadline := time.Now().Add(10 * time.Second); len(events()) < 6 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	got := events()
	for _, n := range []string{"1", "2"} {
		var mine []string
		for _, e := range got {
			if what, ok := strings.CutPrefix(e, n); ok {
				mine = append(mine, what)
			}
		}
		if want := []string{"reset", "sample", "close"}; !slices.Equal(mine, want) {
			t.Errorf("probe %s was asked %v, want %v (all: %v)", n, mine, want, got)
		}
	}
	if i := slices.Index(got, "2reset"); i < 0 || slices.Index(got, "1sample") > i {
		t.Errorf("the second build started before the first was sampled: %v", got)
	}
}
