package records

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nixfarm/nixfarm/internal/publicerr"
)

// UsageFilter selects the builds Usage sums: those of Account (every
// account the viewer may see if empty) queued in [Since, Until) (zero:
// unbounded). Bucket, if not 0, also sums them per period of that length
// (aligned on the Unix epoch, so hours and days start on the UTC hour
// and day); it is at least MinBucket.
type UsageFilter struct {
	Account string
	Since   time.Time
	Until   time.Time
	Bucket  time.Duration
}

// MinBucket is the shortest Bucket of a UsageFilter.
const MinBucket = time.Minute

// Totals are the sums over a set of builds.
type Totals struct {
	Builds int `json:"builds"`
	// ByStatus counts the builds by record status (only statuses seen).
	ByStatus   map[Status]int `json:"byStatus"`
	CPUSeconds float64        `json:"cpuSeconds"`
	CPUHours   float64        `json:"cpuHours"`
	// PeakMemory is the largest peak of any one build.
	PeakMemory      int64  `json:"peakMemory"`
	BytesUploaded   int64  `json:"bytesUploaded"`
	BytesDownloaded int64  `json:"bytesDownloaded"`
	OutputBytes     uint64 `json:"outputBytes"`
	// BuildSeconds and QueueSeconds are the builds' times building and
	// waiting for a worker (so far, for builds under way).
	BuildSeconds float64 `json:"buildSeconds"`
	QueueSeconds float64 `json:"queueSeconds"`
}

// BucketUsage is the usage of one period.
type BucketUsage struct {
	Start time.Time `json:"start"`
	Totals
}

// AccountUsage is one account's usage, with its periods (only those with
// builds, oldest first) if the filter asked for buckets.
type AccountUsage struct {
	Account string `json:"account"`
	Totals
	Buckets []BucketUsage `json:"buckets,omitempty"`
}

// Usage is what Usage answers: each account's usage (by name), and their
// sum.
type Usage struct {
	Since time.Time `json:"since,omitzero"`
	Until time.Time `json:"until,omitzero"`
	// BucketSeconds is the filter's Bucket (0: none).
	BucketSeconds int64          `json:"bucketSeconds,omitempty"`
	Accounts      []AccountUsage `json:"accounts"`
	Total         Totals         `json:"total"`
}

