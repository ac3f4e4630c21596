// Package buildlog is a build's stored log: the file the farm keeps a
// build's output in, compressed with zstd as a sequence of independent
// frames. A frame is written every FrameSize bytes of log, and at most
// FlushInterval after a byte arrives, so a reader decompresses what
// exists while the build still writes, and a crash loses at most the
// last frame. Logs written before compression (plain text) are read as
// they are: a file is compressed if it starts with the zstd magic.
package buildlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

const (
	// FrameSize is how much log a frame holds at most.
	FrameSize = 64 << 10
	// MaxFrame bounds a frame a reader accepts, compressed and
	// decompressed: a file that claims more is refused, not allocated.
	MaxFrame = 1 << 20
	// FlushInterval is how long log may wait in memory before it is
	// written as a frame.
	FlushInterval = time.Second
	// PollInterval is how often Follow looks for more log.
	PollInterval = 100 * time.Millisecond
)

// magic starts every zstd frame.
var magic = []byte{0x28, 0xb5, 0x2f, 0xfd}

var (
	encoder = mustEncoder()
	decoder = mustDecoder()
)

func mustEncoder() *zstd.Encoder {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(2), zstd.WithWindowSize(FrameSize),
		zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderCRC(true))
	if err != nil {
		panic(err)
	}
	return e
}

func mustDecoder() *zstd.Decoder {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(2), zstd.WithDecoderMaxMemory(MaxFrame),
		zstd.WithDecoderMaxWindow(MaxFrame), zstd.WithDecoderLowmem(true))
	if err != nil {
		panic(err)
	}
	return d
}

// Writer writes a build's log to its file. It is safe for concurrent
// use; a frame is written at FrameSize bytes, by Flush, by Close, and by
// a timer FlushInterval after the first byte that waits.
type Writer struct {
	mu     sync.Mutex
	f      *os.File
	buf    []byte
	frame  []byte // reused for the compressed frame
	timer  *time.Timer
	err    error // the first write error: later writes are dropped
	closed bool
}

// Create creates (or truncates) the log file at path.
func Create(path string) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	return &Writer{f: f}, nil
}

// Write queues p; it fails only once writing the file has failed or the
// Writer is closed.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, os.ErrClosed
	}
	n := len(p)
	for len(p) > 0 && w.err == nil {
		k := min(len(p), FrameSize-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == FrameSize {
			w.flushLocked()
		}
	}
	if w.err != nil {
		return n, w.err
	}
	if len(w.buf) > 0 && w.timer == nil {
		w.timer = time.AfterFunc(FlushInterval, w.tick)
	}
	return n, nil
}

func (w *Writer) tick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timer = nil
	if !w.closed {
		w.flushLocked()
	}
}

// Flush writes what waits as a frame.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return os.ErrClosed
	}
	w.flushLocked()
	return w.err
}

func (w *Writer) flushLocked() {
	if len(w.buf) == 0 || w.err != nil {
		w.buf = w.buf[:0]
		return
	}
	w.frame = encoder.EncodeAll(w.buf, w.frame[:0])
	if _, err := w.f.Write(w.frame); err != nil {
		w.err = fmt.Errorf("writing build log: %w", err)
	}
	w.buf = w.buf[:0]
}

// Close writes what waits and closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.flushLocked()
	w.closed = true
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	return errors.Join(w.err, w.f.Close())
}

// Open opens the log at path for reading: decompressed if it is zstd, as
// it is if it is plain text. A truncated last frame (a crash while it
// was written) ends the log; a damaged frame before it is an error.
func Open(path string) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	var head [4]byte
	n, err := io.ReadFull(f, head[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	if n < len(magic) || !bytes.Equal(head[:], magic) {
		return f, nil
	}
	return &reader{src: f, closer: f}, nil
}

// Follow streams the log at path as it is written, until done is closed
// (the build ended, its log closed before) and all of it is read, or ctx
// ends. The file need not exist yet: a queued build has none. It looks
// for more every PollInterval.
func Follow(ctx context.Context, path string, done <-chan struct{}) io.ReadCloser {
	return &follower{ctx: ctx, path: path, done: done, poll: PollInterval}
}

// reader decompresses frames read from src.
type reader struct {
	src    io.Reader
	closer io.Closer
	in     []byte // compressed bytes not yet decoded
	out    []byte // decoded bytes not yet returned
	dec    []byte // the buffer out is in
	err    error
}

// Read returns decoded log. At the end of src it returns io.EOF, even if
// part of a frame remains: Read again once src has more.
func (r *reader) Read(p []byte) (int, error) {
	for len(r.out) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		n, err := frameLen(r.in)
		if err != nil {
			r.err = err
			return 0, err
		}
		if n > 0 {
			r.dec, err = decoder.DecodeAll(r.in[:n], r.dec[:0])
			if err != nil {
				r.err = fmt.Errorf("build log: damaged frame: %w", err)
				return 0, r.err
			}
			r.out = r.dec
			r.in = r.in[:copy(r.in, r.in[n:])]
			continue
		}
		if err := r.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.out)
	r.out = r.out[n:]
	return n, nil
}

