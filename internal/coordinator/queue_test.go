package coordinator_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// heard collects what one client's OnQueue is told.
type heard struct {
	mu  sync.Mutex
	sts []build.QueueStatus
}

func (h *heard) add(st build.QueueStatus) {
	h.mu.Lock()
	h.sts = append(h.sts, st)
	h.mu.Unlock()
}

func (h *heard) has(f func(build.QueueStatus) bool) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, st := range h.sts {
		if f(st) {
			return true
		}
	}
	return false
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Every client waiting for a shared build hears where it waits, and then
// the worker that took it.
func TestQueueFeedbackReachesEveryWaitingClient(t *testing.T) {
	st, database, dir := testutil.Store(t)
	bb := &blockingBuilder{fakeBuilder: fakeBuilder{st: st, fail: map[string]bool{}},
		started: make(chan struct{}, 4), release: make(chan struct{}), cancelled: make(chan struct{})}
	sched := scheduler.New(scheduler.Config{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	t.Cleanup(sched.Close)
	if err := sched.AddWorker(scheduler.Worker{Name: "only", Kind: "local", Builder: bb,
		Caps: worker.Capabilities{Systems: []string{"x86_64-linux"}, MaxJobs: 1, SpeedFactor: 1}}); err != nil {
		t.Fatal(err)
	}
	c, err := coordinator.New(st, sched, database, filepath.Join(dir, "logs"), coordinator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := &farm{st: st, db: database, coord: c, src: storepath.Path("/nix/store/" + strings.Repeat("s", 32) + "-source")}
	addFile(t, st, f.src, "source", nil)
	for _, a := range []string{"client0", "client1"} {
		addFile(t, st.For(a), f.src, "source", nil)
	}
	request := func(name, account string, h *heard) *build.Request {
		drvPath := f.addDrv(t, name, []string{"out"}, nil)
		d, err := store.ReadDerivation(context.Background(), st, drvPath)
		if err != nil {
			t.Fatal(err)
		}
		req := &build.Request{DrvPath: drvPath, Drv: d.Basic(name, nil), Account: account}
		if h != nil {
			req.OnQueue = h.add
		}
		return req
	}
	var wg sync.WaitGroup
	run := func(req *build.Request) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if res, err := c.BuildDerivation(context.Background(), req); err != nil || res.Status != build.Built {
				t.Errorf("%s for %s: %+v %v", req.DrvPath.Name(), req.Account, res, err)
			}
		}()
	}
	run(request("first", "client0", nil))
	<-bb.started
	clients := []*heard{{}, {}}
	for i, h := range clients {
		run(request("popular", fmt.Sprint("client", i), h))
	}
	for i, h := range clients {
		eventually(t, fmt.Sprintf("client %d hears its build is queued", i), func() bool {
			return h.has(func(st build.QueueStatus) bool {
				return st.Position == 1 && st.Reason == "the only x86_64-linux worker, only, is busy"
			})
		})
	}
	bb.release <- struct{}{} // first ends; popular starts
	<-bb.started
	for i, h := range clients {
		eventually(t, fmt.Sprintf("client %d hears the worker", i), func() bool {
			return h.has(func(st build.QueueStatus) bool { return st.Worker == "only" && st.Attempt == 1 })
		})
	}
	bb.release <- struct{}{}
	wg.Wait()
}
