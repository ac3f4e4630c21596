// Package traffic attributes the store path contents a client session
// moves to the build records of its requests, for both protocols
// (serveproto, daemonproto). What counts, exactly:
//
//   - Uploaded: the bytes of every store path's contents the client sends
//     (the NAR of AddToStoreNar, ImportPaths and AddMultipleToStore, the
//     data of AddToStore and AddTextToStore), as read off the wire,
//     whether or not the farm had the path already and whether or not it
//     was accepted: it moved. Metadata (path infos, framing) does not
//     count. What was sent since the session's previous build request
//     belongs to the next one; a request of several derivations splits it
//     evenly among the records it answered with (the first takes the
//     remainder), so that sums per account stay true. Uploads followed by
//     no request, or by one that no record answers (its outputs were
//     valid already, it could not run, or it joined another account's
//     build), count in no record.
//   - Downloaded: the bytes of the NAR of a path the client fetches
//     (DumpStorePath, ExportPaths, NarFromPath) that is an output of a
//     request earlier in the same session, added to that request's
//     record, however many times it is fetched. Outputs fetched in
//     another session (nix copy later) count in no record.
//
// Every byte counted also counts in the farm's metrics (see
// metrics.BuildBytes).
package traffic

import (
	"context"
	"io"
	"log/slog"
	"sync"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Recorder adds bytes to a build record (the coordinator).
type Recorder interface {
	AddBytes(ctx context.Context, record int64, uploaded, downloaded int64) error
}

// Session is one client session's account of its traffic. A nil
// *Session, or one without a Recorder, counts nothing.
type Session struct {
	rec Recorder
	log *slog.Logger

	mu      sync.Mutex
	pending int64                    // uploaded since the last build request
	outputs map[storepath.Path]int64 // the outputs of its requests, to their records
}

// New returns a session that writes to rec (nil: nowhere).
func New(rec Recorder, log *slog.Logger) *Session {
	if log == nil {
		log = slog.Default()
	}
	return &Session{rec: rec, log: log, outputs: map[storepath.Path]int64{}}
}

func (s *Session) off() bool { return s == nil || s.rec == nil }

// Uploaded counts n bytes of store path contents the client sent.
func (s *Session) Uploaded(n int64) {
	if s.off() || n <= 0 {
		return
	}
	s.mu.Lock()
	s.pending += n
	s.mu.Unlock()
}

// Requested attributes what was uploaded since the previous request to
// the records answering this one (one result per derivation), and
// remembers their outputs for Downloaded.
func (s *Session) Requested(ctx context.Context, results ...*build.Result) {
	if s.off() {
		return
	}
	var ids []int64
	seen := map[int64]bool{}
	s.mu.Lock()
	up := s.pending
	s.pending = 0
	for _, res := range results {
		if res == nil || res.Record <= 0 {
			continue
		}
		if !seen[res.Record] {
			seen[res.Record] = true
			ids = append(ids, res.Record)
		}
		for _, p := range res.Outputs {
			if p != "" {
				s.outputs[p] = res.Record
			}
		}
	}
	s.mu.Unlock()
	if len(ids) == 0 || up == 0 {
		return
	}
	share, rest := up/int64(len(ids)), up%int64(len(ids))
	for i, id := range ids {
		n := share
		if i == 0 {
			n += rest
		}
		s.add(ctx, id, n, 0)
	}
}

// Downloaded counts n bytes of the NAR of p sent to the client, if p is an
// output of one of the session's requests.
func (s *Session) Downloaded(ctx context.Context, p storepath.Path, n int64) {
	if s.off() || n <= 0 {
		return
	}
	s.mu.Lock()
	id, ok := s.outputs[p]
	s.mu.Unlock()
	if ok {
		s.add(ctx, id, 0, n)
	}
}

// add writes to a record, whether or not the client is still there.
func (s *Session) add(ctx context.Context, id, up, down int64) {
	if err := s.rec.AddBytes(context.WithoutCancel(ctx), id, up, down); err != nil {
		s.log.Warn("recording a build's bytes", "build", id, "err", err)
	}
}

// Counter counts the bytes read through it.
type Counter struct {
	R io.Reader
	N int64
}

func (c *Counter) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.N += int64(n)
	return n, err
}