// fill reads more compressed bytes; io.EOF at the end of src.
func (r *reader) fill() error {
	if len(r.in) == cap(r.in) {
		r.in = append(r.in, make([]byte, 32<<10)...)[:len(r.in)]
	}
	n, err := r.src.Read(r.in[len(r.in):cap(r.in)])
	r.in = r.in[:len(r.in)+n]
	if n > 0 {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return io.EOF
	}
	r.err = err
	return err
}

func (r *reader) Close() error { return r.closer.Close() }

// frameLen returns the length of the zstd frame that b starts with, 0 if
// b holds only part of it, or an error if b does not start with a frame
// this package writes, or the frame is larger than MaxFrame.
func frameLen(b []byte) (int, error) {
	if len(b) < 5 {
		if len(b) > 0 && !bytes.HasPrefix(magic, b[:min(len(b), 4)]) {
			return 0, errors.New("build log: not a zstd frame")
		}
		return 0, nil
	}
	if !bytes.Equal(b[:4], magic) {
		return 0, errors.New("build log: not a zstd frame")
	}
	fhd := b[4]
	if fhd&0x08 != 0 {
		return 0, errors.New("build log: zstd frame header with the reserved bit set")
	}
	pos := 5
	single := fhd&0x20 != 0
	if !single {
		pos++ // window descriptor
	}
	pos += [4]int{0, 1, 2, 4}[fhd&3] // dictionary id
	fcs := [4]int{0, 2, 4, 8}[fhd>>6]
	if fcs == 0 && single {
		fcs = 1
	}
	pos += fcs
	checksum := fhd&0x04 != 0
	for {
		if pos+3 > len(b) {
			return 0, nil
		}
		h := int(b[pos]) | int(b[pos+1])<<8 | int(b[pos+2])<<16
		pos += 3
		last, typ, size := h&1 != 0, (h>>1)&3, h>>3
		switch typ {
		case 1: // RLE: one byte repeated size times
			pos++
		case 3:
			return 0, errors.New("build log: zstd block of the reserved type")
		default:
			pos += size
		}
		if pos > MaxFrame {
			return 0, fmt.Errorf("build log: zstd frame larger than %d bytes", MaxFrame)
		}
		if last {
			break
		}
	}
	if checksum {
		pos += 4
	}
	if pos > len(b) {
		return 0, nil
	}
	return pos, nil
}

// follower is Follow's reader.
type follower struct {
	ctx  context.Context
	path string
	done <-chan struct{}
	poll time.Duration

	f       *os.File
	r       io.Reader // plain: f; zstd: a reader over f
	ended   bool      // done was closed: one more pass to the end of the file
	tail    bool
	pending []byte // a plain log's first bytes, read to look for the magic
}

func (fl *follower) Read(p []byte) (int, error) {
	for {
		if err := fl.open(); err != nil {
			return 0, err
		}
		if fl.r != nil {
			n, err := fl.r.Read(p)
			if n > 0 {
				return n, nil
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return 0, err
			}
		}
		// At the end of what exists.
		if fl.tail {
			return 0, io.EOF
		}
		if fl.ended {
			fl.tail = true
			if fl.r == nil {
				if fl.f == nil {
					return 0, io.EOF
				}
				// Fewer than 4 bytes, all written: plain text.
				fl.r = &prefixed{head: fl.pending, f: fl.f}
			}
			continue
		}
		t := time.NewTimer(fl.poll)
		select {
		case <-fl.ctx.Done():
			t.Stop()
			return 0, fl.ctx.Err()
		case <-fl.done:
			t.Stop()
			fl.ended = true
		case <-t.C:
		}
	}
}

// open opens the file once it exists, and picks plain or zstd once its
// first 4 bytes are there.
func (fl *follower) open() error {
	if fl.f == nil {
		f, err := os.Open(fl.path)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		fl.f = f
	}
	if fl.r != nil {
		return nil
	}
	var b [4]byte
	n, err := fl.f.Read(b[:4-len(fl.pending)])
	fl.pending = append(fl.pending, b[:n]...)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if len(fl.pending) < 4 {
		return nil
	}
	fl.r = &prefixed{head: fl.pending, f: fl.f}
	if bytes.Equal(fl.pending, magic) {
		fl.r = &reader{src: fl.r, closer: fl.f}
	}
	return nil
}

// prefixed reads head, then f: unlike io.MultiReader, it reads f again
// after io.EOF, as f grows.
type prefixed struct {
	head []byte
	f    io.Reader
}

func (p *prefixed) Read(b []byte) (int, error) {
	if len(p.head) > 0 {
		n := copy(b, p.head)
		p.head = p.head[n:]
		return n, nil
	}
	return p.f.Read(b)
}

func (fl *follower) Close() error {
	if fl.f != nil {
		return fl.f.Close()
	}
	return nil
}
