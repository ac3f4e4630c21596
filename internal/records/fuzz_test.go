package records_test

import (
	"context"
	"errors"
	"testing"

	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/records"
)

// FuzzListQuery feeds the API's and the SSH commands' query words
// (status, since, until, drv, system, cursor, limit), as a hostile
// account sends them, through their parsers and List: no panic, any
// error is one the caller may be told (or ErrForbidden), a page is never
// larger than MaxLimit, and bob never sees alice's builds.
func FuzzListQuery(f *testing.F) {
	f.Add("built", "2h", "2026-11-01T12:00:00Z", "hello", "x86_64-linux", "", 10)
	f.Add("", "", "", "%", "", "3", 0)
	f.Add("failed", "-5m", "1e9h", "_", "'; DROP TABLE builds; --", "9223372036854775807", -1)
	f.Add("running", "0s", "", "\x00", "\n", "-1", 100000)
	d, logs := newDB(f, sample())
	svc := records.New(d, logs, nil)
	bob := records.Viewer{Account: "bob"}
	f.Fuzz(func(t *testing.T, status, since, until, drv, system, cursor string, limit int) {
		filter := records.Filter{System: system, DrvSubstring: drv, Cursor: cursor, Limit: limit}
		var err error
		if status != "" {
			filter.Status, err = records.ParseStatus(status)
		}
		if since != "" && err == nil {
			filter.Since, err = records.ParseTime(since, t0)
		}
		if until != "" && err == nil {
			filter.Until, err = records.ParseTime(until, t0)
		}
		if err != nil {
			if !publicerr.Is(err) {
				t.Fatalf("a parse error the caller may not be told: %v", err)
			}
			return
		}
		if filter.Limit < 0 {
			filter.Limit = 0 // the API refuses it before List
		}
		list, _, err := svc.List(context.Background(), bob, filter)
		if err != nil {
			if !publicerr.Is(err) && !errors.Is(err, records.ErrForbidden) {
				t.Fatalf("List(%+v): an error the caller may not be told: %v", filter, err)
			}
			return
		}
		if len(list) > records.MaxLimit {
			t.Fatalf("a page of %d records", len(list))
		}
		for _, r := range list {
			if r.Account != "bob" {
				t.Fatalf("filter %+v: bob sees %s's build %d", filter, r.Account, r.ID)
			}
		}
	})
}
