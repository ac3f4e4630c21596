package scheduler_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// fake is a builder whose builds wait for release (or finish at once when
// release is nil) and that records what it ran.
type fake struct {
	name    string
	mu      sync.Mutex
	started []string
	release chan struct{}
	fail    error
	block   bool // wait for the context to end
}

func (f *fake) Build(ctx context.Context, req *build.Request) (*build.Result, error) {
	f.mu.Lock()
	f.started = append(f.started, req.Drv.Name)
	rel, failErr, block := f.release, f.fail, f.block
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return nil, context.Cause(ctx)
	}
	if rel != nil {
		select {
		case <-rel:
		case <-ctx.Done():
			return nil, fmt.Errorf("cancelled: %w", context.Cause(ctx))
		}
	}
	if failErr != nil {
		return nil, failErr
	}
	return &build.Result{Status: build.Built, Worker: f.name}, nil
}

func (f *fake) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.started...)
}

func caps(systems, supported, mandatory string, jobs int, speed float64) worker.Capabilities {
	split := func(s string) []string {
		if s == "" {
			return nil
		}
		return strings.Split(s, ",")
	}
	return worker.Capabilities{Systems: split(systems), SupportedFeatures: split(supported), MandatoryFeatures: split(mandatory), MaxJobs: jobs, SpeedFactor: speed}
}

func request(name, system, features, account string) *build.Request {
	drv := &derivation.Basic{Name: name, Platform: system, Env: map[string]string{}}
	if features != "" {
		drv.Env["requiredSystemFeatures"] = strings.ReplaceAll(features, ",", " ")
	}
	return &build.Request{DrvPath: storepath.Path("/nix/store/" + strings.Repeat("d", 32) + "-" + name + ".drv"), Drv: drv, Account: account}
}

// schedule submits a build and waits for its result.
func schedule(s *scheduler.Scheduler, ctx context.Context, req *build.Request) (*build.Result, error) {
	type outcome struct {
		res *build.Result
		err error
	}
	ch := make(chan outcome, 1)
	s.Submit(ctx, req, func(res *build.Result, err error) { ch <- outcome{res, err} })
	o := <-ch
	return o.res, o.err
}

func newScheduler(t *testing.T, cfg scheduler.Config) *scheduler.Scheduler {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := scheduler.New(cfg)
	t.Cleanup(s.Close)
	return s
}

func TestRouting(t *testing.T) {
	s := newScheduler(t, scheduler.Config{UnbuildableGrace: 50 * time.Millisecond})
	a, b, c := &fake{name: "a"}, &fake{name: "b"}, &fake{name: "c"}
	s.AddWorker(scheduler.Worker{Name: "a", Caps: caps("x86_64-linux", "", "", 4, 1), Builder: a})
	s.AddWorker(scheduler.Worker{Name: "b", Caps: caps("x86_64-linux,aarch64-linux", "big-parallel", "", 4, 1), Builder: b})
	s.AddWorker(scheduler.Worker{Name: "c", Caps: caps("x86_64-linux", "", "benchmark", 4, 1), Builder: c})
	for _, tc := range []struct{ name, system, features, want string }{
		{"arm", "aarch64-linux", "", "b"},
		{"parallel", "x86_64-linux", "big-parallel", "b"},
		{"bench", "x86_64-linux", "benchmark", "c"},
	} {
		res, err := schedule(s, context.Background(), request(tc.name, tc.system, tc.features, "alice"))
		if err != nil || res.Worker != tc.want {
			t.Errorf("%s went to %v (%v), want %s", tc.name, res, err, tc.want)
		}
	}
	for i := 0; i < 20; i++ {
		res, err := schedule(s, context.Background(), request(fmt.Sprint("plain", i), "x86_64-linux", "", "alice"))
		if err != nil || res.Worker == "c" {
			t.Fatalf("a plain build went to %v (%v); c takes only benchmark builds", res, err)
		}
	}
	// Nothing can build riscv64: it fails after the grace, naming what it
	// needs and what the farm has.
	res, err := schedule(s, context.Background(), request("riscv", "riscv64-linux", "kvm", "alice"))
	if err != nil || res.Status.Success() {
		t.Fatalf("riscv: %+v %v", res, err)
	}
	for _, want := range []string{"'riscv64-linux' machine", "{kvm}", "3 workers", "b (x86_64-linux,aarch64-linux; features big-parallel)", "c (x86_64-linux; mandatory benchmark)"} {
		if !strings.Contains(res.ErrorMsg, want) {
			t.Errorf("message lacks %q:\n%s", want, res.ErrorMsg)
		}
	}
}

