package server

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nixfarm/nixfarm/internal/apiauth"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/records"
	"github.com/nixfarm/nixfarm/internal/sshd"
)

// The build records: GET /api/v1/builds and /api/v1/builds/{id} on the
// HTTP listener, `nixfarm builds` over SSH, and their pruning.

// buildsAPI adds the build records' routes to mux.
// Both need a token (apiauth): an account's sees its own builds, an
// admin's (or the farm's API token) every account's.
func (f *Farm) buildsAPI(mux *http.ServeMux, auth *apiauth.Authenticator) {
	mux.Handle("GET /api/v1/builds", auth.RequireViewer(http.HandlerFunc(f.listBuilds)))
	mux.Handle("GET /api/v1/builds/{id}", auth.RequireViewer(http.HandlerFunc(f.getBuild)))
	mux.Handle("GET /api/v1/builds/{id}/log", auth.RequireViewer(http.HandlerFunc(f.getBuildLog)))
}

// buildsViewer says who asks for build records: the viewer RequireViewer
// admitted.
func (f *Farm) buildsViewer(r *http.Request) (records.Viewer, bool) {
	v := apiauth.FromContext(r.Context())
	if v.Account == "" && !v.Admin {
		return records.Viewer{}, false
	}
	return records.Viewer{Account: v.Account, Admin: v.Admin}, true
}

func (f *Farm) listBuilds(w http.ResponseWriter, r *http.Request) {
	v, ok := f.buildsViewer(r)
	if !ok {
		unauthorized(w)
		return
	}
	q := r.URL.Query()
	filter := records.Filter{Account: q.Get("account"), System: q.Get("system"), DrvSubstring: q.Get("drv"), Cursor: q.Get("cursor")}
	var err error
	if s := q.Get("status"); s != "" {
		filter.Status, err = records.ParseStatus(s)
	}
	now := time.Now()
	if s := q.Get("since"); s != "" && err == nil {
		filter.Since, err = records.ParseTime(s, now)
	}
	if s := q.Get("until"); s != "" && err == nil {
		filter.Until, err = records.ParseTime(s, now)
	}
	if s := q.Get("limit"); s != "" && err == nil {
		if filter.Limit, err = strconv.Atoi(s); err != nil || filter.Limit < 1 {
			err = publicerr.New("invalid limit %q: give a number of builds from 1 to %d", s, records.MaxLimit)
		}
	}
	if err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return
	}
	list, next, err := f.records.List(r.Context(), v, filter)
	if err != nil {
		f.recordsError(w, r, err)
		return
	}
	writeJSON(w, records.Page{Builds: list, NextCursor: next})
}

// buildRequest reads who asks about one build and its {id}; if either is
// wrong it answers the request (401, 400) and returns false.
func (f *Farm) buildRequest(w http.ResponseWriter, r *http.Request) (records.Viewer, int64, bool) {
	v, ok := f.buildsViewer(r)
	if !ok {
		unauthorized(w)
		return v, 0, false
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		apiError(w, http.StatusBadRequest, fmt.Sprintf("invalid build id %q", r.PathValue("id")))
		return v, 0, false
	}
	return v, id, true
}

func (f *Farm) getBuild(w http.ResponseWriter, r *http.Request) {
	v, id, ok := f.buildRequest(w, r)
	if !ok {
		return
	}
	rec, err := f.records.Get(r.Context(), v, id)
	if err != nil {
		f.recordsError(w, r, err)
		return
	}
	writeJSON(w, rec)
}

// recordsError answers a failed read of the records: the public message
// with its status, or an id the log has the error under.
func (f *Farm) recordsError(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, records.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, records.ErrForbidden):
		code = http.StatusForbidden
	case publicerr.Is(err):
		code = http.StatusBadRequest
	}
	apiError(w, code, publicerr.Message(r.Context(), f.log, err, "reading build records"))
}

func unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="nixfarm"`)
	apiError(w, http.StatusUnauthorized, "build records need an API token (Authorization: Bearer TOKEN)")
}

func apiError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// pruneBuilds removes build records, and their logs, older than the
// retention setting: at once, then every hour until ctx ends.
func (f *Farm) pruneBuilds(ctx context.Context) {
	if f.cfg.BuildRetention <= 0 {
		return
	}
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := f.records.Prune(ctx, f.cfg.BuildRetention); err != nil && ctx.Err() == nil {
			f.log.Error("pruning build records", "err", err)
		} else if n > 0 {
			f.log.Info("pruned old build records and their logs", "builds", n, "retention", f.cfg.BuildRetention)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// builds runs `nixfarm builds [flags]` over SSH: the session's account's
// build records.
func (h *execHandler) builds(ctx context.Context, s *sshd.Session, args []string) error {
	if h.records == nil {
		return errors.New("this farm keeps no build records")
	}
	fs := flag.NewFlagSet("nixfarm builds", flag.ContinueOnError)
	fs.SetOutput(s.Stderr)
	filter := records.FilterFlags(fs, true)
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintf(s.Stderr, "Usage: nixfarm builds [flags]\n\nLists your account's builds, newest first.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return publicerr.New("nixfarm builds: %v", err)
	}
	if fs.NArg() > 0 {
		return publicerr.New("nixfarm builds: unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	now := time.Now()
	f, err := filter(now)
	if err != nil {
		return err
	}
	list, next, err := h.records.List(ctx, records.Viewer{Account: s.Account}, f)
	if err != nil {
		return err
	}
	return writeBuilds(s.Stdout, list, next, *asJSON, now)
}

func writeBuilds(w io.Writer, list []records.Record, next string, asJSON bool, now time.Time) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(records.Page{Builds: list, NextCursor: next})
	}
	if err := records.WriteTable(w, list, now); err != nil {
		return err
	}
	if next != "" {
		_, err := fmt.Fprintf(w, "(more builds: raise --limit, or narrow with --since/--until)\n")
		return err
	}
	return nil
}
