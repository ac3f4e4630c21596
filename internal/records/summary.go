package records

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nixfarm/nixfarm/internal/publicerr"
)

// MaxSummaryBuilds bounds the builds a summary reads; past it the
// summary says it shows only the newest.
const MaxSummaryBuilds = 10000

// ListAll returns up to max records f selects that v may see (f.Limit
// and f.Cursor are ignored), newest first, and whether there were more.
func (s *Service) ListAll(ctx context.Context, v Viewer, f Filter, max int) ([]Record, bool, error) {
	f.Cursor, f.Limit = "", MaxLimit
	var out []Record
	for {
		page, next, err := s.List(ctx, v, f)
		if err != nil {
			return nil, false, err
		}
		out = append(out, page...)
		if len(out) >= max {
			return out[:max], len(out) > max || next != "", nil
		}
		if next == "" {
			return out, false, nil
		}
		f.Cursor = next
	}
}

// SummaryOptions say what a summary covers and where its logs are.
type SummaryOptions struct {
	// Since and Until are the period shown in the heading (Until zero:
	// up to now); Account, if set, the account.
	Since   time.Time
	Until   time.Time
	Account string
	// LogURLBase, if set, is the farm's HTTP API address: failures link
	// to LogURLBase/api/v1/builds/ID/log. Else they name the command
	// that prints the log.
	LogURLBase string
	// Truncated says the records are only the newest of more.
	Truncated bool
}

// Formats of a summary.
const FormatGitHub = "github"

// openRows is how many rows a table shows before it folds into a
// <details> element.
const openRows = 10