func TestUnbuildableWaitsForAWorker(t *testing.T) {
	s := newScheduler(t, scheduler.Config{UnbuildableGrace: 10 * time.Second})
	done := make(chan *build.Result, 1)
	go func() {
		res, _ := schedule(s, context.Background(), request("late", "aarch64-linux", "", "alice"))
		done <- res
	}()
	time.Sleep(100 * time.Millisecond)
	s.AddWorker(scheduler.Worker{Name: "arm", Caps: caps("aarch64-linux", "", "", 1, 1), Builder: &fake{name: "arm"}})
	select {
	case res := <-done:
		if res == nil || res.Worker != "arm" {
			t.Errorf("result %+v", res)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the build did not go to the worker that joined")
	}
}

func TestChoiceBySpeedAndLoad(t *testing.T) {
	s := newScheduler(t, scheduler.Config{})
	rel := make(chan struct{})
	slow, fast := &fake{name: "slow", release: rel}, &fake{name: "fast", release: rel}
	s.AddWorker(scheduler.Worker{Name: "slow", Caps: caps("x86_64-linux", "", "", 2, 1), Builder: slow})
	s.AddWorker(scheduler.Worker{Name: "fast", Caps: caps("x86_64-linux", "", "", 2, 4), Builder: fast})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			schedule(s, context.Background(), request(fmt.Sprint("b", i), "x86_64-linux", "", "alice"))
		}()
		waitFor(t, func() bool { return len(slow.names())+len(fast.names()) == i+1 })
	}
	// load/speed: fast takes the 1st (0/4) and 2nd (1/4 < 0/1? no: 0 < 0.25,
	// so slow takes the 2nd), then fast (1/4 < 1/1), then slow.
	if len(fast.names()) != 2 || len(slow.names()) != 2 {
		t.Errorf("fast ran %v, slow ran %v", fast.names(), slow.names())
	}
	if fast.names()[0] != "b0" {
		t.Errorf("the first build went to %v / %v; the faster worker should take it", fast.names(), slow.names())
	}
	close(rel)
	wg.Wait()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// With one slot, a second account's builds do not wait for all of the
// first account's.
func TestFairnessBetweenAccounts(t *testing.T) {
	s := newScheduler(t, scheduler.Config{})
	rel := make(chan struct{})
	w := &fake{name: "w", release: rel}
	s.AddWorker(scheduler.Worker{Name: "w", Caps: caps("x86_64-linux", "", "", 1, 1), Builder: w})
	var wg sync.WaitGroup
	submit := func(name, account string) {
		wg.Add(1)
		go func() { defer wg.Done(); schedule(s, context.Background(), request(name, "x86_64-linux", "", account)) }()
	}
	for i := 0; i < 10; i++ {
		submit(fmt.Sprint("big", i), "big")
	}
	waitFor(t, func() bool { return s.Queued() == 9 })
	submit("small0", "small")
	submit("small1", "small")
	waitFor(t, func() bool { return s.Queued() == 11 })
	for i := 0; i < 5; i++ {
		rel <- struct{}{}
	}
	waitFor(t, func() bool { return len(w.names()) >= 5 })
	started := strings.Join(w.names()[:5], " ")
	if !strings.Contains(started, "small0") || !strings.Contains(started, "small1") {
		t.Errorf("the small account waited behind the big one: %s", started)
	}
	close(rel)
	wg.Wait()
}

func TestRetryElsewhereAndQuarantine(t *testing.T) {
	s := newScheduler(t, scheduler.Config{RetryBackoff: 10 * time.Millisecond, QuarantineAfter: 2, QuarantineFor: time.Hour})
	bad := &fake{name: "bad", fail: errors.New("disk full")}
	good := &fake{name: "good"}
	s.AddWorker(scheduler.Worker{Name: "bad", Caps: caps("x86_64-linux", "", "", 4, 100), Builder: bad})
	s.AddWorker(scheduler.Worker{Name: "good", Caps: caps("x86_64-linux", "", "", 4, 1), Builder: good})
	for i := 0; i < 2; i++ {
		res, err := schedule(s, context.Background(), request(fmt.Sprint("r", i), "x86_64-linux", "", "alice"))
		if err != nil || res.Worker != "good" {
			t.Fatalf("build %d: %+v %v", i, res, err)
		}
	}
	// bad failed twice: quarantined, though it is the fastest.
	res, _ := schedule(s, context.Background(), request("after", "x86_64-linux", "", "alice"))
	if res.Worker != "good" || len(bad.names()) != 2 {
		t.Errorf("after quarantine: %+v; bad ran %v", res, bad.names())
	}
	for _, info := range s.Workers() {
		if info.Name == "bad" && info.State != "quarantined" {
			t.Errorf("bad is %s", info.State)
		}
	}
}

