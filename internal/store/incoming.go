package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"

	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Streaming. A build's outputs are known, with their NAR hash, size and
// references, as soon as the worker has built them, but copying them into
// the farm store takes a while for large outputs. A client waits for its
// outputs only once: while the farm copies an output in, QueryPathInfo
// and NarFromPath already answer for it, from what the worker declared and
// the bytes received so far, so the client's download runs alongside the
// farm's import instead of after it.
//
// Only QueryPathInfo and NarFromPath see such a path: ValidPaths,
// Closure and builds do not, until it is registered. A reader never gets
// more than the declared size, and gets an error instead of the end of
// the NAR if the import fails; the client checks the NAR hash itself.

// Expecter is a Store that can serve paths while they are being added.
type Expecter interface {
	// Expect declares that paths with these infos are about to be added
	// with AddToStore. Until done is called, or AddToStore registers
	// them, QueryPathInfo and NarFromPath answer for them; NarFromPath
	// follows the NAR as it arrives. done ends the expectation of paths
	// not added by then: their readers get an error, unless the path is
	// registered all the same.
	Expect(infos []*PathInfo) (done func())
}

// errNotAdded ends readers of an expected path that was not added.
var errNotAdded = errors.New("the output was not copied into the farm store")

// incomingKey names an expected path in one account's view: an output
// being copied in is the version of the account it was built for.
type incomingKey struct {
	account string
	path    storepath.Path
}

// incoming is an expected path.
type incoming struct {
	key  incomingKey
	info *PathInfo

	mu   sync.Mutex
	cond *sync.Cond
	// claimed is set by the one add that streams the NAR to followers.
	claimed bool
	// spool is the file the NAR is written to, from the start of the add
	// until it is committed (then the file is renamed away).
	spool string
	size  int64 // bytes written so far
	done  bool  // no more bytes will come
	err   error // why the NAR is not there, if it is not
}

// expect is Expecter.Expect in account's view.
func (s *Local) expect(account string, infos []*PathInfo) (done func()) {
	s.inMu.Lock()
	if s.incoming == nil {
		s.incoming = map[incomingKey]*incoming{}
	}
	var mine []*incoming
	for _, info := range infos {
		key := incomingKey{account, info.Path}
		if _, ok := s.incoming[key]; ok || info.NarSize == 0 || info.NarHash.IsZero() {
			continue // expected already, by another build's import; or not declared
		}
		copied := *info
		in := &incoming{key: key, info: &copied}
		in.cond = sync.NewCond(&in.mu)
		s.incoming[key] = in
		mine = append(mine, in)
	}
	s.inMu.Unlock()
	return func() {
		for _, in := range mine {
			s.finishIncoming(in, errNotAdded)
		}
	}
}

func (s *Local) lookupIncoming(account string, p storepath.Path) *incoming {
	s.inMu.Lock()
	defer s.inMu.Unlock()
	return s.incoming[incomingKey{account, p}]
}

