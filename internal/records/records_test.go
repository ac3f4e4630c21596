package records_test

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/db"
	"github.com/nixfarm/nixfarm/internal/records"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

type row struct {
	drv, account, system, status string
	queued, stopped              time.Time
}

// newDB returns a state database holding rows (ids from 1, in order),
// and the log directory, with a log file for each.
func newDB(t testing.TB, rows []row) (*sql.DB, string) {
	t.Helper()
	dir := t.TempDir()
	d, err := db.Open(context.Background(), filepath.Join(dir, "nixfarm.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	logs := filepath.Join(dir, "logs")
	os.MkdirAll(logs, 0o755)
	for _, r := range rows {
		var stopped int64
		if !r.stopped.IsZero() {
			stopped = r.stopped.UnixMilli()
		}
		res, err := d.Exec(`INSERT INTO builds (drv_path, account, system, record_status, status, queued_at, stopped_at, output_sizes)
			VALUES (?, ?, ?, ?, 0, ?, ?, ?)`, "/nix/store/"+strings.Repeat("a", 32)+"-"+r.drv+".drv", r.account, r.system, r.status,
			r.queued.UnixMilli(), stopped, `[{"name":"out","path":"/nix/store/x-out","narSize":10}]`)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := res.LastInsertId()
		os.WriteFile(records.LogPath(logs, id), []byte("log\n"), 0o644)
	}
	return d, logs
}

func sample() []row {
	return []row{
		{"hello", "alice", "x86_64-linux", "built", t0, t0.Add(time.Minute)},
		{"broken", "alice", "x86_64-linux", "failed", t0.Add(time.Hour), t0.Add(time.Hour + time.Minute)},
		{"hello", "bob", "aarch64-linux", "built", t0.Add(2 * time.Hour), t0.Add(2*time.Hour + time.Minute)},
		{"secret", "bob", "x86_64-linux", "running", t0.Add(3 * time.Hour), time.Time{}},
		{"world", "alice", "aarch64-linux", "cached", t0.Add(4 * time.Hour), t0.Add(4 * time.Hour)},
	}
}

func names(list []records.Record) string {
	var out []string
	for _, r := range list {
		out = append(out, r.Account+"/"+r.DrvName())
	}
	return strings.Join(out, " ")
}

func TestListFilters(t *testing.T) {
	d, logs := newDB(t, sample())
	svc := records.New(d, logs, nil)
	admin := records.Viewer{Admin: true}
	for _, tc := range []struct {
		name string
		f    records.Filter
		want string
	}{
		{"all, newest first", records.Filter{}, "alice/world bob/secret bob/hello alice/broken alice/hello"},
		{"account", records.Filter{Account: "bob"}, "bob/secret bob/hello"},
		{"status", records.Filter{Status: records.Built}, "bob/hello alice/hello"},
		{"system", records.Filter{System: "aarch64-linux"}, "alice/world bob/hello"},
		{"since", records.Filter{Since: t0.Add(3 * time.Hour)}, "alice/world bob/secret"},
		{"until", records.Filter{Until: t0.Add(time.Hour)}, "alice/hello"},
		{"since and until", records.Filter{Since: t0.Add(time.Hour), Until: t0.Add(3 * time.Hour)}, "bob/hello alice/broken"},
		{"drv substring", records.Filter{DrvSubstring: "hell"}, "bob/hello alice/hello"},
		{"drv substring is not a pattern", records.Filter{DrvSubstring: "h%o"}, ""},
		{"everything", records.Filter{Account: "alice", Status: records.Built, System: "x86_64-linux", DrvSubstring: "hello"}, "alice/hello"},
	} {
		list, next, err := svc.List(context.Background(), admin, tc.f)
		if err != nil || next != "" || names(list) != tc.want {
			t.Errorf("%s: got %q (next %q, %v), want %q", tc.name, names(list), next, err, tc.want)
		}
	}
	if _, _, err := svc.List(context.Background(), admin, records.Filter{Status: "done"}); err == nil || !strings.Contains(err.Error(), "queued, running") {
		t.Errorf("unknown status: %v", err)
	}
	if _, _, err := svc.List(context.Background(), admin, records.Filter{Cursor: "x'; DROP"}); err == nil {
		t.Error("a bad cursor was accepted")
	}
}

func TestListPages(t *testing.T) {
	d, logs := newDB(t, sample())
	svc := records.New(d, logs, nil)
	var got []string
	f := records.Filter{Limit: 2}
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		list, next, err := svc.List(context.Background(), records.Viewer{Admin: true}, f)
		if err != nil || len(list) > 2 {
			t.Fatalf("%v %d", err, len(list))
		}
		got = append(got, names(list))
		if next == "" {
			break
		}
		f.Cursor = next
	}
	if strings.Join(got, " | ") != "alice/world bob/secret | bob/hello alice/broken | alice/hello" {
		t.Errorf("pages: %q", got)
	}
}

// An account never sees another's records, whatever it asks for.
func TestAccountIsolation(t *testing.T) {
	d, logs := newDB(t, sample())
	svc := records.New(d, logs, nil)
	ctx := context.Background()
	bob := records.Viewer{Account: "bob"}
	for _, f := range []records.Filter{{}, {DrvSubstring: "hello"}, {Status: records.Built}, {Limit: 1, Cursor: "5"}} {
		list, _, err := svc.List(ctx, bob, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range list {
			if r.Account != "bob" {
				t.Errorf("filter %+v: bob sees %s's build %d", f, r.Account, r.ID)
			}
		}
	}
	if _, _, err := svc.List(ctx, bob, records.Filter{Account: "alice"}); !errors.Is(err, records.ErrForbidden) {
		t.Errorf("bob asking for alice's builds: %v", err)
	}
	if _, err := svc.Get(ctx, bob, 1); !errors.Is(err, records.ErrForbidden) {
		t.Errorf("bob getting alice's build: %v", err)
	}
	if r, err := svc.Get(ctx, bob, 3); err != nil || r.Account != "bob" || r.Outputs[0].NarSize != 10 {
		t.Errorf("bob getting his build: %v %+v", err, r)
	}
	if _, err := svc.Get(ctx, records.Viewer{Admin: true}, 99); !errors.Is(err, records.ErrNotFound) {
		t.Errorf("missing build: %v", err)
	}
	if r, err := svc.Get(ctx, records.Viewer{Admin: true}, 1); err != nil || r.Account != "alice" {
		t.Errorf("admin: %v %+v", err, r)
	}
}

// Prune removes the records, and logs, of builds that ended before the
// retention period, by the injected clock, and keeps builds under way.
func TestPrune(t *testing.T) {
	d, logs := newDB(t, sample())
	now := t0.Add(24*time.Hour + 90*time.Minute)
	svc := records.New(d, logs, func() time.Time { return now })
	ctx := context.Background()
	n, err := svc.Prune(ctx, 24*time.Hour) // cutoff t0+1h30m: builds 1 and 2 ended before
	if err != nil || n != 2 {
		t.Fatalf("pruned %d: %v", n, err)
	}
	list, _, _ := svc.List(ctx, records.Viewer{Admin: true}, records.Filter{})
	if names(list) != "alice/world bob/secret bob/hello" {
		t.Errorf("left: %s", names(list))
	}
	for id, want := range map[int64]bool{1: false, 2: false, 3: true, 4: true} {
		if _, err := os.Stat(records.LogPath(logs, id)); (err == nil) != want {
			t.Errorf("log of build %d: %v, want kept %v", id, err, want)
		}
	}
	now = now.Add(100 * 24 * time.Hour)
	if n, err := svc.Prune(ctx, 0); err != nil || n != 0 {
		t.Errorf("retention 0 pruned %d: %v", n, err)
	}
	if n, err := svc.Prune(ctx, time.Hour); err != nil || n != 2 {
		t.Errorf("pruned %d: %v", n, err)
	}
	list, _, _ = svc.List(ctx, records.Viewer{Admin: true}, records.Filter{})
	if names(list) != "bob/secret" {
		t.Errorf("a build under way was pruned: left %q", names(list))
	}
}

func TestFilterFlags(t *testing.T) {
	now := t0
	fs := flag.NewFlagSet("builds", flag.ContinueOnError)
	get := records.FilterFlags(fs, true)
	if err := fs.Parse([]string{"--account", "a", "--status", "timed-out", "--since", "2h", "--until", "2026-11-01T11:30:00Z", "--drv", "x", "--limit", "7"}); err != nil {
		t.Fatal(err)
	}
	f, err := get(now)
	want := records.Filter{Account: "a", Status: records.TimedOut, Since: t0.Add(-2 * time.Hour), Until: t0.Add(-30 * time.Minute), DrvSubstring: "x", Limit: 7}
	if err != nil || f != want {
		t.Errorf("got %+v %v\nwant %+v", f, err, want)
	}
	for _, s := range []string{"7d", "1d12h", "2026-10-01", "2026-10-01T00:00:00+02:00"} {
		if _, err := records.ParseTime(s, now); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	for _, s := range []string{"yesterday", "-2h", "2x", "d", "99999999d"} {
		if _, err := records.ParseTime(s, now); err == nil {
			t.Errorf("%s accepted", s)
		}
	}
	fs = flag.NewFlagSet("builds", flag.ContinueOnError)
	get = records.FilterFlags(fs, false)
	fs.Parse([]string{"--status", "done"})
	if _, err := get(now); err == nil {
		t.Error("status done accepted")
	}
	if fs.Lookup("account") != nil {
		t.Error("--account defined without withAccount")
	}
}

func TestWriteTable(t *testing.T) {
	d, logs := newDB(t, sample())
	svc := records.New(d, logs, nil)
	list, _, _ := svc.List(context.Background(), records.Viewer{Admin: true}, records.Filter{})
	var b strings.Builder
	if err := records.WriteTable(&b, list, t0.Add(5*time.Hour)); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"STATUS", "alice", "broken", "x86_64-linux", "10 B", "running"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
