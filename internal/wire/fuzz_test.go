package wire_test

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"

	"github.com/nixfarm/nixfarm/internal/wire"
)

// Bounds used by FuzzReader's small operations.
const (
	fuzzMaxLen   = 100
	fuzzMaxCount = 10
)

// FuzzReader decodes random input with a random sequence of operations. It
// checks that nothing panics, that every error is one the package documents,
// that results respect their bounds, and that memory use follows the input
// actually read rather than the lengths it announces.
func FuzzReader(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3}, cat(u64(7), str("abc"), u64(1), str("x"), u64(1), str("k"), str("v")))
	f.Add([]byte{1}, cat(u64(1), []byte("a\x00\x00\x00\x00\x00\x00\x01")))
	f.Add([]byte{4, 5}, u64(2))
	f.Add([]byte{6}, u64(wire.MaxStringLen))
	f.Add([]byte{7}, cat(u64(1<<40), str("a")))
	f.Add([]byte{8, 8}, cat(u64(3), str(""), str("a"), str("bcdefghi"), u64(1<<30)))
	f.Add([]byte{2}, cat(u64(3), str("a"), str("b")))

	f.Fuzz(func(t *testing.T, ops []byte, data []byte) {
		if len(ops) > 64 {
			ops = ops[:64]
		}
		r := wire.NewReader(bytes.NewReader(data))
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		err := runOps(t, r, ops)
		runtime.ReadMemStats(&after)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, wire.ErrTooLong) &&
			!errors.Is(err, wire.ErrBadPadding) && !errors.Is(err, wire.ErrBadBool) {
			t.Fatalf("undocumented error: %v", err)
		}
		// A generous budget: proportional to the input plus one read chunk
		// and a list's initial capacity, never to an announced length.
		budget := 64*uint64(len(data)) + 64*uint64(len(ops)) + 512<<10
		if used := after.TotalAlloc - before.TotalAlloc; used > budget {
			t.Fatalf("allocated %d bytes for %d bytes of input (budget %d)", used, len(data), budget)
		}
	})
}

func runOps(t *testing.T, r *wire.Reader, ops []byte) error {
	for _, op := range ops {
		switch op % 10 {
		case 0:
			if _, err := r.Uint64(); err != nil {
				return err
			}
		case 1:
			b, err := r.Bytes(fuzzMaxLen)
			if err != nil {
				return err
			}
			if len(b) > fuzzMaxLen {
				t.Fatalf("Bytes returned %d bytes, bound %d", len(b), fuzzMaxLen)
			}
		case 2:
			ss, err := r.Strings(fuzzMaxCount, fuzzMaxLen)
			if err != nil {
				return err
			}
			if len(ss) > fuzzMaxCount {
				t.Fatalf("Strings returned %d elements, bound %d", len(ss), fuzzMaxCount)
			}
			for _, s := range ss {
				if len(s) > fuzzMaxLen {
					t.Fatalf("Strings element of %d bytes, bound %d", len(s), fuzzMaxLen)
				}
			}
		case 3:
			m, err := r.StringMap(fuzzMaxCount, fuzzMaxLen)
			if err != nil {
				return err
			}
			if len(m) > fuzzMaxCount {
				t.Fatalf("StringMap returned %d entries, bound %d", len(m), fuzzMaxCount)
			}
			for k, v := range m {
				if len(k) > fuzzMaxLen || len(v) > fuzzMaxLen {
					t.Fatalf("StringMap entry %d/%d bytes, bound %d", len(k), len(v), fuzzMaxLen)
				}
			}
		case 4:
			if _, err := r.Bool(); err != nil {
				return err
			}
		case 5:
			if err := r.Discard(fuzzMaxLen); err != nil {
				return err
			}
		case 6:
			if _, err := r.Bytes(wire.MaxStringLen); err != nil {
				return err
			}
		case 7:
			if err := r.Discard(wire.MaxStringLen); err != nil {
				return err
			}
		case 8:
			if _, err := r.Strings(wire.MaxListLen, wire.MaxStringLen); err != nil {
				return err
			}
		case 9:
			if _, err := r.StringMap(wire.MaxListLen, wire.MaxPathLen); err != nil {
				return err
			}
		}
	}
	return nil
}