// Usage sums the builds f selects that v may see, per account: builds by
// status, CPU time, the largest peak memory, bytes moved, output bytes,
// and time building and queued. An account viewer asking for another
// account gets ErrForbidden.
func (s *Service) Usage(ctx context.Context, v Viewer, f UsageFilter) (*Usage, error) {
	var where []string
	var args []any
	switch {
	case !v.Admin:
		if f.Account != "" && f.Account != v.Account {
			return nil, fmt.Errorf("%w: you see only your own account's usage (%s)", ErrForbidden, v.Account)
		}
		where, args = append(where, "account = ?"), append(args, v.Account)
	case f.Account != "":
		where, args = append(where, "account = ?"), append(args, f.Account)
	}
	if !f.Since.IsZero() {
		where, args = append(where, "queued_at >= ?"), append(args, f.Since.UnixMilli())
	}
	if !f.Until.IsZero() {
		where, args = append(where, "queued_at < ?"), append(args, f.Until.UnixMilli())
	}
	if f.Bucket < 0 || (f.Bucket > 0 && f.Bucket < MinBucket) {
		return nil, publicerr.New("invalid bucket %s: give at least %s (1h, 1d, ...)", f.Bucket, MinBucket)
	}
	bucketMs := f.Bucket.Milliseconds()
	if bucketMs == 0 {
		bucketMs = 1 << 62 // one bucket: every queued_at divides to 0
	}
	now := s.now().UnixMilli()
	// Times as Record.BuildTime and QueueTime count them, summed in
	// SQL; output sizes from the JSON list of each build's outputs.
	q := `SELECT account, record_status, queued_at / ? AS bucket, count(*),
		total(cpu_seconds), max(peak_memory), total(bytes_uploaded), total(bytes_downloaded),
		total((SELECT total(json_extract(value, '$.narSize')) FROM json_each(CASE WHEN json_valid(output_sizes) THEN output_sizes ELSE '[]' END))),
		total(CASE WHEN started_at = 0 THEN 0
			WHEN stopped_at > 0 THEN max(stopped_at - started_at, 0)
			WHEN record_status = 'running' THEN max(? - started_at, 0) ELSE 0 END),
		total(CASE WHEN started_at > 0 THEN max(started_at - queued_at, 0)
			WHEN record_status = 'queued' THEN max(? - queued_at, 0) ELSE 0 END)
		FROM builds`
	args = append([]any{bucketMs, now, now}, args...)
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` GROUP BY account, record_status, bucket ORDER BY account, bucket`
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("summing build usage: %w", err)
	}
	defer rows.Close()
	u := &Usage{Since: f.Since, Until: f.Until, BucketSeconds: int64(f.Bucket / time.Second), Accounts: []AccountUsage{}}
	for rows.Next() {
		var account, status string
		var bucket int64
		var t Totals
		var up, down, out, buildMs, queueMs float64
		if err := rows.Scan(&account, &status, &bucket, &t.Builds, &t.CPUSeconds, &t.PeakMemory, &up, &down, &out, &buildMs, &queueMs); err != nil {
			return nil, fmt.Errorf("summing build usage: %w", err)
		}
		t.ByStatus = map[Status]int{Status(status): t.Builds}
		t.BytesUploaded, t.BytesDownloaded, t.OutputBytes = int64(up), int64(down), uint64(out)
		t.BuildSeconds, t.QueueSeconds = buildMs/1000, queueMs/1000
		if n := len(u.Accounts); n == 0 || u.Accounts[n-1].Account != account {
			u.Accounts = append(u.Accounts, AccountUsage{Account: account})
		}
		a := &u.Accounts[len(u.Accounts)-1]
		a.add(&t)
		if f.Bucket > 0 {
			start := time.UnixMilli(bucket * bucketMs).UTC()
			if n := len(a.Buckets); n == 0 || !a.Buckets[n-1].Start.Equal(start) {
				a.Buckets = append(a.Buckets, BucketUsage{Start: start})
			}
			a.Buckets[len(a.Buckets)-1].add(&t)
		}
		u.Total.add(&t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("summing build usage: %w", err)
	}
	u.Total.fill()
	for i := range u.Accounts {
		u.Accounts[i].fill()
		for j := range u.Accounts[i].Buckets {
			u.Accounts[i].Buckets[j].fill()
		}
	}
	return u, nil
}

func (t *Totals) add(o *Totals) {
	t.Builds += o.Builds
	if t.ByStatus == nil {
		t.ByStatus = map[Status]int{}
	}
	for st, n := range o.ByStatus {
		t.ByStatus[st] += n
	}
	t.CPUSeconds += o.CPUSeconds
	t.PeakMemory = max(t.PeakMemory, o.PeakMemory)
	t.BytesUploaded += o.BytesUploaded
	t.BytesDownloaded += o.BytesDownloaded
	t.OutputBytes += o.OutputBytes
	t.BuildSeconds += o.BuildSeconds
	t.QueueSeconds += o.QueueSeconds
}

// fill sets the derived figures once the sums are complete.
func (t *Totals) fill() {
	if t.ByStatus == nil {
		t.ByStatus = map[Status]int{}
	}
	t.CPUHours = t.CPUSeconds / 3600
}

// statusCounts writes counts by status in the order of a build's life:
// "2 built, 1 failed".
func (t *Totals) statusCounts() string {
	var parts []string
	for _, st := range Statuses {
		if n := t.ByStatus[st]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, st))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

