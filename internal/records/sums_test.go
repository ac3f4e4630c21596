package records_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/db"
	"github.com/nixfarm/nixfarm/internal/records"
)

// insertRecords returns a state database holding recs as given (ids from
// 1, in order; times, sizes and usage exactly as in recs).
func insertRecords(t *testing.T, recs []records.Record) *sql.DB {
	t.Helper()
	d, err := db.Open(context.Background(), filepath.Join(t.TempDir(), "nixfarm.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ms := func(tm time.Time) int64 {
		if tm.IsZero() {
			return 0
		}
		return tm.UnixMilli()
	}
	for _, r := range recs {
		sizes, _ := json.Marshal(r.Outputs)
		if len(r.Outputs) == 0 {
			sizes = nil
		}
		if _, err := d.Exec(`INSERT INTO builds (drv_path, account, system, worker, workers, attempts, record_status, status, error,
			queued_at, started_at, stopped_at, output_sizes, cpu_seconds, peak_memory, bytes_uploaded, bytes_downloaded)
			VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			"/nix/store/"+strings.Repeat("a", 32)+"-"+r.DrvPath+".drv", r.Account, r.System, r.Worker, r.Worker, r.Attempts, string(r.Status), r.Error,
			ms(r.QueuedAt), ms(r.StartedAt), ms(r.StoppedAt), string(sizes), r.CPUSeconds, r.PeakMemory, r.BytesUploaded, r.BytesDownloaded); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// rec is a build of account queued at t0+queued, waiting wait, running
// run, with cpu seconds, peak memory and outputs of out bytes.
func rec(name, account string, st records.Status, queued, wait, run time.Duration, cpu float64, peak int64, out uint64) records.Record {
	r := records.Record{DrvPath: name, Account: account, System: "x86_64-linux", Worker: "local", Attempts: 1, Status: st,
		QueuedAt: t0.Add(queued), CPUSeconds: cpu, PeakMemory: peak}
	if wait >= 0 {
		r.StartedAt = r.QueuedAt.Add(wait)
		if st.Final() {
			r.StoppedAt = r.StartedAt.Add(run)
		}
	}
	if out > 0 {
		r.Outputs = []records.Output{{Name: "out", Path: "/nix/store/" + strings.Repeat("b", 32) + "-" + name, NarSize: out}}
	}
	return r
}

func usageSample() []records.Record {
	return []records.Record{
		rec("a1", "alice", records.Built, 0, time.Second, time.Minute, 1800, 100, 1000),
		rec("a2", "alice", records.Failed, 10*time.Minute, 2*time.Second, 30*time.Second, 900, 300, 0),
		rec("a3", "alice", records.Built, 90*time.Minute, 0, 2*time.Minute, 1800, 200, 24),
		rec("a4", "alice", records.Cached, 100*time.Minute, -1, 0, 0, 0, 0),
		rec("b1", "bob", records.Built, 5*time.Minute, 4*time.Second, time.Minute, 7200, 5000, 7),
		// Still running at now (t0+3h), started after 10 s.
		rec("b2", "bob", records.Running, 150*time.Minute, 10*time.Second, 0, 0, 0, 0),
	}
}

func TestUsageSums(t *testing.T) {
	now := t0.Add(3 * time.Hour)
	svc := records.New(insertRecords(t, usageSample()), t.TempDir(), func() time.Time { return now })
	ctx := context.Background()
	u, err := svc.Usage(ctx, records.Viewer{Admin: true}, records.UsageFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Accounts) != 2 || u.Accounts[0].Account != "alice" || u.Accounts[1].Account != "bob" {
		t.Fatalf("accounts: %+v", u.Accounts)
	}
	a, b := u.Accounts[0], u.Accounts[1]
	if a.Builds != 4 || a.ByStatus[records.Built] != 2 || a.ByStatus[records.Failed] != 1 || a.ByStatus[records.Cached] != 1 || len(a.ByStatus) != 3 {
		t.Errorf("alice's builds: %d %v", a.Builds, a.ByStatus)
	}
	if a.CPUSeconds != 4500 || a.CPUHours != 1.25 || a.PeakMemory != 300 || a.OutputBytes != 1024 {
		t.Errorf("alice's sums: %+v", a.Totals)
	}
	if a.BuildSeconds != 60+30+120 || a.QueueSeconds != 3 {
		t.Errorf("alice's times: building %v, queued %v", a.BuildSeconds, a.QueueSeconds)
	}
	// bob's running build counts its time so far: 3h - 2h30m10s.
	if b.Builds != 2 || b.CPUHours != 2 || b.PeakMemory != 5000 || b.BuildSeconds != 60+(30*60-10) || b.QueueSeconds != 14 {
		t.Errorf("bob: %+v", b.Totals)
	}
	if u.Total.Builds != 6 || u.Total.CPUHours != 3.25 || u.Total.PeakMemory != 5000 || u.Total.OutputBytes != 1031 || a.Buckets != nil {
		t.Errorf("total: %+v", u.Total)
	}

	// Periods: queued in [t0+5m, t0+100m), per hour.
	u, err = svc.Usage(ctx, records.Viewer{Admin: true}, records.UsageFilter{Since: t0.Add(5 * time.Minute), Until: t0.Add(100 * time.Minute), Bucket: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	a = u.Accounts[0]
	if a.Builds != 2 || len(a.Buckets) != 2 || !a.Buckets[0].Start.Equal(t0) || !a.Buckets[1].Start.Equal(t0.Add(time.Hour)) ||
		a.Buckets[0].Builds != 1 || a.Buckets[0].ByStatus[records.Failed] != 1 || a.Buckets[1].CPUHours != 0.5 || a.Buckets[1].OutputBytes != 24 {
		t.Errorf("alice per hour: %+v", a)
	}
	if u.BucketSeconds != 3600 || u.Total.Builds != 3 {
		t.Errorf("usage per hour: %+v", u)
	}
	if _, err := svc.Usage(ctx, records.Viewer{Admin: true}, records.UsageFilter{Bucket: time.Second}); err == nil {
		t.Error("a bucket of a second was accepted")
	}
}

// An account sees only its own usage, whatever it asks for.
func TestUsageIsolation(t *testing.T) {
	svc := records.New(insertRecords(t, usageSample()), t.TempDir(), func() time.Time { return t0.Add(3 * time.Hour) })
	ctx := context.Background()
	for _, f := range []records.UsageFilter{{}, {Account: "bob"}, {Bucket: time.Hour}} {
		u, err := svc.Usage(ctx, records.Viewer{Account: "bob"}, f)
		if err != nil {
			t.Fatal(err)
		}
		if len(u.Accounts) != 1 || u.Accounts[0].Account != "bob" || u.Total.Builds != 2 {
			t.Errorf("%+v: bob sees %+v", f, u)
		}
	}
	if _, err := svc.Usage(ctx, records.Viewer{Account: "bob"}, records.UsageFilter{Account: "alice"}); !errors.Is(err, records.ErrForbidden) {
		t.Errorf("bob asking for alice's usage: %v", err)
	}
	u, err := svc.Usage(ctx, records.Viewer{Account: "carol"}, records.UsageFilter{})
	if err != nil || len(u.Accounts) != 0 || u.Total.Builds != 0 {
		t.Errorf("carol, who built nothing: %+v %v", u, err)
	}
	var b strings.Builder
	records.WriteUsageTable(&b, u)
	if b.String() != "no builds\n" {
		t.Errorf("empty table: %q", b.String())
	}
}

func TestWriteUsageTable(t *testing.T) {
	svc := records.New(insertRecords(t, usageSample()), t.TempDir(), func() time.Time { return t0.Add(3 * time.Hour) })
	u, err := svc.Usage(context.Background(), records.Viewer{Admin: true}, records.UsageFilter{Bucket: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := records.WriteUsageTable(&b, u); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"CPU HOURS", "alice", "1.250", "2 built, 1 failed, 1 cached", "(total)", "3.250", "alice, per 24h0m0s:", "2026-11-01 00:00"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestParseBucket(t *testing.T) {
	for s, want := range map[string]time.Duration{"": 0, "hour": time.Hour, "day": 24 * time.Hour, "6h": 6 * time.Hour, "1d": 24 * time.Hour} {
		if got, err := records.ParseBucket(s); err != nil || got != want {
			t.Errorf("%q: %v %v", s, got, err)
		}
	}
	for _, s := range []string{"1s", "-1h", "month", "0"} {
		if _, err := records.ParseBucket(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}
