package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"

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
	// not added by then: their readers get an error.
	Expect(infos []*PathInfo) (done func())
}

var _ Expecter = (*Local)(nil)

// errNotAdded ends readers of an expected path that was not added.
var errNotAdded = errors.New("the output was not copied into the farm store")

// incoming is an expected path.
type incoming struct {
	info *PathInfo

	mu   sync.Mutex
	cond *sync.Cond
	// open opens the NAR as written so far: the spool file while the NAR
	// arrives, the blob once it is committed; nil before it starts.
	open func() (*os.File, io.ReadCloser, error)
	size int64 // bytes written so far
	done bool  // no more bytes will come
	err  error // why the NAR is not there, if it is not
}

// Expect implements Expecter.
func (s *Local) Expect(infos []*PathInfo) (done func()) {
	s.inMu.Lock()
	if s.incoming == nil {
		s.incoming = map[storepath.Path]*incoming{}
	}
	var mine []*incoming
	for _, info := range infos {
		if _, ok := s.incoming[info.Path]; ok || info.NarSize == 0 || info.NarHash.IsZero() {
			continue // expected already, by another build's import; or not declared
		}
		copied := *info
		in := &incoming{info: &copied}
		in.cond = sync.NewCond(&in.mu)
		s.incoming[info.Path] = in
		mine = append(mine, in)
	}
	s.inMu.Unlock()
	return func() {
		for _, in := range mine {
			s.finishIncoming(in, errNotAdded)
		}
	}
}

func (s *Local) lookupIncoming(p storepath.Path) *incoming {
	s.inMu.Lock()
	defer s.inMu.Unlock()
	return s.incoming[p]
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
	if s.incoming[in.info.Path] == in {
		delete(s.incoming, in.info.Path)
	}
	s.inMu.Unlock()
}

// incomingInfo returns the declared info of an expected path.
func (s *Local) incomingInfo(p storepath.Path) *PathInfo {
	in := s.lookupIncoming(p)
	if in == nil {
		return nil
	}
	copied := *in.info
	return &copied
}

// followIncoming opens the NAR of an expected path, following it as it
// is written.
func (s *Local) followIncoming(ctx context.Context, p storepath.Path) (io.ReadCloser, *PathInfo, bool) {
	in := s.lookupIncoming(p)
	if in == nil {
		return nil, nil, false
	}
	copied := *in.info
	registered := func() (io.ReadCloser, error) {
		rc, _, err := s.registeredNar(ctx, p)
		return rc, err
	}
	return &follower{ctx: ctx, in: in, limit: int64(in.info.NarSize), registered: registered}, &copied, true
}

// follower reads an incoming NAR, waiting for bytes not written yet. It
// gives the end of the NAR only once the import has been verified.
type follower struct {
	ctx        context.Context
	in         *incoming
	limit      int64
	registered func() (io.ReadCloser, error) // the NAR once registered
	f          *os.File                      // the spool file, while the NAR arrives
	rc         io.ReadCloser                 // the committed or registered NAR
	pos        int64
}

func (r *follower) Read(p []byte) (int, error) {
	if r.rc != nil {
		return r.rc.Read(p)
	}
	in := r.in
	in.mu.Lock()
	if r.f == nil {
		for in.open == nil && !in.done {
			if err := r.wait(); err != nil {
				in.mu.Unlock()
				return 0, err
			}
		}
		switch {
		case in.open != nil:
			var err error
			if r.f, r.rc, err = in.open(); err != nil {
				// A failed add removes its spool file: report why it failed.
				for errors.Is(err, fs.ErrNotExist) && !in.done {
					if werr := r.wait(); werr != nil {
						err = werr
					}
				}
				if in.err != nil {
					err = in.err
				}
				in.mu.Unlock()
				return 0, fmt.Errorf("opening the NAR of %s: %w", in.info.Path, err)
			}
		case in.err != nil:
			err := in.err
			in.mu.Unlock()
			return 0, err
		default: // added without streaming, or valid already
			in.mu.Unlock()
			rc, err := r.registered()
			if err != nil {
				return 0, err
			}
			r.rc = rc
			return r.rc.Read(p)
		}
		if r.rc != nil {
			in.mu.Unlock()
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
			return 0, fmt.Errorf("the NAR of %s ended after %d of %d bytes", in.info.Path, r.pos, r.limit)
		}
		return 0, io.EOF
	}
	if int64(len(p)) > avail {
		p = p[:avail]
	}
	n, err := r.f.ReadAt(p, r.pos)
	r.pos += int64(n)
	if errors.Is(err, io.EOF) && n > 0 {
		err = nil
	}
	return n, err
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