// WriteUsageTable writes u as tables for people: one line per account
// (and the total, for several), then each account's periods if u has
// them.
func WriteUsageTable(w io.Writer, u *Usage) error {
	if len(u.Accounts) == 0 {
		_, err := fmt.Fprintln(w, "no builds")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ACCOUNT\tBUILDS\tCPU HOURS\tPEAK MEMORY\tOUTPUTS\tUPLOADED\tDOWNLOADED\tBUILDING\tQUEUED\tBY STATUS")
	line := func(name string, t *Totals) {
		fmt.Fprintf(tw, "%s\t%d\t%.3f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, t.Builds, t.CPUHours, optBytes(t.PeakMemory),
			optBytes(int64(t.OutputBytes)), optBytes(t.BytesUploaded), optBytes(t.BytesDownloaded),
			seconds(t.BuildSeconds), seconds(t.QueueSeconds), t.statusCounts())
	}
	for i := range u.Accounts {
		line(u.Accounts[i].Account, &u.Accounts[i].Totals)
	}
	if len(u.Accounts) > 1 {
		line("(total)", &u.Total)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if u.BucketSeconds == 0 {
		return nil
	}
	for i := range u.Accounts {
		a := &u.Accounts[i]
		fmt.Fprintf(w, "\n%s, per %s:\n", a.Account, time.Duration(u.BucketSeconds)*time.Second)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "FROM (UTC)\tBUILDS\tCPU HOURS\tPEAK MEMORY\tOUTPUTS\tBUILDING\tQUEUED\tBY STATUS")
		for j := range a.Buckets {
			b := &a.Buckets[j]
			fmt.Fprintf(tw, "%s\t%d\t%.3f\t%s\t%s\t%s\t%s\t%s\n", b.Start.Format("2006-01-02 15:04"), b.Builds, b.CPUHours,
				optBytes(b.PeakMemory), optBytes(int64(b.OutputBytes)), seconds(b.BuildSeconds), seconds(b.QueueSeconds), b.statusCounts())
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func optBytes(n int64) string {
	if n <= 0 {
		return "-"
	}
	return byteSize(uint64(n))
}

func seconds(s float64) string { return duration(time.Duration(s * float64(time.Second))) }

// ParseBucket reads a bucket length: a duration (1h, 1d, 15m) or "hour",
// "day", "week"; "" is none.
func ParseBucket(s string) (time.Duration, error) {
	switch s {
	case "":
		return 0, nil
	case "hour":
		return time.Hour, nil
	case "day":
		return 24 * time.Hour, nil
	case "week":
		return 7 * 24 * time.Hour, nil
	}
	d, err := parseDuration(s)
	if err != nil || d < MinBucket {
		return 0, publicerr.New("invalid bucket %q: give hour, day, week or a duration of at least %s (1h, 1d)", s, MinBucket)
	}
	return d, nil
}

// UsageFlags defines the flags of `nixfarm usage` on fs (--account only
// if withAccount) and returns a function that, after fs.Parse, makes the
// UsageFilter they give, reading durations back from now.
func UsageFlags(fs *flag.FlagSet, withAccount bool) func(now time.Time) (UsageFilter, error) {
	var account *string
	if withAccount {
		account = fs.String("account", "", "only this account's usage")
	}
	since := fs.String("since", "", "only builds queued since this time: RFC 3339, a date, or how long ago (2h, 7d)")
	until := fs.String("until", "", "only builds queued before this time (the same forms as --since)")
	bucket := fs.String("bucket", "", "also sum per period of this length, in UTC: hour, day, week or a duration (6h)")
	return func(now time.Time) (UsageFilter, error) {
		var f UsageFilter
		if account != nil {
			f.Account = *account
		}
		var err error
		if *since != "" {
			if f.Since, err = ParseTime(*since, now); err != nil {
				return f, err
			}
		}
		if *until != "" {
			if f.Until, err = ParseTime(*until, now); err != nil {
				return f, err
			}
		}
		f.Bucket, err = ParseBucket(*bucket)
		return f, err
	}
}
