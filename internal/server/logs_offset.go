package server

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/nixfarm/nixfarm/internal/records"
)

// Incremental log reads: GET /api/v1/builds/{id}/log?offset=N answers
// the log from N, a byte position in the uncompressed log, up to
// LogChunk bytes, with where the next read starts in X-Log-Offset. The
// dashboard's log tails poll with it, asking from their last offset.

// LogChunk bounds one answer to ?offset=N; X-Log-More: 1 says more
// follows at once.
const LogChunk = 1 << 20

// parseLogOffset reads ?offset=: decimal digits only, at most
// math.MaxInt64.
func parseLogOffset(s string) (int64, bool) {
	if s == "" || len(s) > 19 {
		return 0, false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// getBuildLogAt answers a log request with ?offset=: what follows offset
// now (an offset beyond the end gives nothing, and the end in
// X-Log-Offset), never streamed. Headers: X-Log-Start (where the answer
// starts), X-Log-Offset (where it ends: ask from there next),
// X-Log-More (1: LogChunk was reached, ask again at once) and
// X-Build-Status (the build's status when it was read).
func (f *Farm) getBuildLogAt(w http.ResponseWriter, r *http.Request, v records.Viewer, id int64) {
	q := r.URL.Query()
	offset, ok := parseLogOffset(q.Get("offset"))
	if !ok {
		apiError(w, http.StatusBadRequest, "invalid offset: give a byte position in the log, a whole number from 0")
		return
	}
	switch q.Get("follow") {
	case "", "0", "false":
	default:
		apiError(w, http.StatusBadRequest, "offset answers what exists now: give it without follow (or with follow=0)")
		return
	}
	rec, err := f.records.Get(r.Context(), v, id)
	if err != nil {
		f.recordsError(w, r, err)
		return
	}
	log, start, err := f.records.OpenLogAt(id, offset)
	if err != nil {
		f.recordsError(w, r, err)
		return
	}
	defer log.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(io.LimitReader(log, LogChunk+1))
	if err != nil && !errors.Is(err, io.EOF) {
		if buf.Len() == 0 {
			f.recordsError(w, r, err)
			return
		}
		// What was read before the damage is answered; the next read
		// from there fails.
		f.log.Warn("reading a build log", "build", id, "offset", start+int64(buf.Len()), "err", err)
	}
	more := buf.Len() > LogChunk
	if more {
		buf.Truncate(LogChunk)
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Log-Start", strconv.FormatInt(start, 10))
	h.Set("X-Log-Offset", strconv.FormatInt(start+int64(buf.Len()), 10))
	h.Set("X-Build-Status", string(rec.Status))
	if more {
		h.Set("X-Log-More", "1")
	}
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(http.StatusOK)
	w.Write(buf.Bytes())
}
