package server

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/nixfarm/nixfarm/internal/apiauth"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/records"
	"github.com/nixfarm/nixfarm/internal/sshd"
)

// Usage and CI summaries: GET /api/v1/usage on the HTTP listener, and
// `nixfarm usage` and `nixfarm summary` over SSH, all from the build
// records.

// usageAPI adds GET /api/v1/usage?account=&since=&until=&bucket= to mux:
// per account, builds by status, CPU hours, peak memory, bytes and times
// (records.Usage). It needs a token: an account's sees its own usage
// (403 for another's), an admin's every account's.
func (f *Farm) usageAPI(mux *http.ServeMux, auth *apiauth.Authenticator) {
	mux.Handle("GET /api/v1/usage", auth.RequireViewer(http.HandlerFunc(f.usage)))
}

func (f *Farm) usage(w http.ResponseWriter, r *http.Request) {
	v, ok := f.buildsViewer(r)
	if !ok {
		unauthorized(w)
		return
	}
	q := r.URL.Query()
	filter := records.UsageFilter{Account: q.Get("account")}
	now := time.Now()
	var err error
	if s := q.Get("since"); s != "" {
		filter.Since, err = records.ParseTime(s, now)
	}
	if s := q.Get("until"); s != "" && err == nil {
		filter.Until, err = records.ParseTime(s, now)
	}
	if err == nil {
		filter.Bucket, err = records.ParseBucket(q.Get("bucket"))
	}
	if err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return
	}
	u, err := f.records.Usage(r.Context(), v, filter)
	if err != nil {
		f.recordsError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, u)
}

// usage runs `nixfarm usage [flags]` over SSH: the session's account's
// usage.
func (h *execHandler) usage(ctx context.Context, s *sshd.Session, args []string) error {
	if h.records == nil {
		return errors.New("this farm keeps no build records")
	}
	fs := flag.NewFlagSet("nixfarm usage", flag.ContinueOnError)
	fs.SetOutput(s.Stderr)
	filter := records.UsageFlags(fs, false)
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintf(s.Stderr, "Usage: nixfarm usage [flags]\n\nSums your account's builds: counts by status, CPU hours, peak memory, bytes, time.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if done, err := parseSSHFlags(fs, args); done || err != nil {
		return err
	}
	f, err := filter(time.Now())
	if err != nil {
		return err
	}
	u, err := h.records.Usage(ctx, records.Viewer{Account: s.Account}, f)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(s.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(u)
	}
	return records.WriteUsageTable(s.Stdout, u)
}

// summary runs `nixfarm summary --since T [flags]` over SSH: a CI step
// summary of the session's account's builds.
func (h *execHandler) summary(ctx context.Context, s *sshd.Session, args []string) error {
	if h.records == nil {
		return errors.New("this farm keeps no build records")
	}
	fs := flag.NewFlagSet("nixfarm summary", flag.ContinueOnError)
	fs.SetOutput(s.Stderr)
	opts := records.SummaryFlags(fs, false)
	fs.Usage = func() {
		fmt.Fprintf(s.Stderr, "Usage: nixfarm summary --since T [flags]\n\nWrites a summary of your account's builds since T, for $GITHUB_STEP_SUMMARY.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if done, err := parseSSHFlags(fs, args); done || err != nil {
		return err
	}
	f, o, err := opts(time.Now())
	if err != nil {
		return err
	}
	o.Account = s.Account
	list, more, err := h.records.ListAll(ctx, records.Viewer{Account: s.Account}, f, records.MaxSummaryBuilds)
	if err != nil {
		return err
	}
	o.Truncated = more
	return records.WriteSummary(s.Stdout, list, o)
}

// parseSSHFlags parses a command's flags over SSH: done after --help,
// a public error for bad flags or arguments.
func parseSSHFlags(fs *flag.FlagSet, args []string) (done bool, err error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return true, publicerr.New("%s: %v", fs.Name(), err)
	}
	if fs.NArg() > 0 {
		return true, publicerr.New("%s: unexpected arguments: %s", fs.Name(), strings.Join(fs.Args(), " "))
	}
	return false, nil
}
