package scheduler_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/scheduler"
)

// counting is a builder that records the most builds it ran at once per
// account, each waiting for release.
type counting struct {
	release chan struct{}
	mu      sync.Mutex
	now     map[string]int
	most    map[string]int
	started atomic.Int32
}

func (c *counting) Build(ctx context.Context, req *build.Request) (*build.Result, error) {
	c.mu.Lock()
	c.now[req.Account]++
	c.most[req.Account] = max(c.most[req.Account], c.now[req.Account])
	c.mu.Unlock()
	c.started.Add(1)
	<-c.release
	c.mu.Lock()
	c.now[req.Account]--
	c.mu.Unlock()
	return &build.Result{Status: build.Built}, nil
}

// An account's builds beyond its running cap wait, while another
// account's go on; beyond its queue cap they are refused with a message
// naming the limit.
func TestAccountCaps(t *testing.T) {
	s := newScheduler(t, scheduler.Config{Limits: func(account string) scheduler.AccountLimits {
		if account == "alice" {
			return scheduler.AccountLimits{MaxRunning: 1, MaxQueued: 2}
		}
		return scheduler.AccountLimits{}
	}})
	b := &counting{release: make(chan struct{}), now: map[string]int{}, most: map[string]int{}}
	s.AddWorker(scheduler.Worker{Name: "w", Caps: caps("x86_64-linux", "", "", 8, 1), Builder: b})
	results := make(chan *build.Result, 10)
	submit := func(name, account string) {
		s.Submit(context.Background(), request(name, "x86_64-linux", "", account), func(res *build.Result, err error) {
			if err != nil {
				res = &build.Result{Status: build.MiscFailure, ErrorMsg: err.Error()}
			}
			results <- res
		})
	}
	submit("a1", "alice")
	waitFor(t, func() bool { return b.started.Load() == 1 })
	submit("a2", "alice")
	submit("a3", "alice")
	submit("b1", "bob")
	submit("b2", "bob")
	waitFor(t, func() bool { return b.started.Load() == 3 })
	if running, queued := s.AccountBuilds("alice"); running != 1 || queued != 2 {
		t.Errorf("alice: %d running, %d queued; want 1 and 2", running, queued)
	}
	// alice has 2 queued: the next is refused.
	submit("a4", "alice")
	res := <-results
	if res.Status.Success() || !strings.Contains(res.ErrorMsg, "max-queued-builds = 2") || !strings.Contains(res.ErrorMsg, "a4") {
		t.Fatalf("the build over the queue cap: %+v", res)
	}
	close(b.release)
	for i := 0; i < 5; i++ {
		if res := <-results; !res.Status.Success() {
			t.Errorf("build failed: %+v", res)
		}
	}
	if b.most["alice"] != 1 || b.most["bob"] != 2 {
		t.Errorf("most at once: alice %d (cap 1), bob %d (no cap, 2 submitted)", b.most["alice"], b.most["bob"])
	}
}

// A build that goes over an account's limit on a worker fails with the
// limit's message at once, and is not tried on another worker.
func TestLimitErrorIsNotRetried(t *testing.T) {
	s := newScheduler(t, scheduler.Config{MaxAttempts: 3})
	a := &fake{name: "a", fail: fmt.Errorf("worker a: %w", &build.LimitError{Msg: "output /nix/store/x refused: over (max-output-size = 1 KiB)"})}
	b := &fake{name: "b", fail: a.fail}
	s.AddWorker(scheduler.Worker{Name: "a", Caps: caps("x86_64-linux", "", "", 1, 1), Builder: a})
	s.AddWorker(scheduler.Worker{Name: "b", Caps: caps("x86_64-linux", "", "", 1, 1), Builder: b})
	res, err := schedule(s, context.Background(), request("big", "x86_64-linux", "", "alice"))
	if err != nil || res.Status.Success() || res.ErrorMsg != "output /nix/store/x refused: over (max-output-size = 1 KiB)" {
		t.Fatalf("result %+v, %v", res, err)
	}
	if n := len(a.names()) + len(b.names()); n != 1 {
		t.Errorf("the build ran %d times", n)
	}
}
