package buildlog_test

import (
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/nixfarm/nixfarm/internal/buildlog"
)

func readAt(t *testing.T, path string, offset int64) (string, int64) {
	t.Helper()
	r, start, err := buildlog.OpenAt(path, offset)
	if err != nil {
		t.Fatalf("OpenAt(%d): %v", offset, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading from %d: %v", offset, err)
	}
	return string(b), start
}

// checkOffsets reads path from offsets around every frame boundary, and
// from random ones, and compares with want.
func checkOffsets(t *testing.T, path, want string, bounds []int) {
	t.Helper()
	offsets := []int64{0, 1, int64(len(want)) - 1, int64(len(want)), int64(len(want)) + 1, math.MaxInt64}
	for _, b := range bounds {
		offsets = append(offsets, int64(b)-1, int64(b), int64(b)+1)
	}
	for range 50 {
		offsets = append(offsets, rand.Int64N(int64(len(want))+10))
	}
	for _, off := range offsets {
		if off < 0 {
			continue
		}
		got, start := readAt(t, path, off)
		wantStart := min(off, int64(len(want)))
		if start != wantStart || got != want[wantStart:] {
			t.Fatalf("from %d: start %d (want %d), %d bytes (want %d)", off, start, wantStart, len(got), len(want)-int(wantStart))
		}
	}
}

func TestOpenAt(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "1.log")
	w, err := buildlog.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	// Frames of every size: tiny ones (no content size in their header),
	// middling, and full ones.
	want, bounds := "", []int{}
	for i, n := range []int{5, 300, 1, 100, 2000, 200, 70000, 3, 150000, 255, 256, 257, 65536, 10} {
		s := lines(i*1000, 1+n/50)[:n]
		w.Write([]byte(s))
		w.Flush()
		want += s
		bounds = append(bounds, len(want))
	}
	w.Close()
	checkOffsets(t, path, want, bounds)
	if _, _, err := buildlog.OpenAt(path, -1); err == nil {
		t.Error("OpenAt(-1) did not fail")
	}

	// A last frame half written (a build still writing, or a crash):
	// offsets in it or beyond it start at the end of what is whole.
	data, _ := os.ReadFile(path)
	enc, _ := zstd.NewWriter(nil)
	partial := enc.EncodeAll([]byte(lines(0, 100)), nil)
	os.WriteFile(path, append(data, partial[:len(partial)/2]...), 0o644)
	checkOffsets(t, path, want, bounds)

	// A plain log (from before compression) seeks.
	plain := filepath.Join(dir, "2.log")
	os.WriteFile(plain, []byte(want), 0o644)
	checkOffsets(t, plain, want, bounds)
	empty := filepath.Join(dir, "3.log")
	os.WriteFile(empty, nil, 0o644)
	if got, start := readAt(t, empty, 10); got != "" || start != 0 {
		t.Errorf("empty log from 10: %q at %d", got, start)
	}
}

// Frames before the offset are skipped by their headers, not
// decompressed: damage inside one does not matter to a read after it.
func TestOpenAtSkipsFrames(t *testing.T) {
	path := filepath.Join(t.TempDir(), "1.log")
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderCRC(true), zstd.WithWindowSize(buildlog.FrameSize))
	first, second := lines(0, 1000), lines(1000, 10)
	f1 := enc.EncodeAll([]byte(first), nil)
	f1[len(f1)-10] ^= 0xff // inside the block, before the checksum
	os.WriteFile(path, append(f1, enc.EncodeAll([]byte(second), nil)...), 0o644)
	if got, start := readAt(t, path, int64(len(first))); got != second || start != int64(len(first)) {
		t.Errorf("after the damaged frame: %q at %d", got, start)
	}
	if r, _, err := buildlog.OpenAt(path, 10); err == nil {
		if _, err := io.ReadAll(r); err == nil {
			t.Error("reading inside the damaged frame did not fail")
		}
		r.Close()
	}
}

// FuzzOpenAt: whatever a log file holds and whatever the offset, OpenAt
// neither panics nor starts beyond the offset.
func FuzzOpenAt(f *testing.F) {
	enc, _ := zstd.NewWriter(nil)
	f.Add([]byte("plain text\n"), int64(3))
	f.Add(append(enc.EncodeAll([]byte("one\n"), nil), enc.EncodeAll([]byte(lines(0, 100)), nil)...), int64(10))
	f.Add(enc.EncodeAll(make([]byte, 3<<20), nil), int64(1<<20))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00}, int64(0))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte, offset int64) {
		path := filepath.Join(dir, "fuzz.log")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		r, start, err := buildlog.OpenAt(path, offset)
		if offset < 0 && err == nil {
			t.Fatalf("offset %d accepted", offset)
		}
		if err != nil {
			return
		}
		defer r.Close()
		if start < 0 || start > offset {
			t.Fatalf("offset %d: start %d", offset, start)
		}
		io.Copy(io.Discard, io.LimitReader(r, 64<<20))
	})
}
