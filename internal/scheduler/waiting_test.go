package scheduler_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/scheduler"
)

// clock is a settable clock for the scheduler's Config.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// queued returns the scheduler's queue listing as "drv-name account
// position: reason (estimate)" lines, by class and position.
func queued(s *scheduler.Scheduler) []string {
	var out []string
	for _, c := range s.Queue() {
		for _, b := range c.Builds {
			est := "unknown"
			if b.EstimatedStartSeconds != nil {
				est = fmt.Sprintf("%gs", *b.EstimatedStartSeconds)
			}
			name := b.DrvPath.Name()
			out = append(out, fmt.Sprintf("%s %s %s %d: %s (%s)", c.Class, strings.TrimSuffix(name, ".drv"), b.Account, b.Position, b.Reason, est))
		}
	}
	return out
}

func submitAsync(s *scheduler.Scheduler, req *build.Request) <-chan *build.Result {
	ch := make(chan *build.Result, 1)
	s.Submit(context.Background(), req, func(res *build.Result, err error) {
		if err != nil {
			res = &build.Result{Status: build.MiscFailure, ErrorMsg: err.Error()}
		}
		ch <- res
	})
	return ch
}

// Positions interleave the accounts as dispatch serves them, in turn:
// the builds then start in the order of their positions.
func TestQueuePositionsAcrossAccounts(t *testing.T) {
	s := newScheduler(t, scheduler.Config{})
	rel := make(chan struct{})
	w := &fake{name: "w", release: rel}
	s.AddWorker(scheduler.Worker{Name: "w", Caps: caps("x86_64-linux", "", "", 1, 1), Builder: w})
	submitAsync(s, request("blocker", "x86_64-linux", "", "alice"))
	waitFor(t, func() bool { return len(w.names()) == 1 })
	var done []<-chan *build.Result
	for _, b := range []struct{ name, account string }{{"a1", "alice"}, {"a2", "alice"}, {"a3", "alice"}, {"b1", "bob"}, {"b2", "bob"}} {
		done = append(done, submitAsync(s, request(b.name, "x86_64-linux", "", b.account)))
	}
	got := queued(s)
	want := []string{
		"x86_64-linux a1 alice 1: the only x86_64-linux worker, w, is busy (unknown)",
		"x86_64-linux b1 bob 2: the only x86_64-linux worker, w, is busy (unknown)",
		"x86_64-linux a2 alice 3: the only x86_64-linux worker, w, is busy (unknown)",
		"x86_64-linux b2 bob 4: the only x86_64-linux worker, w, is busy (unknown)",
		"x86_64-linux a3 alice 5: the only x86_64-linux worker, w, is busy (unknown)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("queue:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	close(rel)
	for _, d := range done {
		<-d
	}
	if started := strings.Join(w.names(), " "); started != "blocker a1 b1 a2 b2 a3" {
		t.Errorf("builds started in the order %s, not their positions'", started)
	}
}

// The reasons: every worker of the class busy, the account's running
// cap, and no worker for the class, counting down its grace period.
func TestQueueReasons(t *testing.T) {
	clk := newClock()
	s := newScheduler(t, scheduler.Config{Now: clk.Now, UnbuildableGrace: 30 * time.Second,
		Limits: func(account string) scheduler.AccountLimits {
			if account == "carol" {
				return scheduler.AccountLimits{MaxRunning: 1}
			}
			return scheduler.AccountLimits{}
		}})
	rel := make(chan struct{})
	defer close(rel)
	for _, name := range []string{"w1", "w2", "w3"} {
		s.AddWorker(scheduler.Worker{Name: name, Caps: caps("x86_64-linux", "", "", 1, 1), Builder: &fake{name: name, release: rel}})
	}
	big := &fake{name: "big", release: rel}
	s.AddWorker(scheduler.Worker{Name: "big", Caps: caps("aarch64-linux", "", "", 4, 1), Builder: big})
	for i := 0; i < 3; i++ {
		submitAsync(s, request(fmt.Sprint("run", i), "x86_64-linux", "", "alice"))
	}
	submitAsync(s, request("waits", "x86_64-linux", "", "alice"))
	submitAsync(s, request("c1", "aarch64-linux", "", "carol"))
	waitFor(t, func() bool { return len(big.names()) == 1 })
	submitAsync(s, request("c2", "aarch64-linux", "", "carol"))
	submitAsync(s, request("vm", "x86_64-linux", "kvm", "alice"))
	clk.advance(8 * time.Second)
	got := strings.Join(queued(s), "\n")
	for _, want := range []string{
		"x86_64-linux waits alice 1: all 3 x86_64-linux workers busy (unknown)",
		"aarch64-linux c2 carol 1: account limit max-concurrent-builds (1) reached (unknown)",
		"x86_64-linux with {kvm} vm alice 1: no x86_64-linux worker offers {kvm}; waiting 22 s more before failing (unknown)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("queue lacks %q:\n%s", want, got)
		}
	}
	s.RemoveWorker("big", fmt.Errorf("gone"))
	if got := strings.Join(queued(s), "\n"); !strings.Contains(got, "c2 carol 1: no worker offers aarch64-linux; waiting ") {
		t.Errorf("with no aarch64-linux worker left, the queue says:\n%s", got)
	}
}

