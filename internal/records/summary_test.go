package records_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/records"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// summarySample is a CI run's builds: failures of every kind, builds
// enough to fold their table, cached and substituted ones, and another
// account's build that must not show.
func summarySample() []records.Record {
	list := []records.Record{
		rec("hello-2.12", "alice", records.Built, 0, time.Second, 75*time.Second, 61.5, 1<<20, 3<<20),
		rec("broken-1.0", "alice", records.Failed, time.Minute, 2*time.Second, 12*time.Second, 3, 0, 0),
		rec("slow-test", "alice", records.TimedOut, 2*time.Minute, 0, time.Hour, 3500, 0, 0),
		rec("flaky", "alice", records.InfrastructureError, 3*time.Minute, -1, 0, 0, 0, 0),
		rec("glibc-2.40", "alice", records.Cached, 4*time.Minute, -1, 0, 0, 0, 0),
		rec("zlib-1.3", "alice", records.Substituted, 5*time.Minute, -1, 0, 0, 0, 0),
		rec("secret", "bob", records.Failed, 6*time.Minute, time.Second, time.Second, 1, 0, 0),
	}
	list[2].Worker = "big|box<1>"
	for i := range 11 {
		list = append(list, rec(fmt.Sprintf("lib%02d", 10-i), "alice", records.Built, 7*time.Minute+time.Duration(i)*time.Second,
			0, time.Duration(i+1)*time.Second, float64(i)/2, 0, uint64(i)*1000))
	}
	return list
}

func TestSummaryGolden(t *testing.T) {
	svc := records.New(insertRecords(t, summarySample()), t.TempDir(), nil)
	fs := flag.NewFlagSet("summary", flag.ContinueOnError)
	get := records.SummaryFlags(fs, true)
	if err := fs.Parse([]string{"--since", "2026-11-01T12:00:00Z", "--until", "2026-11-01T13:00:00Z", "--log-url-base", "https://farm.example:2280/"}); err != nil {
		t.Fatal(err)
	}
	f, o, err := get(t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	list, more, err := svc.ListAll(context.Background(), records.Viewer{Account: "alice"}, f, records.MaxSummaryBuilds)
	if err != nil || more || len(list) != 17 {
		t.Fatalf("%d records, more %v: %v", len(list), more, err)
	}
	var b strings.Builder
	if err := records.WriteSummary(&b, list, o); err != nil {
		t.Fatal(err)
	}
	golden(t, "summary.golden", b.String())

	// Without a log address, the command that prints the log.
	o.LogURLBase = ""
	b.Reset()
	records.WriteSummary(&b, list[len(list)-3:], o)
	if !strings.Contains(b.String(), "`nixfarm logs 2`") || strings.Contains(b.String(), "<details>") {
		t.Errorf("summary without a log address:\n%s", b.String())
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it); got:\n%s", path, got)
	}
}

func TestListAll(t *testing.T) {
	svc := records.New(insertRecords(t, summarySample()), t.TempDir(), nil)
	list, more, err := svc.ListAll(context.Background(), records.Viewer{Admin: true}, records.Filter{Limit: 1, Cursor: "3"}, 5)
	if err != nil || !more || len(list) != 5 || list[0].ID != 18 {
		t.Errorf("bounded: %d %v %v", len(list), more, err)
	}
	list, more, err = svc.ListAll(context.Background(), records.Viewer{Admin: true}, records.Filter{}, 18)
	if err != nil || more || len(list) != 18 {
		t.Errorf("exactly all: %d %v %v", len(list), more, err)
	}
}

func TestSummaryFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--since", "1h", "--format", "html"},
		{"--since", "yesterday"},
		{"--since", "1h", "--log-url-base", "ftp://x"},
		{"--since", "1h", "--log-url-base", "https://x/a)b"},
		{"--since", "1h", "--log-url-base", "farm:2280"},
	} {
		fs := flag.NewFlagSet("summary", flag.ContinueOnError)
		get := records.SummaryFlags(fs, false)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		if _, _, err := get(t0); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}
