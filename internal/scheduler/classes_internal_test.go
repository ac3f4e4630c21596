package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/worker"
)

type okBuilder struct{}

func (okBuilder) Build(ctx context.Context, req *build.Request) (*build.Result, error) {
	return &build.Result{Status: build.Built}, nil
}

func classRequest(name, system string) *build.Request {
	drv := &derivation.Basic{Name: name, Platform: system, Env: map[string]string{}}
	return &build.Request{DrvPath: storepath.Path("/nix/store/" + strings.Repeat("d", 32) + "-" + name + ".drv"), Drv: drv, Account: "mallory"}
}

// A derivation's system is the client's to choose: builds of made-up
// systems, gone from the queue (cancelled, or failed once no worker
// appeared), must not each leave a class behind for good, which the
// scheduler and every scrape of /metrics would go through. A class a
// worker can build keeps its durations for the estimates.
func TestGoneClassesAreForgotten(t *testing.T) {
	s := New(Config{Log: slog.New(slog.DiscardHandler), UnbuildableGrace: time.Hour})
	defer s.Close()
	s.AddWorker(Worker{Name: "w", Caps: worker.Capabilities{Systems: []string{"x86_64-linux"}, MaxJobs: 1, SpeedFactor: 1}, Builder: okBuilder{}})
	done := make(chan error, 1)
	s.Submit(context.Background(), classRequest("real", "x86_64-linux"), func(_ *build.Result, err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ended := make(chan struct{}, 1000)
	for i := range 1000 {
		s.Submit(ctx, classRequest(fmt.Sprint("b", i), fmt.Sprintf("made-up-%d", i)), func(*build.Result, error) { ended <- struct{}{} })
	}
	cancel()
	for range 1000 {
		<-ended
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.classes) != 1 {
		t.Errorf("%d classes kept after the builds of made-up systems left the queue, want 1", len(s.classes))
	}
	if c := s.classes[classKey("x86_64-linux", nil)]; c == nil || len(c.durations) != 1 {
		t.Errorf("the class that built lost its history: %+v", c)
	}
}
