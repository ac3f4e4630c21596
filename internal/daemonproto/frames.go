package daemonproto

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/nixfarm/nixfarm/internal/wire"
)

// frameWriter writes everything the server sends: log frames, which may
// come from build goroutines, and replies. Every write holds mu.
type frameWriter struct {
	mu  sync.Mutex
	w   *wire.Writer
	ver uint64
	// nextActivity numbers activities; the high bits keep them apart from
	// ids the client makes itself.
	nextActivity uint64
}

func (f *frameWriter) flushLocked() error { return f.w.Flush() }

// next sends text for the user's terminal.
func (f *frameWriter) next(msg string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.w.Uint64(stderrNext)
	f.w.String(msg)
	return f.flushLocked()
}

type field struct {
	str   string
	num   uint64
	isNum bool
}

func (f *frameWriter) writeFields(fields []field) {
	f.w.Uint64(uint64(len(fields)))
	for _, fl := range fields {
		if fl.isNum {
			f.w.Uint64(fieldTypeInt)
			f.w.Uint64(fl.num)
		} else {
			f.w.Uint64(fieldTypeString)
			f.w.String(fl.str)
		}
	}
}

// startActivity opens an activity (protocol 1.20 and later).
func (f *frameWriter) startActivity(typ uint64, text string, fields []field) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nextActivity++
	id := 0x6e66<<32 | f.nextActivity
	f.w.Uint64(stderrStartActivity)
	f.w.Uint64(id)
	f.w.Uint64(lvlInfo)
	f.w.Uint64(typ)
	f.w.String(text)
	f.writeFields(fields)
	f.w.Uint64(0) // parent
	return id, f.flushLocked()
}

func (f *frameWriter) stopActivity(id uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.w.Uint64(stderrStopActivity)
	f.w.Uint64(id)
	return f.flushLocked()
}

// logLines sends build log lines: results of the build activity from 1.20
// on, plain messages before.
func (f *frameWriter) logLines(activity uint64, lines []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, line := range lines {
		if minor(f.ver) >= 20 {
			f.w.Uint64(stderrResult)
			f.w.Uint64(activity)
			f.w.Uint64(resBuildLogLine)
			f.writeFields([]field{{str: line}})
		} else {
			f.w.Uint64(stderrNext)
			f.w.String(line + "\n")
		}
	}
	return f.flushLocked()
}

// last ends a successful operation; its reply follows.
func (f *frameWriter) last() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.w.Uint64(stderrLast)
}

// failure ends an operation with an error, in the form the client's
// version expects. Both position fields are 0, as clients require.
func (f *frameWriter) failure(msg string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.w.Uint64(stderrError)
	if minor(f.ver) >= 26 {
		f.w.String("Error")
		f.w.Uint64(lvlError)
		f.w.String("Error")
		f.w.String(msg)
		f.w.Uint64(0) // no position
		f.w.Uint64(0) // no traces
	} else {
		f.w.String(msg)
		f.w.Uint64(1) // exit status
	}
	return f.flushLocked()
}

// buildLog is the log of one build, sent as build-log-line results of an
// activity. It is safe for concurrent use.
type buildLog struct {
	f        *frameWriter
	activity uint64
	mu       sync.Mutex
	partial  []byte
	closed   bool
	waiting  uint64 // the queue's activity (queue.go), 0 if none
}

func (f *frameWriter) openBuildLog(drvPath string) *buildLog {
	l := &buildLog{f: f}
	if minor(f.ver) >= 20 {
		l.activity, _ = f.startActivity(actBuild, fmt.Sprintf("building '%s'", drvPath),
			[]field{{str: drvPath}, {str: ""}, {num: 1, isNum: true}, {num: 1, isNum: true}})
	}
	return l
}

// Write sends every complete line at once; a partial line waits for its end.
func (l *buildLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return len(p), nil // a late write after the build: dropped
	}
	l.partial = append(l.partial, p...)
	var lines []string
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		lines = append(lines, string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	if len(lines) > 0 {
		if err := l.f.logLines(l.activity, lines); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Close sends the last partial line and ends the activity.
func (l *buildLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	if len(l.partial) > 0 {
		l.f.logLines(l.activity, []string{string(l.partial)})
		l.partial = nil
	}
	if l.waiting != 0 {
		l.f.stopActivity(l.waiting)
		l.waiting = 0
	}
	if minor(l.f.ver) >= 20 {
		return l.f.stopActivity(l.activity)
	}
	return nil
}

// framedReader reads a framed stream: frames of u64 length plus bytes (no
// padding), ended by an empty frame.
type framedReader struct {
	r       *wire.Reader
	left    uint64 // bytes left in the current frame
	eof     bool
	scratch [8]byte
}

func newFramedReader(r *wire.Reader) *framedReader { return &framedReader{r: r} }

func (fr *framedReader) Read(p []byte) (int, error) {
	for fr.left == 0 {
		if fr.eof {
			return 0, io.EOF
		}
		n, err := fr.r.Uint64()
		if err != nil {
			return 0, fmt.Errorf("%w: reading frame length: %w", ErrProtocol, err)
		}
		if n > maxFrame {
			return 0, fmt.Errorf("%w: frame of %d bytes is larger than %d", ErrProtocol, n, maxFrame)
		}
		if n == 0 {
			fr.eof = true
			return 0, io.EOF
		}
		fr.left = n
	}
	if uint64(len(p)) > fr.left {
		p = p[:fr.left]
	}
	n, err := fr.r.Read(p)
	fr.left -= uint64(n)
	if err == io.EOF {
		err = fmt.Errorf("%w: stream ended inside a frame", ErrProtocol)
	}
	return n, err
}

// drain reads to the end of the stream, returning how many bytes were
// left unread. An error means the connection can't be trusted any more.
func (fr *framedReader) drain() (int64, error) {
	n, err := io.Copy(io.Discard, fr)
	return n, err
}

// readRequester pulls exactly size bytes from the client with STDERR_READ
// requests (protocol 1.21 and 1.22), never asking past the end.
type readRequester struct {
	c    *conn
	left uint64
}

func (rr *readRequester) Read(p []byte) (int, error) {
	if rr.left == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	want := min(uint64(len(p)), rr.left, 64<<10)
	f := rr.c.out
	f.mu.Lock()
	f.w.Uint64(stderrRead)
	f.w.Uint64(want)
	err := f.flushLocked()
	f.mu.Unlock()
	if err != nil {
		return 0, err
	}
	data, err := rr.c.r.Bytes(want)
	if err != nil {
		return 0, fmt.Errorf("%w: reading requested data: %w", ErrProtocol, err)
	}
	if len(data) == 0 {
		return 0, errors.New("the client sent no data when asked for the NAR")
	}
	n := copy(p, data)
	rr.left -= uint64(n)
	return n, nil
}