// claimIncoming returns the expectation of p for an add to stream to, or
// nil if p is not expected, or another add has claimed it already.
func (s *Local) claimIncoming(account string, p storepath.Path) *incoming {
	in := s.lookupIncoming(account, p)
	if in == nil {
		return nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.claimed || in.done {
		return nil
	}
	in.claimed = true
	return in
}

// finishIncoming ends an expectation: readers get err at the end of what
// was written (or EOF if err is nil), and the path is no longer expected.
func (s *Local) finishIncoming(in *incoming, err error) {
	in.mu.Lock()
	if !in.done {
		in.done, in.err = true, err
		in.cond.Broadcast()
	}
	in.mu.Unlock()
	s.inMu.Lock()
	if s.incoming[in.key] == in {
		delete(s.incoming, in.key)
	}
	s.inMu.Unlock()
}

// declared returns a copy of the declared info of an expected path.
func (in *incoming) declared() *PathInfo {
	copied := *in.info
	return &copied
}

// followIncoming opens the NAR of an expected path, following it as it
// is written.
func (s *Local) followIncoming(ctx context.Context, v *View, p storepath.Path) (io.ReadCloser, *PathInfo, bool) {
	in := s.lookupIncoming(v.account, p)
	if in == nil {
		return nil, nil, false
	}
	return &follower{v: v, ctx: ctx, in: in, limit: int64(in.info.NarSize)}, in.declared(), true
}

// follower reads an incoming NAR, waiting for bytes not written yet. It
// gives the end of the NAR only once the path is registered.
type follower struct {
	v     *View
	ctx   context.Context
	in    *incoming
	limit int64
	f     *os.File      // the spool file, while the NAR arrives
	rc    io.ReadCloser // the registered NAR
	pos   int64
}

func (r *follower) Read(p []byte) (int, error) {
	if r.rc != nil {
		return r.rc.Read(p)
	}
	in := r.in
	in.mu.Lock()
	if r.f == nil {
		if err := r.open(); err != nil {
			in.mu.Unlock()
			return 0, err
		}
		if r.f == nil {
			// The add has ended, before the NAR could be followed: the
			// path may be registered all the same (added earlier, or by
			// another add).
			ferr := in.err
			in.mu.Unlock()
			rc, _, err := r.v.registeredNar(r.ctx, in.info.Path)
			if err != nil {
				if ferr != nil {
					return 0, ferr
				}
				return 0, err
			}
			r.rc = rc
			return r.rc.Read(p)
		}
	}
	for r.pos >= min(in.size, r.limit) && !in.done {
		if err := r.wait(); err != nil {
			in.mu.Unlock()
			return 0, err
		}
	}
	avail, done, ferr := min(in.size, r.limit)-r.pos, in.done, in.err
	in.mu.Unlock()
	if avail <= 0 {
		switch {
		case ferr != nil:
			return 0, ferr
		case done && r.pos < r.limit:
			return 0, publicerr.New("the NAR of %s ended after %d of %d bytes", in.info.Path, r.pos, r.limit)
		}
		return 0, io.EOF
	}
	if int64(len(p)) > avail {
		p = p[:avail]
	}
	n, err := r.f.ReadAt(p, r.pos)
	r.pos += int64(n)
	if errors.Is(err, io.EOF) {
		if n == len(p) {
			return n, nil
		}
		// The bytes were written, so the spool file must have them.
		return n, fmt.Errorf("reading the NAR of %s: spool file shorter than written: %w", in.info.Path, io.ErrUnexpectedEOF)
	}
	return n, err
}

// open opens the spool file into r.f, waiting for the add to start; it
// leaves r.f nil if the add ends first. It is called with r.in.mu held.
func (r *follower) open() error {
	in := r.in
	for !in.done {
		if in.spool != "" {
			f, err := os.Open(in.spool)
			if err == nil {
				r.f = f
				return nil
			}
			// The NAR is committed (and its spool file renamed), or the
			// add failed: either way the add is about to end.
			if !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("opening the NAR of %s: %w", in.info.Path, err)
			}
		}
		if err := r.wait(); err != nil {
			return err
		}
	}
	return nil
}

// wait waits for the next change of r.in, or the end of r.ctx. It is
// called with r.in.mu held.
func (r *follower) wait() error {
	if err := r.ctx.Err(); err != nil {
		return err
	}
	stop := context.AfterFunc(r.ctx, func() {
		r.in.mu.Lock()
		r.in.cond.Broadcast()
		r.in.mu.Unlock()
	})
	r.in.cond.Wait()
	stop()
	return r.ctx.Err()
}

func (r *follower) Close() error {
	if r.f != nil {
		r.f.Close()
	}
	if r.rc != nil {
		r.rc.Close()
	}
	return nil
}

// incomingWriter tracks the bytes of an expected path's NAR as they are
// written to its spool file.
type incomingWriter struct {
	w  io.Writer
	in *incoming
}

func (w *incomingWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.in.mu.Lock()
	w.in.size += int64(n)
	w.in.cond.Broadcast()
	w.in.mu.Unlock()
	return n, err
}
