package worker_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// gatedTransport lets the first `open` calls through and holds the rest
// until released.
type gatedTransport struct {
	worker.Transport
	mu    sync.Mutex
	opens int
	free  int
	gate  chan struct{}
}

func (g *gatedTransport) Open(ctx context.Context, opts build.Options) (*worker.Stream, error) {
	g.mu.Lock()
	g.opens++
	held := g.opens > g.free
	g.mu.Unlock()
	if held {
		select {
		case <-g.gate:
		case <-time.After(20 * time.Second):
			return nil, errors.New("held process start")
		}
	}
	return g.Transport.Open(ctx, opts)
}

// pids returns the process ids that the wrapper script recorded.
func pids(t *testing.T, file string) []int {
	t.Helper()
	data, _ := os.ReadFile(file)
	var out []int
	for _, f := range strings.Fields(string(data)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, pid)
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// running tells whether pid runs (and is not a zombie waiting to be
// reaped by its exec.Cmd).
func running(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(data))
	return len(fields) > 2 && fields[2] != "Z"
}

// A build takes a warm session without starting a process of its own; a
// warm session found dead is replaced before anything is built; Close
// ends the warm sessions.
func TestWarmSessions(t *testing.T) {
	testutil.RequireTools(t, "nix-store")
	st, _, dir := testutil.Store(t)
	bb := testutil.AddBusybox(t, st, "busybox")
	pidFile := filepath.Join(dir, "pids")
	wrapper := filepath.Join(dir, "nix-store-wrapper")
	script := "#!/bin/sh\necho $$ >> " + pidFile + "\nexec nix-store \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	tr := &gatedTransport{Transport: &worker.Local{NixStore: wrapper, StoreURI: filepath.Join(dir, "worker")},
		free: 1, gate: make(chan struct{})}
	w := worker.NewExecutor("local", st, tr, nil)
	w.Warm = 1
	ctx := context.Background()
	if err := w.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if w.WarmCount() != 1 {
		t.Fatalf("%d warm sessions after Check, want 1", w.WarmCount())
	}

	// Every process start after Check is held: the build can only finish
	// on the session Check left warm.
	drvPath, drv := basic(t, bb, "warm-1", "echo building warm; echo 1 > $out")
	var log bytes.Buffer
	res, err := w.Build(ctx, &build.Request{DrvPath: drvPath, Drv: drv, Account: "alice", Log: &log})
	if err != nil || res.Status != build.Built {
		t.Fatalf("build on the warm session: %v %+v", err, res)
	}
	if !strings.Contains(log.String(), "building warm") {
		t.Errorf("log of a build on a warm session: %q", log.String())
	}

	// The replacement starts once released; kill it while it waits.
	close(tr.gate)
	waitFor(t, "a new warm session", func() bool { return w.WarmCount() == 1 })
	got := pids(t, pidFile)
	if len(got) != 2 {
		t.Fatalf("%d processes started, want 2 (Check's and its replacement)", len(got))
	}
	syscall.Kill(got[1], syscall.SIGKILL)
	waitFor(t, "the warm session's process to die", func() bool { return !running(got[1]) })
	drvPath, drv = basic(t, bb, "warm-2", "echo building again; echo 2 > $out")
	log.Reset()
	res, err = w.Build(ctx, &build.Request{DrvPath: drvPath, Drv: drv, Account: "alice", Log: &log})
	if err != nil || res.Status != build.Built || !strings.Contains(log.String(), "building again") {
		t.Fatalf("build after the warm session died: %v %+v, log %q", err, res, log.String())
	}

	waitFor(t, "a new warm session", func() bool { return w.WarmCount() == 1 })
	var live []int
	for _, pid := range pids(t, pidFile) {
		if running(pid) {
			live = append(live, pid)
		}
	}
	if len(live) != 1 {
		t.Fatalf("%d nix-store processes running with one warm session, want 1", len(live))
	}
	w.Close()
	if running(live[0]) {
		t.Error("the warm session's process outlived Close")
	}
	if w.WarmCount() != 0 {
		t.Errorf("%d warm sessions after Close", w.WarmCount())
	}
}
