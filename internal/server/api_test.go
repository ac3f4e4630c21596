package server

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/apiauth"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

func TestVisibleWorkers(t *testing.T) {
	workers := []scheduler.WorkerInfo{{Name: "w", Running: []scheduler.RunningBuild{
		{DrvPath: "/nix/store/aaaa-a.drv", Account: "alice", Attempt: 1},
		{DrvPath: "/nix/store/bbbb-b.drv", Account: "bob", Attempt: 2},
	}}}
	for _, c := range []struct {
		v    apiauth.Viewer
		want []scheduler.RunningBuild
	}{
		{apiauth.Viewer{}, []scheduler.RunningBuild{{Attempt: 1}, {Attempt: 2}}},
		{apiauth.Viewer{Account: "alice"}, []scheduler.RunningBuild{workers[0].Running[0], {Attempt: 2}}},
		{apiauth.Viewer{Account: "bob"}, []scheduler.RunningBuild{{Attempt: 1}, workers[0].Running[1]}},
		{apiauth.Viewer{Account: "carol", Admin: true}, workers[0].Running},
	} {
		got := visibleWorkers(workers, c.v)[0].Running
		if len(got) != len(c.want) || got[0] != c.want[0] || got[1] != c.want[1] {
			t.Errorf("%+v sees %+v, want %+v", c.v, got, c.want)
		}
	}
	if workers[0].Running[1].DrvPath == "" {
		t.Fatal("visibleWorkers changed its argument")
	}
}

func TestHealthAndReadiness(t *testing.T) {
	_, d, _ := testutil.Store(t)
	log := slog.New(slog.DiscardHandler)
	f := &Farm{db: d, log: log, sched: scheduler.New(scheduler.Config{Log: log}),
		accounts: account.New(d, account.DefaultValues(), log), apiToken: strings.Repeat("t", 40)}
	srv := httptest.NewServer(f.api(http.NotFoundHandler()))
	defer srv.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, p := range []string{"/healthz", "/-/healthy"} {
		if code, body := get(p); code != 200 || body != "ok\n" {
			t.Fatalf("%s: %d %q", p, code, body)
		}
	}
	if code, body := get("/readyz"); code != 200 || !strings.Contains(body, `"ready": true`) {
		t.Fatalf("readyz: %d %s", code, body)
	}
	f.sched.Close()
	code, body := get("/readyz")
	var answer struct {
		Ready    bool
		NotReady map[string]string
	}
	if err := json.Unmarshal([]byte(body), &answer); err != nil || code != 503 || answer.Ready || answer.NotReady["scheduler"] == "" || answer.NotReady["database"] != "" {
		t.Fatalf("readyz with the scheduler stopped: %d %s", code, body)
	}
	d.Close()
	code, body = get("/readyz")
	if err := json.Unmarshal([]byte(body), &answer); err != nil || code != 503 || answer.NotReady["database"] == "" || strings.Contains(body, "sql") {
		t.Fatalf("readyz with the database closed: %d %s", code, body)
	}
	// The health check does not depend on either.
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("healthz: %d", code)
	}
	// A bad token is refused even where anonymous requests are served.
	req, _ := http.NewRequest("GET", srv.URL+"/api/v1/workers", nil)
	req.Header.Set("Authorization", "Bearer nope")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("workers with a bad token: %d", resp.StatusCode)
	}
}
