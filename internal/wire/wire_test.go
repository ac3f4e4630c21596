package wire_test

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/wire"
)

// u64 returns the little-endian encoding of v.
func u64(v uint64) []byte {
	var b [8]byte
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	return b[:]
}

// str returns the wire encoding of s.
func str(s string) []byte {
	b := append(u64(uint64(len(s))), s...)
	return append(b, make([]byte, wire.Padding(uint64(len(s))))...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func reader(b []byte) *wire.Reader { return wire.NewReader(bytes.NewReader(b)) }

func TestPadding(t *testing.T) {
	want := []int{0, 7, 6, 5, 4, 3, 2, 1, 0, 7}
	for n, w := range want {
		if got := wire.Padding(uint64(n)); got != w {
			t.Errorf("Padding(%d) = %d, want %d", n, got, w)
		}
	}
	if got := wire.Padding(1<<64 - 1); got != 1 {
		t.Errorf("Padding(max) = %d, want 1", got)
	}
}

// TestEncoding pins the exact bytes the Writer produces.
func TestEncoding(t *testing.T) {
	tests := []struct {
		name  string
		write func(w *wire.Writer) error
		want  string // hex
	}{
		{"uint64 0", func(w *wire.Writer) error { return w.Uint64(0) }, "0000000000000000"},
		{"uint64 1", func(w *wire.Writer) error { return w.Uint64(1) }, "0100000000000000"},
		{"uint64 le", func(w *wire.Writer) error { return w.Uint64(0x0102030405060708) }, "0807060504030201"},
		{"uint64 max", func(w *wire.Writer) error { return w.Uint64(1<<64 - 1) }, "ffffffffffffffff"},
		{"bool false", func(w *wire.Writer) error { return w.Bool(false) }, "0000000000000000"},
		{"bool true", func(w *wire.Writer) error { return w.Bool(true) }, "0100000000000000"},
		{"empty string", func(w *wire.Writer) error { return w.String("") }, "0000000000000000"},
		{"string abc", func(w *wire.Writer) error { return w.String("abc") },
			"0300000000000000" + "6162630000000000"},
		{"string of 8", func(w *wire.Writer) error { return w.String("12345678") },
			"0800000000000000" + "3132333435363738"},
		{"string of 9", func(w *wire.Writer) error { return w.String("123456789") },
			"0900000000000000" + "3132333435363738" + "3900000000000000"},
		{"bytes", func(w *wire.Writer) error { return w.Bytes([]byte{0xff, 0}) },
			"0200000000000000" + "ff00000000000000"},
		{"nil bytes", func(w *wire.Writer) error { return w.Bytes(nil) }, "0000000000000000"},
		{"strings", func(w *wire.Writer) error { return w.Strings([]string{"a", ""}) },
			"0200000000000000" + "0100000000000000" + "6100000000000000" + "0000000000000000"},
		{"no strings", func(w *wire.Writer) error { return w.Strings(nil) }, "0000000000000000"},
		{"raw", func(w *wire.Writer) error { _, err := w.Write([]byte("nix")); return err }, "6e6978"},
		{"raw from reader", func(w *wire.Writer) error {
			_, err := w.ReadFrom(strings.NewReader("nix"))
			return err
		}, "6e6978"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := wire.NewWriter(&buf)
			if err := tt.write(w); err != nil {
				t.Fatal(err)
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(buf.Bytes()); got != tt.want {
				t.Errorf("wrote %s, want %s", got, tt.want)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := wire.NewWriter(&buf)
	ints := []uint64{0, 1, 7, 8, 255, 1 << 32, 1<<64 - 1}
	for _, v := range ints {
		w.Uint64(v)
	}
	w.Bool(true)
	w.Bool(false)
	var strs []string
	for n := 0; n <= 17; n++ {
		s := strings.Repeat("x", n)
		strs = append(strs, s)
		w.String(s)
	}
	long := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320000 bytes, above one read chunk
	w.Bytes(long)
	w.Strings(strs)
	// A map in Nix's encoding: count, then sorted key/value pairs.
	w.Uint64(2)
	w.String("a")
	w.String("1")
	w.String("b")
	w.String("")
	w.String("discard me")
	w.Write([]byte("raw tail"))
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}

	r := reader(buf.Bytes())
	for _, want := range ints {
		if got, err := r.Uint64(); err != nil || got != want {
			t.Fatalf("Uint64 = %d, %v; want %d", got, err, want)
		}
	}
	for _, want := range []bool{true, false} {
		if got, err := r.Bool(); err != nil || got != want {
			t.Fatalf("Bool = %v, %v; want %v", got, err, want)
		}
	}
	for _, want := range strs {
		if got, err := r.String(17); err != nil || got != want {
			t.Fatalf("String = %q, %v; want %q", got, err, want)
		}
	}
	if got, err := r.Bytes(uint64(len(long))); err != nil || !bytes.Equal(got, long) {
		t.Fatalf("Bytes(long) = %d bytes, %v; want %d bytes", len(got), err, len(long))
	}
	got, err := r.Strings(uint64(len(strs)), 17)
	if err != nil || strings.Join(got, ",") != strings.Join(strs, ",") {
		t.Fatalf("Strings = %q, %v; want %q", got, err, strs)
	}
	m, err := r.StringMap(2, 1)
	if err != nil || len(m) != 2 || m["a"] != "1" || m["b"] != "" {
		t.Fatalf("StringMap = %q, %v", m, err)
	}
	if err := r.Discard(10); err != nil {
		t.Fatalf("Discard: %v", err)
	}
	rest, err := io.ReadAll(r)
	if err != nil || string(rest) != "raw tail" {
		t.Fatalf("raw read = %q, %v", rest, err)
	}
	if _, err := r.Uint64(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Uint64 at end: %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestReaderErrors(t *testing.T) {
	type op func(r *wire.Reader) error
	bytesOp := func(max uint64) op { return func(r *wire.Reader) error { _, err := r.Bytes(max); return err } }
	stringOp := func(max uint64) op { return func(r *wire.Reader) error { _, err := r.String(max); return err } }
	stringsOp := func(n, l uint64) op {
		return func(r *wire.Reader) error { _, err := r.Strings(n, l); return err }
	}
	mapOp := func(n, l uint64) op {
		return func(r *wire.Reader) error { _, err := r.StringMap(n, l); return err }
	}
	discardOp := func(max uint64) op { return func(r *wire.Reader) error { return r.Discard(max) } }
	boolOp := func(r *wire.Reader) error { _, err := r.Bool(); return err }
	uintOp := func(r *wire.Reader) error { _, err := r.Uint64(); return err }

	badPad := cat(u64(1), []byte{'a', 0, 0, 0, 0, 0, 0, 1})
	tests := []struct {
		name string
		in   []byte
		op   op
		want error
	}{
		{"bytes too long", str("abcd"), bytesOp(3), wire.ErrTooLong},
		{"bytes huge length", u64(1<<64 - 1), bytesOp(wire.MaxStringLen), wire.ErrTooLong},
		{"string too long", str("abcd"), stringOp(3), wire.ErrTooLong},
		{"string bound zero", str("a"), stringOp(0), wire.ErrTooLong},
		{"list too long", cat(u64(3), str("a"), str("b"), str("c")), stringsOp(2, 10), wire.ErrTooLong},
		{"list huge count", u64(1 << 62), stringsOp(wire.MaxListLen, 10), wire.ErrTooLong},
		{"list element too long", cat(u64(2), str("a"), str("bcd")), stringsOp(2, 2), wire.ErrTooLong},
		{"map too long", cat(u64(2), str("a"), str("b"), str("c"), str("d")), mapOp(1, 10), wire.ErrTooLong},
		{"map key too long", cat(u64(1), str("abc"), str("b")), mapOp(1, 2), wire.ErrTooLong},
		{"map value too long", cat(u64(1), str("a"), str("bcd")), mapOp(1, 2), wire.ErrTooLong},
		{"discard too long", str("abcd"), discardOp(3), wire.ErrTooLong},
		{"discard huge length", u64(1<<64 - 1), discardOp(1<<64 - 1), io.ErrUnexpectedEOF},

		{"bytes bad padding", badPad, bytesOp(8), wire.ErrBadPadding},
		{"bytes bad first padding byte", cat(u64(7), []byte("abcdefg\x80")), bytesOp(8), wire.ErrBadPadding},
		{"string bad padding", badPad, stringOp(8), wire.ErrBadPadding},
		{"list bad padding", cat(u64(1), badPad), stringsOp(1, 8), wire.ErrBadPadding},
		{"map bad padding", cat(u64(1), str("k"), badPad), mapOp(1, 8), wire.ErrBadPadding},
		{"discard bad padding", badPad, discardOp(8), wire.ErrBadPadding},

		{"bool 2", u64(2), boolOp, wire.ErrBadBool},
		{"bool max", u64(1<<64 - 1), boolOp, wire.ErrBadBool},
		{"bool high bit", u64(1 << 32), boolOp, wire.ErrBadBool},

		{"uint64 empty", nil, uintOp, io.ErrUnexpectedEOF},
		{"bool empty", nil, boolOp, io.ErrUnexpectedEOF},
		{"bytes empty", nil, bytesOp(8), io.ErrUnexpectedEOF},
		{"strings empty", nil, stringsOp(8, 8), io.ErrUnexpectedEOF},
		{"map empty", nil, mapOp(8, 8), io.ErrUnexpectedEOF},
		{"discard empty", nil, discardOp(8), io.ErrUnexpectedEOF},
		{"long string truncated", cat(u64(1<<20), make([]byte, 200<<10)), bytesOp(1 << 20), io.ErrUnexpectedEOF},
		{"long discard truncated", cat(u64(1<<20), make([]byte, 200<<10)), discardOp(1 << 20), io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op(reader(tt.in))
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// TestTruncated cuts valid encodings at every byte and expects
// io.ErrUnexpectedEOF from each cut.
func TestTruncated(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		op   func(r *wire.Reader) error
	}{
		{"uint64", u64(42), func(r *wire.Reader) error { _, err := r.Uint64(); return err }},
		{"bool", u64(1), func(r *wire.Reader) error { _, err := r.Bool(); return err }},
		{"bytes", str("hello, world"), func(r *wire.Reader) error { _, err := r.Bytes(64); return err }},
		{"string", str("abc"), func(r *wire.Reader) error { _, err := r.String(64); return err }},
		{"strings", cat(u64(2), str("abc"), str("defghijkl")),
			func(r *wire.Reader) error { _, err := r.Strings(2, 64); return err }},
		{"map", cat(u64(2), str("a"), str("bc"), str("d"), str("efghijklm")),
			func(r *wire.Reader) error { _, err := r.StringMap(2, 64); return err }},
		{"discard", str("hello, world"), func(r *wire.Reader) error { return r.Discard(64) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(reader(tt.in)); err != nil {
				t.Fatalf("full input: %v", err)
			}
			for n := 0; n < len(tt.in); n++ {
				if err := tt.op(reader(tt.in[:n])); !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("cut at %d of %d: got %v, want io.ErrUnexpectedEOF", n, len(tt.in), err)
				}
			}
		})
	}
}

// TestReaderLeavesRest checks that a Reader consumes exactly one value, so
// raw data after it (a NAR) can follow on the same stream.
func TestReaderLeavesRest(t *testing.T) {
	r := reader(cat(str("abc"), []byte("after")))
	if s, err := r.String(8); err != nil || s != "abc" {
		t.Fatalf("String = %q, %v", s, err)
	}
	if r.Buffered() != len("after") {
		t.Errorf("Buffered = %d, want %d", r.Buffered(), len("after"))
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "after" {
		t.Errorf("rest = %q", rest)
	}
}

func TestNewReaderUsesBufio(t *testing.T) {
	br := bufio.NewReaderSize(bytes.NewReader(cat(u64(5), []byte("x"))), 16)
	r := wire.NewReader(br)
	if _, err := r.Uint64(); err != nil {
		t.Fatal(err)
	}
	// The Reader must not have buffered on its own: the caller's bufio
	// still holds the trailing byte.
	if b, err := br.ReadByte(); err != nil || b != 'x' {
		t.Fatalf("ReadByte = %q, %v", b, err)
	}
}

// failWriter accepts limit bytes and then fails every write.
type failWriter struct {
	limit int
	got   []byte
	calls int
}

var errBroken = errors.New("broken pipe")

func (f *failWriter) Write(p []byte) (int, error) {
	f.calls++
	if len(f.got)+len(p) > f.limit {
		n := f.limit - len(f.got)
		f.got = append(f.got, p[:n]...)
		return n, errBroken
	}
	f.got = append(f.got, p...)
	return len(p), nil
}

func TestWriterStickyError(t *testing.T) {
	steps := []struct {
		name string
		op   func(w *wire.Writer) error
	}{
		{"Uint64", func(w *wire.Writer) error { return w.Uint64(1) }},
		{"Bool", func(w *wire.Writer) error { return w.Bool(true) }},
		{"String", func(w *wire.Writer) error { return w.String("abc") }},
		{"Bytes", func(w *wire.Writer) error { return w.Bytes([]byte("abc")) }},
		{"Strings", func(w *wire.Writer) error { return w.Strings([]string{"a", "b"}) }},
		{"Write", func(w *wire.Writer) error { _, err := w.Write([]byte("raw")); return err }},
		{"ReadFrom", func(w *wire.Writer) error { _, err := w.ReadFrom(strings.NewReader("raw")); return err }},
		{"Flush", func(w *wire.Writer) error { return w.Flush() }},
	}
	for _, first := range steps {
		t.Run(first.name, func(t *testing.T) {
			fw := &failWriter{limit: 4}
			// A tiny buffer makes the failure surface on the first call
			// that overflows it rather than only at Flush.
			w := wire.NewWriter(bufio.NewWriterSize(fw, 16))
			if err := w.String(strings.Repeat("z", 20)); !errors.Is(err, errBroken) {
				t.Fatalf("overflowing write: got %v, want %v", err, errBroken)
			}
			calls := fw.calls
			if err := first.op(w); !errors.Is(err, errBroken) {
				t.Errorf("%s after failure: got %v, want %v", first.name, err, errBroken)
			}
			for _, s := range steps {
				if err := s.op(w); !errors.Is(err, errBroken) {
					t.Errorf("%s after failure: got %v, want %v", s.name, err, errBroken)
				}
			}
			if !errors.Is(w.Err(), errBroken) {
				t.Errorf("Err = %v", w.Err())
			}
			if fw.calls != calls {
				t.Errorf("underlying writer called %d more times after the failure", fw.calls-calls)
			}
		})
	}
}

func TestWriterErrAtFlush(t *testing.T) {
	fw := &failWriter{limit: 0}
	w := wire.NewWriter(fw)
	if err := w.String("buffered"); err != nil {
		t.Fatalf("buffered write failed early: %v", err)
	}
	if err := w.Flush(); !errors.Is(err, errBroken) {
		t.Fatalf("Flush = %v, want %v", err, errBroken)
	}
	if err := w.Uint64(1); !errors.Is(err, errBroken) {
		t.Fatalf("Uint64 after failed Flush = %v", err)
	}
}

func TestAtEOF(t *testing.T) {
	if r := reader(nil); !r.AtEOF() {
		t.Error("AtEOF on empty input = false")
	}
	r := reader(u64(7))
	if r.AtEOF() {
		t.Error("AtEOF before a message = true")
	}
	if v, err := r.Uint64(); err != nil || v != 7 {
		t.Fatalf("Uint64 after AtEOF = %d, %v", v, err)
	}
	if !r.AtEOF() {
		t.Error("AtEOF after the last message = false")
	}
}