// WriteSummary writes recs as a GitHub Actions step summary (Markdown,
// for $GITHUB_STEP_SUMMARY): a headline of counts, CPU time and output
// size, the failures with links to their logs, then the builds that
// succeeded. It depends on nothing but its arguments: the same records
// give the same bytes.
func WriteSummary(w io.Writer, recs []Record, o SummaryOptions) error {
	var failed, built []*Record
	var t Totals
	for i := range recs {
		r := &recs[i]
		t.add(&Totals{Builds: 1, ByStatus: map[Status]int{r.Status: 1}, CPUSeconds: r.CPUSeconds, OutputBytes: r.OutputBytes()})
		switch r.Status {
		case Built:
			built = append(built, r)
		case Failed, TimedOut, InfrastructureError, Cancelled:
			failed = append(failed, r)
		}
	}
	t.fill()
	byName := func(list []*Record) {
		sort.Slice(list, func(i, j int) bool {
			if a, b := list[i].DrvName(), list[j].DrvName(); a != b {
				return a < b
			}
			return list[i].ID < list[j].ID
		})
	}
	byName(failed)
	byName(built)

	var b strings.Builder
	b.WriteString("### nixfarm builds\n\n")
	head := []string{fmt.Sprintf("**%d built**", len(built)), fmt.Sprintf("**%d failed**", len(failed))}
	for _, st := range []Status{Cached, Substituted, Running, Queued} {
		if n := t.ByStatus[st]; n > 0 {
			head = append(head, fmt.Sprintf("%d %s", n, st))
		}
	}
	head = append(head, "CPU time "+seconds(t.CPUSeconds), "outputs "+optBytes(int64(t.OutputBytes)))
	b.WriteString(strings.Join(head, " · ") + "\n\n")
	period := "builds queued from " + utc(o.Since)
	if !o.Until.IsZero() {
		period += " to " + utc(o.Until)
	}
	if o.Account != "" {
		period += ", account " + cell(o.Account)
	}
	b.WriteString(period + "\n")
	if o.Truncated {
		fmt.Fprintf(&b, "\n> [!NOTE]\n> Only the newest %d builds are shown.\n", len(recs))
	}
	if len(recs) == 0 {
		b.WriteString("\nNo builds.\n")
	}

	if len(failed) > 0 {
		fmt.Fprintf(&b, "\n#### Failures (%d)\n\n", len(failed))
		rows := make([]string, len(failed))
		for i, r := range failed {
			rows[i] = fmt.Sprintf("| `%s` | %s | %s | %s | %s | %s |", r.DrvName(), cell(dash(r.System)), r.Status,
				cell(dash(r.Worker)), duration(r.BuildTime(r.StoppedAt)), logLink(o.LogURLBase, r.ID))
		}
		table(&b, "| Derivation | System | Status | Worker | Duration | Log |\n|---|---|---|---|---|---|\n", rows, "failures")
	}
	if len(built) > 0 {
		fmt.Fprintf(&b, "\n#### Built (%d)\n\n", len(built))
		rows := make([]string, len(built))
		for i, r := range built {
			rows[i] = fmt.Sprintf("| `%s` | %s | %s | %s |", r.DrvName(), duration(r.BuildTime(r.StoppedAt)),
				duration(time.Duration(r.CPUSeconds*float64(time.Second))), size(r))
		}
		table(&b, "| Derivation | Duration | CPU | Output |\n|---|---:|---:|---:|\n", rows, "builds")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// table writes a Markdown table of rows, folded in a <details> element
// past openRows rows.
func table(b *strings.Builder, header string, rows []string, what string) {
	fold := len(rows) > openRows
	if fold {
		fmt.Fprintf(b, "<details><summary>%d %s</summary>\n\n", len(rows), what)
	}
	b.WriteString(header)
	for _, r := range rows {
		b.WriteString(r + "\n")
	}
	if fold {
		b.WriteString("\n</details>\n")
	}
}

func logLink(base string, id int64) string {
	if base == "" {
		return "`nixfarm logs " + strconv.FormatInt(id, 10) + "`"
	}
	return "[log](" + strings.TrimSuffix(base, "/") + "/api/v1/builds/" + strconv.FormatInt(id, 10) + "/log)"
}

func utc(t time.Time) string {
	if t.IsZero() {
		return "the beginning"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// cell makes text safe in a Markdown table cell: no column breaks, no
// HTML, one line.
func cell(s string) string {
	s = strings.NewReplacer("|", `\|`, "<", "&lt;", ">", "&gt;", "&", "&amp;", "\n", " ", "\r", " ", "`", "'").Replace(s)
	return printable(s)
}

// SummaryFlags defines the flags of `nixfarm summary` on fs (--account
// only if withAccount) and returns a function that, after fs.Parse,
// makes the Filter and SummaryOptions they give.
func SummaryFlags(fs *flag.FlagSet, withAccount bool) func(now time.Time) (Filter, SummaryOptions, error) {
	var account *string
	if withAccount {
		account = fs.String("account", "", "only this account's builds")
	}
	since := fs.String("since", "", "the builds queued since this time (required): RFC 3339, a date, or how long ago (2h, 30m)")
	until := fs.String("until", "", "only builds queued before this time (the same forms as --since)")
	format := fs.String("format", FormatGitHub, "output format: github (Markdown for $GITHUB_STEP_SUMMARY)")
	logBase := fs.String("log-url-base", "", "the farm's HTTP address (https://farm.example:2280): failures link to their logs there")
	return func(now time.Time) (Filter, SummaryOptions, error) {
		var f Filter
		var o SummaryOptions
		if account != nil {
			f.Account, o.Account = *account, *account
		}
		if *format != FormatGitHub {
			return f, o, publicerr.New("unknown --format %q: the formats are github", *format)
		}
		if *since == "" {
			return f, o, publicerr.New("--since is required: the builds of when? (e.g. --since 2h, or the CI job's start time)")
		}
		var err error
		if f.Since, err = ParseTime(*since, now); err != nil {
			return f, o, err
		}
		if *until != "" {
			if f.Until, err = ParseTime(*until, now); err != nil {
				return f, o, err
			}
		}
		if u, err := url.Parse(*logBase); *logBase != "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			strings.ContainsAny(*logBase, " ()<>[]\"'`|\\")) {
			return f, o, publicerr.New("invalid --log-url-base %q: give an http:// or https:// address", *logBase)
		}
		o.Since, o.Until, o.LogURLBase = f.Since, f.Until, *logBase
		return f, o, nil
	}
}