func TestAttemptsAreBounded(t *testing.T) {
	var logBuf testutil.LogBuffer
	s := newScheduler(t, scheduler.Config{RetryBackoff: time.Millisecond, MaxAttempts: 3, QuarantineAfter: 100,
		Log: slog.New(slog.NewTextHandler(&logBuf, nil))})
	w := &fake{name: "w", fail: errors.New("dial unix /var/lib/nixfarm/agent.sock: connection refused")}
	s.AddWorker(scheduler.Worker{Name: "w", Caps: caps("x86_64-linux", "", "", 1, 1), Builder: w})
	res, err := schedule(s, context.Background(), request("doomed", "x86_64-linux", "", "alice"))
	if err != nil || res.Status.Success() || !strings.Contains(res.ErrorMsg, "3 times") {
		t.Errorf("%+v %v", res, err)
	}
	// The worker's error is internal: the client gets an id, the log the
	// detail under it.
	m := regexp.MustCompile(`internal error \(id ([0-9a-f]{8})\)`).FindStringSubmatch(res.ErrorMsg)
	if m == nil || strings.Contains(res.ErrorMsg, "/var/lib/nixfarm") {
		t.Errorf("the client is told %q", res.ErrorMsg)
	} else if !regexp.MustCompile(`error_id=` + m[1] + `.*agent.sock: connection refused`).MatchString(logBuf.String()) {
		t.Errorf("the log has no line with error_id=%s and the error:\n%s", m[1], logBuf.String())
	}
	if n := len(w.names()); n != 3 {
		t.Errorf("%d attempts", n)
	}
}

