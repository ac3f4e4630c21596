package coordinator

import (
	"errors"
	"io"
	"os"
	"sync"
)

// fanout writes a build's log to its file and to every client following
// the build. A client that joins late first gets what was written so far;
// a client that goes away does not stop the log from being kept. The
// file is created on the first write, so a queued build holds no file
// descriptor.
type fanout struct {
	mu   sync.Mutex
	path string
	file *os.File
	err  error // from creating the file
	subs map[*subscriber]bool
	n    int64
}

type subscriber struct{ w io.Writer }

func newFanout() *fanout {
	return &fanout{subs: map[*subscriber]bool{}}
}

// setPath names the file the log goes to, before the build runs.
func (f *fanout) setPath(path string) {
	f.mu.Lock()
	f.path = path
	f.mu.Unlock()
}

// Write never fails: a log file that cannot be written is reported when
// the build ends, and clients following the build still get every byte.
func (f *fanout) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.file == nil && f.err == nil && f.path != "" {
		f.file, f.err = os.Create(f.path)
	}
	if f.file != nil && f.err == nil {
		n, err := f.file.Write(p)
		f.n += int64(n)
		if err != nil {
			f.err = err
		}
	}
	for s := range f.subs {
		if _, err := s.w.Write(p); err != nil {
			delete(f.subs, s)
		}
	}
	return len(p), nil
}

// subscribe starts copying the log to w, beginning with what the log
// holds already. It returns a function that stops it.
func (f *fanout) subscribe(w io.Writer) func() {
	if w == nil {
		return func() {}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n > 0 {
		if past, err := os.Open(f.path); err == nil {
			io.Copy(w, io.LimitReader(past, f.n))
			past.Close()
		}
	}
	s := &subscriber{w: w}
	f.subs[s] = true
	return func() {
		f.mu.Lock()
		delete(f.subs, s)
		f.mu.Unlock()
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