// Estimates come from the class's recent build durations and how long
// the running builds have run; without history they are unknown.
func TestQueueEstimates(t *testing.T) {
	clk := newClock()
	s := newScheduler(t, scheduler.Config{Now: clk.Now})
	rel := make(chan struct{})
	w := &fake{name: "w", release: rel}
	s.AddWorker(scheduler.Worker{Name: "w", Caps: caps("x86_64-linux", "", "", 1, 1), Builder: w})

	first := submitAsync(s, request("first", "x86_64-linux", "", "alice"))
	waitFor(t, func() bool { return len(w.names()) == 1 })
	submitAsync(s, request("early", "x86_64-linux", "", "alice"))
	if got := queued(s); len(got) != 1 || !strings.HasSuffix(got[0], "(unknown)") {
		t.Errorf("with no history, the estimate is %v, want unknown", got)
	}
	clk.advance(10 * time.Second)
	rel <- struct{}{} // first took 10 s
	<-first
	waitFor(t, func() bool { return len(w.names()) == 2 }) // early runs
	clk.advance(4 * time.Second)
	submitAsync(s, request("next1", "x86_64-linux", "", "alice"))
	submitAsync(s, request("next2", "x86_64-linux", "", "alice"))
	got := strings.Join(queued(s), "\n")
	for _, want := range []string{"next1 alice 1: the only x86_64-linux worker, w, is busy (6s)", "next2 alice 2: the only x86_64-linux worker, w, is busy (16s)"} {
		if !strings.Contains(got, want) {
			t.Errorf("queue lacks %q:\n%s", want, got)
		}
	}
	close(rel)
}

// OnQueue hears a waiting build's status when it changes, and the worker
// when it starts; a hook that blocks holds up neither dispatch nor the
// scheduler's lock.
func TestOnQueueDoesNotHoldTheScheduler(t *testing.T) {
	s := newScheduler(t, scheduler.Config{})
	rel := make(chan struct{})
	w := &fake{name: "w", release: rel}
	s.AddWorker(scheduler.Worker{Name: "w", Caps: caps("x86_64-linux", "", "", 1, 1), Builder: w})
	blocker := submitAsync(s, request("blocker", "x86_64-linux", "", "alice"))
	waitFor(t, func() bool { return len(w.names()) == 1 })

	var mu sync.Mutex
	var heard []build.QueueStatus
	called := make(chan struct{}, 10)
	stuck := make(chan struct{})
	defer close(stuck)
	req := request("watched", "x86_64-linux", "", "bob")
	req.OnQueue = func(st build.QueueStatus) {
		mu.Lock()
		heard = append(heard, st)
		n := len(heard)
		mu.Unlock()
		called <- struct{}{}
		if n == 2 {
			<-stuck // a client that stopped reading
		}
	}
	watched := submitAsync(s, req)
	select {
	case <-called:
	case <-time.After(10 * time.Second):
		t.Fatal("OnQueue was never called for a queued build")
	}
	mu.Lock()
	if st := heard[0]; st.Position != 1 || !strings.Contains(st.Reason, "busy") || st.Started() {
		t.Errorf("first status %+v, want position 1, busy", st)
	}
	mu.Unlock()
	// Nothing changes: nothing more is heard.
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	if len(heard) != 1 {
		t.Errorf("heard %d statuses while nothing changed: %+v", len(heard), heard)
	}
	mu.Unlock()

	rel <- struct{}{}
	<-blocker
	<-called // the start, whose hook now blocks
	mu.Lock()
	if st := heard[1]; st.Worker != "w" || st.Attempt != 1 {
		t.Errorf("start status %+v, want worker w", st)
	}
	mu.Unlock()
	// With the hook stuck, the scheduler still answers and dispatches.
	more := submitAsync(s, request("more", "x86_64-linux", "", "carol"))
	rel <- struct{}{}
	rel <- struct{}{}
	for _, ch := range []<-chan *build.Result{watched, more} {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("a stuck OnQueue hook held up dispatch")
		}
	}
	if len(s.Queue()) != 0 || s.Queued() != 0 {
		t.Error("builds left in the queue")
	}
}
