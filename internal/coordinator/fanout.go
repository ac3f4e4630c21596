package coordinator

import (
	"io"
	"os"
	"sync"
)

// fanout writes a build's log to its file and to every client following
// the build. A client that joins late first gets what was written so far;
// a client that goes away does not stop the log from being kept.
type fanout struct {
	mu   sync.Mutex
	file *os.File
	subs map[*subscriber]bool
	n    int64
}

type subscriber struct{ w io.Writer }

func newFanout(file *os.File) *fanout {
	return &fanout{file: file, subs: map[*subscriber]bool{}}
}

func (f *fanout) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.file.Write(p)
	f.n += int64(n)
	for s := range f.subs {
		if _, err := s.w.Write(p); err != nil {
			delete(f.subs, s)
		}
	}
	return n, err
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
		if past, err := os.Open(f.file.Name()); err == nil {
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
