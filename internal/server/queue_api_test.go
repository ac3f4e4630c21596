package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/apiauth"
	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

func TestVisibleQueue(t *testing.T) {
	est := 4.0
	classes := []scheduler.ClassQueue{{Class: "x86_64-linux", System: "x86_64-linux", Features: []string{}, Builds: []scheduler.QueuedBuild{
		{DrvPath: "/nix/store/aaaa-a.drv", Account: "alice", Position: 1, Reason: "busy", EstimatedStartSeconds: &est},
		{DrvPath: "/nix/store/bbbb-b.drv", Account: "bob", Position: 2, Reason: "busy"},
	}}}
	for _, c := range []struct {
		v    apiauth.Viewer
		want []string // account of each build listed; nil: counts only
	}{
		{apiauth.Viewer{}, nil},
		{apiauth.Viewer{Account: "alice"}, []string{"alice", ""}},
		{apiauth.Viewer{Account: "bob"}, []string{"", "bob"}},
		{apiauth.Viewer{Account: "carol", Admin: true}, []string{"alice", "bob"}},
	} {
		got := visibleQueue(classes, c.v)
		qc := got["classes"].([]queueClass)[0]
		if got["queued"] != 2 || qc.Queued != 2 {
			t.Errorf("%+v: counts %v, %d", c.v, got["queued"], qc.Queued)
		}
		var accounts []string
		for _, b := range qc.Builds {
			accounts = append(accounts, b.Account)
			if (b.Account == "") != (b.DrvPath == "") || b.Reason != "busy" {
				t.Errorf("%+v sees %+v", c.v, b)
			}
		}
		if strings.Join(accounts, ",") != strings.Join(c.want, ",") || (c.want == nil) != (qc.Builds == nil) {
			t.Errorf("%+v sees builds of %q, want %q", c.v, accounts, c.want)
		}
	}
	if classes[0].Builds[1].Account != "bob" {
		t.Fatal("visibleQueue changed its argument")
	}
}

func TestQueueRoute(t *testing.T) {
	_, d, _ := testutil.Store(t)
	log := slog.New(slog.DiscardHandler)
	sched := scheduler.New(scheduler.Config{Log: log, UnbuildableGrace: time.Hour})
	defer sched.Close()
	token := strings.Repeat("t", 40)
	f := &Farm{db: d, log: log, sched: sched, accounts: account.New(d, account.DefaultValues(), log), apiToken: token}
	for _, a := range []string{"alice", "bob"} {
		drv := &derivation.Basic{Name: "x", Platform: "riscv64-linux", Env: map[string]string{}}
		sched.Submit(context.Background(), &build.Request{DrvPath: storepath.Path("/nix/store/" + strings.Repeat("d", 32) + "-" + a + ".drv"), Drv: drv, Account: a},
			func(*build.Result, error) {})
	}
	srv := httptest.NewServer(f.api(http.NotFoundHandler()))
	defer srv.Close()
	get := func(token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/queue", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	code, body := get("")
	if code != 200 || !strings.Contains(body, `"queued": 2`) || strings.Contains(body, "alice") || strings.Contains(body, `"builds"`) {
		t.Errorf("anonymous: %d %s", code, body)
	}
	code, body = get(token)
	var answer struct {
		Classes []scheduler.ClassQueue
	}
	if err := json.Unmarshal([]byte(body), &answer); err != nil || code != 200 || len(answer.Classes) != 1 || len(answer.Classes[0].Builds) != 2 {
		t.Fatalf("admin: %d %s", code, body)
	}
	b := answer.Classes[0].Builds[0]
	if b.Account != "alice" || b.Position != 1 || !strings.HasPrefix(b.Reason, "no worker offers riscv64-linux; waiting ") || b.EstimatedStartSeconds != nil {
		t.Errorf("admin sees %+v", b)
	}
	if code, _ := get("wrong"); code != http.StatusUnauthorized {
		t.Errorf("a wrong token: %d", code)
	}
}
