package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// Working out the queue holds the scheduler's lock for a time that grows
// with the queue (about 8 ms for 10,000 builds), and /api/v1/queue is
// served to anyone: requests within queueSnapshotTTL share one listing,
// so a flood of them cannot keep the scheduler from dispatching.
func TestQueueRouteSharesOneListing(t *testing.T) {
	defer func(ttl time.Duration) { queueSnapshotTTL = ttl }(queueSnapshotTTL)
	queueSnapshotTTL = time.Hour
	_, d, _ := testutil.Store(t)
	log := slog.New(slog.DiscardHandler)
	sched := scheduler.New(scheduler.Config{Log: log, UnbuildableGrace: time.Hour})
	defer sched.Close()
	f := &Farm{db: d, log: log, sched: sched, accounts: account.New(d, account.DefaultValues(), log), apiToken: strings.Repeat("t", 40)}
	submit := func(name string) {
		drv := &derivation.Basic{Name: name, Platform: "riscv64-linux", Env: map[string]string{}}
		sched.Submit(context.Background(), &build.Request{DrvPath: storepath.Path("/nix/store/" + strings.Repeat("d", 32) + "-" + name + ".drv"), Drv: drv, Account: "alice"},
			func(*build.Result, error) {})
	}
	submit("one")
	srv := httptest.NewServer(f.api(http.NotFoundHandler()))
	defer srv.Close()
	get := func() string {
		t.Helper()
		resp, err := http.Get(srv.URL + "/api/v1/queue")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	if body := get(); !strings.Contains(body, `"queued": 1`) {
		t.Fatalf("first listing: %s", body)
	}
	submit("two")
	if body := get(); !strings.Contains(body, `"queued": 1`) {
		t.Errorf("a second request worked the queue out again: %s", body)
	}
}
