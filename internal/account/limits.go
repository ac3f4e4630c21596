package account

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Limit names one of an account's limits.
type Limit int

// The limits. A value of 0 is no limit.
const (
	// ConcurrentBuilds is how many of the account's builds run at once;
	// more wait in the queue.
	ConcurrentBuilds Limit = iota
	// QueuedBuilds is how many of its builds may wait; a request beyond
	// is refused.
	QueuedBuilds
	// UploadSize is the largest NAR the account may upload, per path.
	UploadSize
	// OutputSize is the largest NAR a build of the account may output,
	// per output path.
	OutputSize
	// LogSize is how much of a build's log is kept; the rest is cut.
	LogSize
	// StoredBytes bounds the NAR bytes of every path in the account's
	// view of the farm store.
	StoredBytes
	numLimits
)

var limitInfo = [numLimits]struct {
	name, column, what string
	size               bool
	def                int64
}{
	{"max-concurrent-builds", "max_concurrent_builds", "builds of one account running at once (more wait in the queue)", false, 64},
	{"max-queued-builds", "max_queued_builds", "builds of one account waiting in the queue (a build beyond is refused)", false, 10000},
	{"max-upload-size", "max_upload_size", "NAR size of one path an account uploads", true, 64 << 30},
	{"max-output-size", "max_output_size", "NAR size of one output of a build", true, 64 << 30},
	{"max-log-size", "max_log_size", "bytes kept of one build's log (the rest is cut; the build goes on)", true, 64 << 20},
	{"max-stored-bytes", "max_stored_bytes", "NAR bytes of all the paths in an account's view of the farm store (an upload or output beyond is refused)", true, 0},
}

// AllLimits lists the limits in their order.
func AllLimits() []Limit {
	out := make([]Limit, numLimits)
	for i := range out {
		out[i] = Limit(i)
	}
	return out
}

// Name is the limit's name, as in flags: max-upload-size.
func (l Limit) Name() string { return limitInfo[l].name }

// What describes the limit.
func (l Limit) What() string { return limitInfo[l].what }

// IsSize reports whether the limit is a number of bytes.
func (l Limit) IsSize() bool { return limitInfo[l].size }

// Format renders a value of the limit: a size in bytes with its unit, a
// count, or "unlimited".
func (l Limit) Format(v int64) string {
	if v <= 0 {
		return "unlimited"
	}
	if l.IsSize() {
		return FormatSize(v)
	}
	return strconv.FormatInt(v, 10)
}

// Parse parses a value of the limit: a count, or for sizes a number of
// bytes with an optional binary unit (K, M, G, T, with or without iB);
// "unlimited" (or 0) is no limit.
func (l Limit) Parse(s string) (int64, error) {
	if s == "unlimited" || s == "none" {
		return 0, nil
	}
	if !l.IsSize() {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("invalid %s %q: want a count, or unlimited", l.Name(), s)
		}
		return n, nil
	}
	n, err := ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("invalid %s %q: %w", l.Name(), s, err)
	}
	return n, nil
}

// LimitByName finds a limit by its name.
func LimitByName(name string) (Limit, bool) {
	for i, li := range limitInfo {
		if li.name == name {
			return Limit(i), true
		}
	}
	return 0, false
}

// ParseSize parses "1048576", "512K", "1.5GiB", "64 MiB" (binary units).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	mult := map[string]float64{"": 1, "B": 1,
		"K": 1 << 10, "KiB": 1 << 10, "M": 1 << 20, "MiB": 1 << 20,
		"G": 1 << 30, "GiB": 1 << 30, "T": 1 << 40, "TiB": 1 << 40}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("unknown unit %q (use B, K, M, G or T, or KiB, MiB, GiB, TiB)", unit)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) {
		return 0, errors.New("want a size such as 512M or 1.5GiB")
	}
	v := f * mult
	if v >= math.MaxInt64 {
		return 0, errors.New("size too large")
	}
	return int64(v), nil
}

// FormatSize renders a byte count with a binary unit: 512 B, 1 GiB,
// 1.2 GiB.
func FormatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	s := strconv.FormatFloat(f, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + units[i]
}

// Values holds a value for each limit (0: no limit).
type Values [numLimits]int64

// DefaultValues are the farm's defaults unless `nixfarm serve` says
// otherwise.
func DefaultValues() Values {
	var v Values
	for i, li := range limitInfo {
		v[i] = li.def
	}
	return v
}