func TestWorkerLossRequeues(t *testing.T) {
	s := newScheduler(t, scheduler.Config{RetryBackoff: time.Millisecond})
	lost := &fake{name: "lost", block: true}
	s.AddWorker(scheduler.Worker{Name: "lost", Caps: caps("x86_64-linux", "", "", 1, 10), Builder: lost})
	done := make(chan *build.Result, 1)
	go func() {
		res, _ := schedule(s, context.Background(), request("survivor", "x86_64-linux", "", "alice"))
		done <- res
	}()
	waitFor(t, func() bool { return len(lost.names()) == 1 })
	s.AddWorker(scheduler.Worker{Name: "other", Caps: caps("x86_64-linux", "", "", 1, 1), Builder: &fake{name: "other"}})
	s.RemoveWorker("lost", errors.New("heartbeat timed out"))
	select {
	case res := <-done:
		if res == nil || res.Worker != "other" {
			t.Errorf("result %+v", res)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the build was not moved to the other worker")
	}
}

func TestWatchdog(t *testing.T) {
	s := newScheduler(t, scheduler.Config{WatchdogGrace: 10 * time.Millisecond})
	s.AddWorker(scheduler.Worker{Name: "hung", Caps: caps("x86_64-linux", "", "", 2, 1), Builder: &fake{name: "hung", block: true}})
	req := request("slow", "x86_64-linux", "", "alice")
	req.Options.Timeout = 50 * time.Millisecond
	res, err := schedule(s, context.Background(), req)
	if err != nil || res.Status != build.TimedOut || !strings.Contains(res.ErrorMsg, "timed out after") {
		t.Errorf("timeout: %+v %v", res, err)
	}
	req = request("quiet", "x86_64-linux", "", "alice")
	req.Options.MaxSilentTime = 50 * time.Millisecond
	res, err = schedule(s, context.Background(), req)
	if err != nil || res.Status != build.TimedOut || !strings.Contains(res.ErrorMsg, "of silence") {
		t.Errorf("silence: %+v %v", res, err)
	}
}

func TestCancelWhileQueued(t *testing.T) {
	s := newScheduler(t, scheduler.Config{})
	rel := make(chan struct{})
	s.AddWorker(scheduler.Worker{Name: "w", Caps: caps("x86_64-linux", "", "", 1, 1), Builder: &fake{name: "w", release: rel}})
	go schedule(s, context.Background(), request("first", "x86_64-linux", "", "alice"))
	waitFor(t, func() bool { return s.Workers()[0].State == "full" })
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := schedule(s, ctx, request("second", "x86_64-linux", "", "bob")); errc <- err }()
	waitFor(t, func() bool { return s.Queued() == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("err %v", err)
	}
	if s.Queued() != 0 {
		t.Errorf("%d still queued", s.Queued())
	}
	close(rel)
}

// A build submitted with a context that is done already is withdrawn and
// reported as cancelled (run with -race: the cancellation races Submit).
func TestSubmitCancelledContext(t *testing.T) {
	s := newScheduler(t, scheduler.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	const n = 50
	errc := make(chan error, n)
	for i := 0; i < n; i++ {
		s.Submit(ctx, request(fmt.Sprint("gone", i), "x86_64-linux", "", "alice"), func(res *build.Result, err error) { errc <- err })
	}
	for i := 0; i < n; i++ {
		select {
		case err := <-errc:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("err %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a build whose context was done was never reported")
		}
	}
	waitFor(t, func() bool { return s.Queued() == 0 })
}

// blockingHandler discards records, but holds the one with message msg,
// and so the scheduler's lock, until hold is closed.
type blockingHandler struct {
	slog.Handler
	msg     string
	entered chan struct{}
	hold    chan struct{}
}

func (h *blockingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		close(h.entered)
		<-h.hold
	}
	return nil
}

// A cancellation whose callback waits for the lock while Close drops the
// queues leaves the scheduler sound: the build is reported once.
func TestCloseRacesCancellation(t *testing.T) {
	for i := 0; i < 5; i++ {
		h := &blockingHandler{Handler: slog.NewTextHandler(io.Discard, nil), msg: "worker joined",
			entered: make(chan struct{}), hold: make(chan struct{})}
		s := scheduler.New(scheduler.Config{Log: slog.New(h)})
		ctx, cancel := context.WithCancel(context.Background())
		reports := make(chan error, 2)
		s.Submit(ctx, request("queued", "x86_64-linux", "", "alice"), func(res *build.Result, err error) { reports <- err })
		// AddWorker holds the lock while it logs; Close, then the
		// cancellation's callback, queue up behind it.
		go s.AddWorker(scheduler.Worker{Name: "arm", Caps: caps("aarch64-linux", "", "", 1, 1), Builder: &fake{name: "arm"}})
		<-h.entered
		closed := make(chan struct{})
		go func() { s.Close(); close(closed) }()
		time.Sleep(20 * time.Millisecond)
		cancel()
		time.Sleep(20 * time.Millisecond)
		close(h.hold)
		<-closed
		if err := <-reports; err == nil {
			t.Error("the build was reported as a success")
		}
		select {
		case err := <-reports:
			t.Errorf("reported twice; again with %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if n := s.Queued(); n != 0 {
			t.Errorf("%d queued after Close", n)
		}
	}
}

// A build waiting to be retried is withdrawn at once when its context
// ends.
func TestCancelDuringRetryBackoff(t *testing.T) {
	s := newScheduler(t, scheduler.Config{RetryBackoff: time.Hour, QuarantineAfter: 100})
	w := &fake{name: "w", fail: errors.New("connection refused")}
	s.AddWorker(scheduler.Worker{Name: "w", Caps: caps("x86_64-linux", "", "", 1, 1), Builder: w})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	s.Submit(ctx, request("retried", "x86_64-linux", "", "alice"), func(res *build.Result, err error) { errc <- err })
	waitFor(t, func() bool { return len(w.names()) == 1 && s.Queued() == 1 })
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the build waiting for its retry was not withdrawn")
	}
	if n := s.Queued(); n != 0 {
		t.Errorf("%d still queued", n)
	}
	if n := len(w.names()); n != 1 {
		t.Errorf("%d attempts, want 1", n)
	}
}

// An account's builds of a class no worker can take neither hold up its
// builds of another class nor survive their grace period; the account is
// served afterwards as before.
func TestAccountWithUnbuildableClass(t *testing.T) {
	s := newScheduler(t, scheduler.Config{UnbuildableGrace: 100 * time.Millisecond})
	s.AddWorker(scheduler.Worker{Name: "x86", Caps: caps("x86_64-linux", "", "", 1, 1), Builder: &fake{name: "x86"}})
	type outcome struct {
		res *build.Result
		err error
	}
	riscv := make(chan outcome, 1)
	s.Submit(context.Background(), request("riscv", "riscv64-linux", "", "alice"), func(res *build.Result, err error) { riscv <- outcome{res, err} })
	res, err := schedule(s, context.Background(), request("plain", "x86_64-linux", "", "alice"))
	if err != nil || res.Worker != "x86" {
		t.Fatalf("plain: %+v %v", res, err)
	}
	select {
	case o := <-riscv:
		if o.err != nil || o.res.Status.Success() || !strings.Contains(o.res.ErrorMsg, "'riscv64-linux' machine") {
			t.Errorf("riscv: %+v %v", o.res, o.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the build no worker can take did not fail after its grace period")
	}
	res, err = schedule(s, context.Background(), request("after", "x86_64-linux", "", "alice"))
	if err != nil || res.Worker != "x86" {
		t.Fatalf("after: %+v %v", res, err)
	}
	if n := s.Queued(); n != 0 {
		t.Errorf("%d still queued", n)
	}
}

// stalledLog is a build log whose writes block until released, like a
// client that stops reading; entered is closed at the first write.
type stalledLog struct {
	entered chan struct{}
	once    sync.Once
	release chan struct{}
}

func (l *stalledLog) Write(p []byte) (int, error) {
	l.once.Do(func() { close(l.entered) })
	<-l.release
	return len(p), nil
}

// A build whose log does not take what is written to it (the retry
// note here) holds up no other build: the scheduler writes no log while
// it holds its lock.
func TestStalledLogDoesNotStallDispatch(t *testing.T) {
	s := newScheduler(t, scheduler.Config{RetryBackoff: time.Millisecond})
	bad := &fake{name: "a-bad", fail: errors.New("cannot run it")}
	good := &fake{name: "b-good"}
	s.AddWorker(scheduler.Worker{Name: "a-bad", Caps: caps("x86_64-linux", "", "", 4, 1), Builder: bad})
	log := &stalledLog{entered: make(chan struct{}), release: make(chan struct{})}
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(log.release) }) }
	t.Cleanup(release) // before s.Close, which a stalled scheduler would block
	stalled := request("stalled", "x86_64-linux", "", "alice")
	stalled.Log = log
	stalledDone := make(chan error, 1)
	s.Submit(context.Background(), stalled, func(_ *build.Result, err error) { stalledDone <- err })
	select {
	case <-log.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the failed attempt wrote no retry note")
	}
	other := make(chan error, 1)
	go func() {
		s.AddWorker(scheduler.Worker{Name: "b-good", Caps: caps("x86_64-linux", "", "", 4, 1), Builder: good})
		_, err := schedule(s, context.Background(), request("other", "x86_64-linux", "", "bob"))
		other <- err
	}()
	select {
	case err := <-other:
		if err != nil {
			t.Errorf("bob's build: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("bob's build waits for alice's stalled log")
	}
	release()
	select {
	case err := <-stalledDone:
		if err != nil {
			t.Errorf("alice's build: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("alice's build did not end once its log was read")
	}
}

// A name a registered worker holds is refused, and the holder keeps
// serving.
func TestNameTaken(t *testing.T) {
	s := newScheduler(t, scheduler.Config{})
	first := &fake{name: "first"}
	if err := s.AddWorker(scheduler.Worker{Name: "local", Kind: "local", Caps: caps("x86_64-linux", "", "", 1, 1), Builder: first}); err != nil {
		t.Fatal(err)
	}
	err := s.AddWorker(scheduler.Worker{Name: "local", Kind: "agent", Caps: caps("x86_64-linux", "", "", 1, 1), Builder: &fake{name: "impostor"}})
	if !errors.Is(err, scheduler.ErrNameTaken) {
		t.Fatalf("a second worker named local: %v", err)
	}
	if !s.HasWorker("local") || s.HasWorker("other") {
		t.Error("HasWorker")
	}
	res, err := schedule(s, context.Background(), request("x", "x86_64-linux", "", "alice"))
	if err != nil || res.Worker != "first" {
		t.Errorf("built by %+v, %v", res, err)
	}
}
