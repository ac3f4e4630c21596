// Package wire implements the primitive encoding shared by Nix's serve and
// worker protocols: little-endian 64-bit integers and length-prefixed byte
// strings padded with zeros to a multiple of eight bytes.
//
// Every variable-length read takes an explicit bound, so a hostile peer can
// never make the reader allocate more than the caller allowed.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/nixfarm/nixfarm/internal/publicerr"
)

// Common bounds for protocol fields.
const (
	// MaxPathLen bounds a store path or other short identifier.
	MaxPathLen = 4096
	// MaxStringLen bounds ordinary strings such as error messages or
	// environment values.
	MaxStringLen = 64 << 20
	// MaxListLen bounds the number of elements of a list or map.
	MaxListLen = 1 << 20
)

// ErrTooLong is wrapped by errors for strings or lists above the caller's bound.
var ErrTooLong = publicerr.Sentinel("exceeds limit")

// ErrBadPadding is wrapped by errors for non-zero string padding.
var ErrBadPadding = publicerr.Sentinel("non-zero padding")

// ErrBadBool is wrapped by errors for a boolean that is neither 0 nor 1.
var ErrBadBool = publicerr.Sentinel("invalid boolean")

// Reader decodes wire primitives from a buffered stream. It never reads past
// the last byte of the value it decodes, other than what its buffer holds,
// so it can be used to pass raw data (such as a NAR) through Read.
type Reader struct {
	r   *bufio.Reader
	buf [8]byte
}

// NewReader returns a Reader over r. If r is already a *bufio.Reader it is
// used directly.
func NewReader(r io.Reader) *Reader {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	return &Reader{r: br}
}

// Read reads raw bytes, allowing data that is not wire-encoded (a NAR) to be
// consumed from the same stream.
func (r *Reader) Read(p []byte) (int, error) { return r.r.Read(p) }

// Buffered reports how many bytes can be read without touching the
// underlying stream.
func (r *Reader) Buffered() int { return r.r.Buffered() }

// AtEOF waits until data arrives or the stream ends, and reports whether
// it ended. It lets a server tell a clean end between messages from a
// message cut short.
func (r *Reader) AtEOF() bool {
	_, err := r.r.Peek(1)
	return errors.Is(err, io.EOF)
}

// Uint64 reads a little-endian unsigned 64-bit integer.
func (r *Reader) Uint64() (uint64, error) {
	if _, err := io.ReadFull(r.r, r.buf[:]); err != nil {
		return 0, unexpectedEOF(err)
	}
	return binary.LittleEndian.Uint64(r.buf[:]), nil
}

// Bool reads an integer that must be 0 or 1.
func (r *Reader) Bool() (bool, error) {
	v, err := r.Uint64()
	if err != nil {
		return false, err
	}
	switch v {
	case 0:
		return false, nil
	case 1:
		return true, nil
	}
	return false, fmt.Errorf("%w: %d", ErrBadBool, v)
}

// Bytes reads a length-prefixed, padded byte string of at most max bytes.
func (r *Reader) Bytes(max uint64) ([]byte, error) {
	n, err := r.Uint64()
	if err != nil {
		return nil, err
	}
	if n > max {
		return nil, fmt.Errorf("string of %d bytes: %w of %d", n, ErrTooLong, max)
	}
	b, err := r.readN(n)
	if err != nil {
		return nil, err
	}
	if err := r.padding(n); err != nil {
		return nil, err
	}
	return b, nil
}

// chunk is how much a read allocates before seeing the data: a peer that
// announces a long string but sends nothing costs at most this much.
const chunk = 64 << 10

// readN reads exactly n bytes. Memory grows with the data that actually
// arrives rather than with the announced length.
func (r *Reader) readN(n uint64) ([]byte, error) {
	if n <= chunk {
		b := make([]byte, n)
		if _, err := io.ReadFull(r.r, b); err != nil {
			return nil, unexpectedEOF(err)
		}
		return b, nil
	}
	b := make([]byte, 0, chunk)
	for uint64(len(b)) < n {
		if len(b) == cap(b) {
			nb := make([]byte, len(b), min(n, 2*uint64(cap(b))))
			copy(nb, b)
			b = nb
		}
		m, err := io.ReadFull(r.r, b[len(b):cap(b)])
		b = b[:len(b)+m]
		if err != nil {
			return nil, unexpectedEOF(err)
		}
	}
	return b, nil
}

// String reads a length-prefixed, padded string of at most max bytes.
func (r *Reader) String(max uint64) (string, error) {
	b, err := r.Bytes(max)
	return string(b), err
}

