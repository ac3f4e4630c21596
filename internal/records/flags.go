package records

import (
	"flag"
	"strconv"
	"strings"
	"time"

	"github.com/nixfarm/nixfarm/internal/publicerr"
)

// ParseTime reads a time for --since and --until: RFC 3339
// ("2026-12-01T08:00:00Z"), a date ("2026-12-01", UTC), or a duration
// before now ("2h", "30m", "7d").
func ParseTime(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	d, err := parseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, publicerr.New("invalid time %q: give an RFC 3339 time (2026-12-01T08:00:00Z), a date (2026-12-01) or how long ago (2h, 30m, 7d)", s)
	}
	return now.Add(-d), nil
}

// parseDuration is time.ParseDuration with days ("7d", "1d12h").
func parseDuration(s string) (time.Duration, error) {
	if days, rest, ok := strings.Cut(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 16)
		if err != nil {
			return 0, err
		}
		d := time.Duration(n) * 24 * time.Hour
		if rest == "" {
			return d, nil
		}
		r, err := time.ParseDuration(rest)
		return d + r, err
	}
	return time.ParseDuration(s)
}

// FilterFlags defines the filter flags of `nixfarm builds` on fs (with
// --account only if withAccount) and returns a function that, after
// fs.Parse, makes the Filter they give, reading durations back from now.
func FilterFlags(fs *flag.FlagSet, withAccount bool) func(now time.Time) (Filter, error) {
	var account *string
	if withAccount {
		account = fs.String("account", "", "only this account's builds")
	}
	status := fs.String("status", "", "only builds with this status: "+statusList())
	system := fs.String("system", "", "only builds for this system (x86_64-linux, ...)")
	since := fs.String("since", "", "only builds queued since this time: RFC 3339, a date, or how long ago (2h, 7d)")
	until := fs.String("until", "", "only builds queued before this time (the same forms as --since)")
	drv := fs.String("drv", "", "only builds whose derivation path contains this text")
	limit := fs.Int("limit", DefaultLimit, "show at most this many builds, newest first (at most "+strconv.Itoa(MaxLimit)+")")
	return func(now time.Time) (Filter, error) {
		f := Filter{System: *system, DrvSubstring: *drv, Limit: *limit}
		if account != nil {
			f.Account = *account
		}
		if *status != "" {
			st, err := ParseStatus(*status)
			if err != nil {
				return f, err
			}
			f.Status = st
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
		if *limit < 1 || *limit > MaxLimit {
			return f, publicerr.New("--limit must be between 1 and %d", MaxLimit)
		}
		return f, nil
	}
}

func statusList() string {
	names := make([]string, len(Statuses))
	for i, st := range Statuses {
		names[i] = string(st)
	}
	return strings.Join(names, ", ")
}
