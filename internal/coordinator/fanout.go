package coordinator

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/nixfarm/nixfarm/internal/buildlog"
)

// SubscriberBacklog bounds how far a client following a build's log may
// fall behind: past it, the client's log stream is cut (it is told so),
// and the build goes on without it.
const SubscriberBacklog = 4 << 20

// CutMessage is the last line a client whose log stream was cut reads.
const CutMessage = "nixfarm: your log stream of this build was cut here because you fell behind reading it; " +
	"the build goes on and its result will still be sent; the farm keeps the whole log\n"

// fanout writes a build's log to its file (compressed: package buildlog)
// and to every client following
// the build. A client that joins late first gets what was written so far;
// a client that goes away does not stop the log from being kept. The
// file is created on the first write, so a queued build holds no file
// descriptor.
//
// No client is written to under mu: each subscriber has a goroutine of
// its own that writes to it from a bounded backlog, so a client that
// stops reading slows neither the build nor anyone else.
type fanout struct {
	mu   sync.Mutex
	path string
	file *buildlog.Writer
	err  error // from creating the file
	subs map[*subscriber]bool
	n    int64
}

func newFanout() *fanout {
	return &fanout{subs: map[*subscriber]bool{}}
}

// setPath names the file the log goes to, before the build runs.
func (f *fanout) setPath(path string) {
	f.mu.Lock()
	f.path = path
	f.mu.Unlock()
}

// Write never fails and never waits for a client: a log file that cannot
// be written is reported when the build ends, and clients following the
// build get every byte unless they fall behind by SubscriberBacklog.
func (f *fanout) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.file == nil && f.err == nil && f.path != "" {
		f.file, f.err = buildlog.Create(f.path)
	}
	if f.file != nil && f.err == nil {
		n, err := f.file.Write(p)
		f.n += int64(n)
		if err != nil {
			f.err = err
		}
	}
	for s := range f.subs {
		if !s.push(p) {
			delete(f.subs, s)
		}
	}
	return len(p), nil
}

// subscribe starts copying the log to w, beginning with what the log
// holds already. It returns a function that stops it: that function
// waits until w has been given what was queued for it, or ctx ends.
func (f *fanout) subscribe(w io.Writer) func(ctx context.Context) {
	if w == nil {
		return func(context.Context) {}
	}
	s := &subscriber{w: w, wake: make(chan struct{}, 1), done: make(chan struct{})}
	f.mu.Lock()
	if f.n > 0 && f.err == nil {
		// What was written so far goes to the file as whole frames, for
		// s to read back.
		if f.err = f.file.Flush(); f.err == nil {
			s.pastPath, s.past = f.path, f.n
		}
	}
	f.subs[s] = true
	f.mu.Unlock()
	go s.run()
	return func(ctx context.Context) {
		f.mu.Lock()
		delete(f.subs, s)
		f.mu.Unlock()
		s.close()
		select {
		case <-s.done:
		case <-ctx.Done():
		}
	}
}

func (f *fanout) size() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// close closes the log file, if one was written.
func (f *fanout) close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.err
	if f.file != nil {
		err = errors.Join(err, f.file.Close())
	}
	f.file, f.err = nil, errors.New("build log closed")
	return err
}

// subscriber is one client following a build's log: what it has yet to
// be given, and the goroutine that gives it.
type subscriber struct {
	w        io.Writer
	pastPath string // the log file, whose first past bytes go first
	past     int64
	wake     chan struct{} // 1 slot: something to do
	done     chan struct{} // run has returned

	mu     sync.Mutex
	buf    []byte // queued, at most SubscriberBacklog
	cut    bool   // fell behind: the rest is dropped
	failed bool   // w failed: the rest is dropped
	closed bool   // no more is coming
}

// push queues p; it reports false if the subscriber takes no more.
func (s *subscriber) push(p []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cut || s.failed || s.closed {
		return false
	}
	if len(s.buf)+len(p) > SubscriberBacklog {
		s.cut, s.buf = true, nil
		s.signal()
		return false
	}
	s.buf = append(s.buf, p...)
	s.signal()
	return true
}

func (s *subscriber) close() {
	s.mu.Lock()
	s.closed = true
	s.signal()
	s.mu.Unlock()
}

func (s *subscriber) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run writes the log to s.w: first the part written before s joined,
// then what is queued, until s is closed, cut off or w fails.
func (s *subscriber) run() {
	defer close(s.done)
	if s.past > 0 {
		if past, err := buildlog.Open(s.pastPath); err == nil {
			_, err := io.Copy(s.w, io.LimitReader(past, s.past))
			past.Close()
			if err != nil {
				s.fail()
				return
			}
		}
	}
	var spare []byte
	for {
		// Two buffers take turns: push fills one while the other is
		// written.
		s.mu.Lock()
		buf, cut, closed := s.buf, s.cut, s.closed
		if len(buf) > 0 {
			s.buf = spare[:0]
		}
		s.mu.Unlock()
		if len(buf) > 0 {
			if _, err := s.w.Write(buf); err != nil {
				s.fail()
				return
			}
			spare = buf
			continue
		}
		if cut {
			s.w.Write([]byte(CutMessage))
			return
		}
		if closed {
			return
		}
		<-s.wake
	}
}

func (s *subscriber) fail() {
	s.mu.Lock()
	s.failed, s.buf = true, nil
	s.mu.Unlock()
}