// Limits are an account's limits: each its own value or the farm's
// default.
type Limits struct {
	Values Values
	// Set says which limits the account sets itself.
	Set [numLimits]bool
}

// Get returns the value of a limit (0: no limit).
func (l Limits) Get(which Limit) int64 { return l.Values[which] }

// IsDefault reports whether the limit is the farm's default.
func (l Limits) IsDefault(which Limit) bool { return !l.Set[which] }

// MarshalJSON renders {"max-upload-size": {"value": N, "default": true}, ...}.
func (l Limits) MarshalJSON() ([]byte, error) {
	type entry struct {
		Value   int64  `json:"value"`
		Text    string `json:"text"`
		Default bool   `json:"default"`
	}
	m := map[string]entry{}
	for _, which := range AllLimits() {
		m[which.Name()] = entry{l.Get(which), which.Format(l.Get(which)), l.IsDefault(which)}
	}
	return json.Marshal(m)
}

func limitColumns() string {
	cols := make([]string, numLimits)
	for i, li := range limitInfo {
		cols[i] = li.column
	}
	return strings.Join(cols, ", ")
}

func (s *Service) limitsFrom(vals []sql.NullInt64) Limits {
	l := Limits{Values: s.defaults}
	for i, v := range vals {
		if v.Valid {
			l.Values[i], l.Set[i] = v.Int64, true
		}
	}
	return l
}

// SetLimits sets an account's limits: each entry's value, or the default
// again for a nil value.
func (s *Service) SetLimits(ctx context.Context, name string, set map[Limit]*int64) error {
	if len(set) == 0 {
		return errors.New("no limits given")
	}
	var assign []string
	var args []any
	for which, v := range set {
		if which < 0 || which >= numLimits {
			return fmt.Errorf("unknown limit %d", which)
		}
		if v != nil && *v < 0 {
			return fmt.Errorf("%s cannot be negative", which.Name())
		}
		assign = append(assign, limitInfo[which].column+" = ?")
		if v == nil {
			args = append(args, nil)
		} else {
			args = append(args, *v)
		}
	}
	res, err := s.db.ExecContext(ctx, `UPDATE accounts SET `+strings.Join(assign, ", ")+` WHERE name = ?`, append(args, name)...)
	if err != nil {
		return fmt.Errorf("setting limits of %s: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return unknown(name)
	}
	s.forget(name)
	return nil
}

// Limits returns an account's limits; an account the database does not
// hold (one from the authorized_keys file) has the defaults. A looked-up
// account's limits are reused for a couple of seconds, so a change takes
// that long to apply. If the database cannot be read, the defaults apply
// and the failure is logged.
func (s *Service) Limits(ctx context.Context, name string) Limits {
	return s.cached(ctx, name).limits
}

// Removals returns how many times an account of this name was removed
// (0 for most). Like Limits, it is read at most every few seconds.
func (s *Service) Removals(ctx context.Context, name string) int64 {
	return s.cached(ctx, name).removals
}

// cached returns an account's row, read again once it is older than ttl.
func (s *Service) cached(ctx context.Context, name string) cachedLimits {
	now := s.now()
	s.mu.Lock()
	c, ok := s.cache[name]
	s.mu.Unlock()
	if ok && now.Sub(c.at) < s.ttl {
		return c
	}
	vals := make([]sql.NullInt64, numLimits)
	dest := make([]any, numLimits)
	for i := range vals {
		dest[i] = &vals[i]
	}
	l := Limits{Values: s.defaults}
	err := s.db.QueryRowContext(ctx, `SELECT `+limitColumns()+` FROM accounts WHERE name = ?`, name).Scan(dest...)
	switch {
	case err == nil:
		l = s.limitsFrom(vals)
	case errors.Is(err, sql.ErrNoRows):
	default:
		s.log.Error("reading an account's limits; the defaults apply", "account", name, "err", err)
		return cachedLimits{limits: l}
	}
	var removals int64
	if err := s.db.QueryRowContext(ctx, `SELECT removals FROM account_removals WHERE name = ?`, name).Scan(&removals); err != nil && !errors.Is(err, sql.ErrNoRows) {
		s.log.Error("reading an account's removals", "account", name, "err", err)
	}
	c = cachedLimits{l, removals, now}
	s.mu.Lock()
	if len(s.cache) > 10000 {
		clear(s.cache)
	}
	s.cache[name] = c
	s.mu.Unlock()
	return c
}

func (s *Service) forget(name string) {
	s.mu.Lock()
	delete(s.cache, name)
	delete(s.trusted, name)
	s.mu.Unlock()
}
