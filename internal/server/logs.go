package server

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"

	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/records"
	"github.com/nixfarm/nixfarm/internal/sshd"
)

// Build logs: GET /api/v1/builds/{id}/log on the HTTP listener and
// `nixfarm logs` over SSH (package records reads them, buildlog keeps
// them).

// getBuildLog answers GET /api/v1/builds/{id}/log: the build's log as
// text, streamed as it is written until the build ends (?follow=0: what
// exists now only; ?offset=N: what follows N, see logs_offset.go).
func (f *Farm) getBuildLog(w http.ResponseWriter, r *http.Request) {
	v, id, ok := f.buildRequest(w, r)
	if !ok {
		return
	}
	if r.URL.Query().Has("offset") {
		f.getBuildLogAt(w, r, v, id) // logs_offset.go
		return
	}
	follow := true
	switch r.URL.Query().Get("follow") {
	case "", "1", "true":
	case "0", "false":
		follow = false
	default:
		apiError(w, http.StatusBadRequest, "invalid follow: give 1 (stream until the build ends, the default) or 0 (what exists now)")
		return
	}
	rec, err := f.records.Get(r.Context(), v, id)
	if err != nil {
		f.recordsError(w, r, err)
		return
	}
	var log io.ReadCloser
	if follow && !rec.Status.Final() {
		log = f.records.FollowLog(r.Context(), id, nil)
	} else if log, err = f.records.OpenLog(id); err != nil {
		f.recordsError(w, r, err)
		return
	}
	defer log.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	out := io.Writer(w)
	if follow {
		fw := flushWriter{w: w, rc: http.NewResponseController(w)}
		fw.rc.Flush() // the headers, before the first line
		out = fw
	}
	if _, err := io.Copy(out, log); err != nil && r.Context().Err() == nil {
		// The status is sent: the stream just ends.
		f.log.Warn("streaming a build log", "build", id, "err", err)
	}
}

// flushWriter sends each write to the client at once.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (fw flushWriter) Write(p []byte) (int, error) {
	n, err := fw.w.Write(p)
	if err == nil {
		err = fw.rc.Flush()
	}
	return n, err
}

// logs runs `nixfarm logs BUILD [--follow]` over SSH: the log of one of
// the session's account's builds. Following, the exit status is the
// build's: 0 if it succeeded, 1 if not.
func (h *execHandler) logs(ctx context.Context, s *sshd.Session, args []string) (uint32, error) {
	if h.records == nil {
		return 1, errors.New("this farm keeps no build records")
	}
	fs := flag.NewFlagSet("nixfarm logs", flag.ContinueOnError)
	fs.SetOutput(s.Stderr)
	follow, parse := records.ParseLogArgs(fs, args)
	fs.Usage = func() {
		fmt.Fprintf(s.Stderr, "Usage: nixfarm logs BUILD-ID|DRV-PATH [--follow]\n\nPrints the log of one of your account's builds (nixfarm builds lists them); a\nderivation path names its latest build.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	arg, err := parse()
	if errors.Is(err, flag.ErrHelp) {
		return 0, nil
	}
	if err != nil {
		return 2, publicerr.New("nixfarm logs: %v", err)
	}
	rec, err := h.records.WriteLog(ctx, records.Viewer{Account: s.Account}, arg, *follow, s.Stdout, s.Stderr)
	if errors.Is(err, records.ErrForbidden) || errors.Is(err, records.ErrNotFound) {
		// Another account's build is as if there were none.
		err = publicerr.New("build %s not found among your account's builds (nixfarm builds lists them)", arg)
	}
	if err != nil {
		return 1, err
	}
	if *follow && !rec.Status.Succeeded() {
		return 1, nil
	}
	return 0, nil
}