// Strings reads a list of at most maxCount strings of at most maxLen bytes each.
func (r *Reader) Strings(maxCount, maxLen uint64) ([]string, error) {
	n, err := r.Uint64()
	if err != nil {
		return nil, err
	}
	if n > maxCount {
		return nil, fmt.Errorf("list of %d elements: %w of %d", n, ErrTooLong, maxCount)
	}
	out := make([]string, 0, min(n, 1024))
	for i := uint64(0); i < n; i++ {
		s, err := r.String(maxLen)
		if err != nil {
			return nil, fmt.Errorf("list element %d: %w", i, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// StringMap reads a map of at most maxCount pairs, each key and value at most
// maxLen bytes.
func (r *Reader) StringMap(maxCount, maxLen uint64) (map[string]string, error) {
	n, err := r.Uint64()
	if err != nil {
		return nil, err
	}
	if n > maxCount {
		return nil, fmt.Errorf("map of %d entries: %w of %d", n, ErrTooLong, maxCount)
	}
	out := make(map[string]string, min(n, 1024))
	for i := uint64(0); i < n; i++ {
		k, err := r.String(maxLen)
		if err != nil {
			return nil, fmt.Errorf("map key %d: %w", i, err)
		}
		v, err := r.String(maxLen)
		if err != nil {
			return nil, fmt.Errorf("map value %q: %w", k, err)
		}
		out[k] = v
	}
	return out, nil
}

// Discard reads and drops a length-prefixed string of at most max bytes
// without holding it in memory.
func (r *Reader) Discard(max uint64) error {
	n, err := r.Uint64()
	if err != nil {
		return err
	}
	if n > max {
		return fmt.Errorf("string of %d bytes: %w of %d", n, ErrTooLong, max)
	}
	for left := n; left > 0; {
		m := int(min(left, chunk))
		if _, err := r.r.Discard(m); err != nil {
			return unexpectedEOF(err)
		}
		left -= uint64(m)
	}
	return r.padding(n)
}

func (r *Reader) padding(n uint64) error {
	pad := Padding(n)
	if pad == 0 {
		return nil
	}
	if _, err := io.ReadFull(r.r, r.buf[:pad]); err != nil {
		return unexpectedEOF(err)
	}
	for _, c := range r.buf[:pad] {
		if c != 0 {
			return ErrBadPadding
		}
	}
	return nil
}

// Padding returns the number of zero bytes that follow a string of n bytes.
func Padding(n uint64) int { return int((8 - n%8) % 8) }

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Writer encodes wire primitives into a buffered stream. The first write
// error is kept and returned by every later call and by Flush, so a sequence
// of writes needs only one check.
type Writer struct {
	w   *bufio.Writer
	buf [8]byte
	err error
}

// NewWriter returns a Writer over w. If w is already a *bufio.Writer it is
// used directly.
func NewWriter(w io.Writer) *Writer {
	bw, ok := w.(*bufio.Writer)
	if !ok {
		bw = bufio.NewWriterSize(w, 64<<10)
	}
	return &Writer{w: bw}
}

// Err returns the first error met by the writer.
func (w *Writer) Err() error { return w.err }

// Write writes raw bytes, for data that is not wire-encoded (a NAR).
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.w.Write(p)
	w.err = err
	return n, err
}

// ReadFrom copies raw bytes from r, for data that is not wire-encoded.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.w.ReadFrom(r)
	if err != nil {
		w.err = err
	}
	return n, err
}

// Uint64 writes a little-endian unsigned 64-bit integer.
func (w *Writer) Uint64(v uint64) error {
	binary.LittleEndian.PutUint64(w.buf[:], v)
	_, err := w.Write(w.buf[:])
	return err
}

// Bool writes 1 for true and 0 for false.
func (w *Writer) Bool(v bool) error {
	if v {
		return w.Uint64(1)
	}
	return w.Uint64(0)
}

// Bytes writes a length-prefixed byte string with its padding.
func (w *Writer) Bytes(b []byte) error {
	w.Uint64(uint64(len(b)))
	w.Write(b)
	return w.pad(uint64(len(b)))
}

// String writes a length-prefixed string with its padding.
func (w *Writer) String(s string) error {
	w.Uint64(uint64(len(s)))
	if w.err == nil {
		_, w.err = w.w.WriteString(s)
	}
	return w.pad(uint64(len(s)))
}

// Strings writes a list of strings.
func (w *Writer) Strings(ss []string) error {
	w.Uint64(uint64(len(ss)))
	for _, s := range ss {
		w.String(s)
	}
	return w.err
}

func (w *Writer) pad(n uint64) error {
	if p := Padding(n); p > 0 {
		var zero [8]byte
		w.Write(zero[:p])
	}
	return w.err
}

// Flush writes any buffered data to the underlying stream.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	w.err = w.w.Flush()
	return w.err
}
