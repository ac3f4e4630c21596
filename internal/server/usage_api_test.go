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
	"github.com/nixfarm/nixfarm/internal/records"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/sshd"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// GET /api/v1/usage: an account's token sees its own usage and gets 403
// for another's; the farm's token every account's; no token, 401.
func TestUsageRoute(t *testing.T) {
	_, d, _ := testutil.Store(t)
	log := slog.New(slog.DiscardHandler)
	sched := scheduler.New(scheduler.Config{Log: log, UnbuildableGrace: time.Hour})
	defer sched.Close()
	ctx := context.Background()
	accounts := account.New(d, account.DefaultValues(), log)
	farmToken := strings.Repeat("t", 40)
	f := &Farm{db: d, log: log, sched: sched, accounts: accounts, apiToken: farmToken, records: records.New(d, t.TempDir(), nil)}
	now := time.Now().UnixMilli()
	for _, a := range []string{"alice", "alice", "bob"} {
		if _, err := d.Exec(`INSERT INTO builds (drv_path, account, record_status, status, queued_at, started_at, stopped_at, cpu_seconds)
			VALUES ('/nix/store/x-y.drv', ?, 'built', 0, ?, ?, ?, 1800)`, a, now-3000, now-2000, now-1000); err != nil {
			t.Fatal(err)
		}
	}
	if err := accounts.Add(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	_, aliceToken, err := accounts.CreateAPIToken(ctx, "alice", account.ScopeRead, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.api(http.NotFoundHandler()))
	defer srv.Close()
	get := func(query, token string) (int, records.Usage, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/usage"+query, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var u records.Usage
		json.Unmarshal(body, &u)
		return resp.StatusCode, u, string(body)
	}
	if code, u, body := get("?since=1h&bucket=hour", aliceToken); code != 200 || len(u.Accounts) != 1 || u.Accounts[0].Account != "alice" ||
		u.Total.Builds != 2 || u.Total.CPUHours != 1 || len(u.Accounts[0].Buckets) == 0 {
		t.Errorf("alice: %d %s", code, body)
	}
	if code, _, body := get("?account=alice", aliceToken); code != 200 {
		t.Errorf("alice asking for her own: %d %s", code, body)
	}
	if code, _, body := get("?account=bob", aliceToken); code != http.StatusForbidden || strings.Contains(body, "1800") {
		t.Errorf("alice asking for bob's usage: %d %s", code, body)
	}
	if code, u, body := get("", farmToken); code != 200 || len(u.Accounts) != 2 || u.Total.Builds != 3 {
		t.Errorf("the farm's token: %d %s", code, body)
	}
	if code, u, body := get("?account=bob", farmToken); code != 200 || len(u.Accounts) != 1 || u.Accounts[0].Builds != 1 {
		t.Errorf("admin asking for bob's: %d %s", code, body)
	}
	for _, q := range []string{"?since=yesterday", "?until=x", "?bucket=1s", "?bucket=month"} {
		if code, _, body := get(q, farmToken); code != http.StatusBadRequest || !strings.Contains(body, "invalid") {
			t.Errorf("%s: %d %s", q, code, body)
		}
	}
	if code, _, _ := get("", ""); code != http.StatusUnauthorized {
		t.Errorf("no token: %d", code)
	}
}

// `nixfarm usage` and `nixfarm summary` over SSH show the session's
// account only.
func TestUsageCommands(t *testing.T) {
	_, d, _ := testutil.Store(t)
	now := time.Now().UnixMilli()
	for _, a := range []string{"alice", "bob"} {
		if _, err := d.Exec(`INSERT INTO builds (drv_path, account, record_status, status, queued_at, started_at, stopped_at, cpu_seconds)
			VALUES (?, ?, 'failed', 0, ?, ?, ?, 36)`, "/nix/store/"+strings.Repeat("a", 32)+"-"+a+"-pkg.drv", a, now-3000, now-2000, now-1000); err != nil {
			t.Fatal(err)
		}
	}
	h := &execHandler{records: records.New(d, t.TempDir(), nil), log: slog.New(slog.DiscardHandler)}
	run := func(command string) (uint32, string, string) {
		var out, errOut strings.Builder
		code := h.Exec(context.Background(), &sshd.Session{Account: "bob", Command: command, Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut})
		return code, out.String(), errOut.String()
	}
	code, out, stderr := run("nixfarm usage --since 1h --json")
	var u records.Usage
	if err := json.Unmarshal([]byte(out), &u); err != nil || code != 0 || len(u.Accounts) != 1 || u.Accounts[0].Account != "bob" ||
		u.Total.ByStatus[records.Failed] != 1 || u.Total.CPUHours != 0.01 {
		t.Errorf("usage --json: %d %s %s", code, out, stderr)
	}
	if code, out, _ := run("nixfarm usage"); code != 0 || !strings.Contains(out, "1 failed") || strings.Contains(out, "alice") {
		t.Errorf("usage: %d %s", code, out)
	}
	if code, out, _ := run("nixfarm summary --since 1h --format github"); code != 0 || !strings.Contains(out, "`bob-pkg`") ||
		!strings.Contains(out, "Failures (1)") || strings.Contains(out, "alice") || !strings.Contains(out, "account bob") {
		t.Errorf("summary: %d %s", code, out)
	}
	for _, c := range []string{"nixfarm usage --account alice", "nixfarm summary --format github", "nixfarm summary --since 1h extra", "nixfarm usage --bucket 1s"} {
		if code, _, stderr := run(c); code == 0 || !strings.Contains(stderr, "error: nixfarm:") {
			t.Errorf("%q: %d %s", c, code, stderr)
		}
	}
	if code, _, stderr := run("nixfarm summary --help"); code != 0 || !strings.Contains(stderr, "log-url-base") {
		t.Errorf("summary --help: %d %s", code, stderr)
	}
}
