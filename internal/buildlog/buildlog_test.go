package buildlog_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/buildlog"
)

func readAll(t *testing.T, path string) string {
	t.Helper()
	r, err := buildlog.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return string(b)
}

// lines returns n numbered lines of log.
func lines(from, n int) string {
	var b strings.Builder
	for i := from; i < from+n; i++ {
		fmt.Fprintf(&b, "line %d of a build log, with some text to compress\n", i)
	}
	return b.String()
}

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "1.log")
	w, err := buildlog.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	// More than a frame, in writes of every size, with flushes between.
	want := lines(0, 5000)
	for i, rest := 0, want; len(rest) > 0; i++ {
		k := min(len(rest), 1+i*37%9000)
		w.Write([]byte(rest[:k]))
		rest = rest[k:]
		if i%50 == 0 {
			w.Flush()
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	if !bytes.HasPrefix(raw, []byte{0x28, 0xb5, 0x2f, 0xfd}) || len(raw) >= len(want)/2 {
		t.Errorf("file of %d bytes for %d bytes of log, starting %x: not zstd", len(raw), len(want), raw[:min(len(raw), 4)])
	}
	if got := readAll(t, path); got != want {
		t.Errorf("read %d bytes, want %d", len(got), len(want))
	}
	// An empty log is an empty file.
	empty := filepath.Join(t.TempDir(), "2.log")
	w, _ = buildlog.Create(empty)
	w.Close()
	if got := readAll(t, empty); got != "" {
		t.Errorf("empty log read as %q", got)
	}
}

// Open reads logs written before compression as they are.
func TestPlainLog(t *testing.T) {
	dir := t.TempDir()
	for _, text := range []string{"", "a", "abc", "building '/nix/store/x.drv'...\nhello\n"} {
		path := filepath.Join(dir, "plain.log")
		os.WriteFile(path, []byte(text), 0o644)
		if got := readAll(t, path); got != text {
			t.Errorf("plain log %q read as %q", text, got)
		}
		done := make(chan struct{})
		close(done)
		got, err := io.ReadAll(buildlog.Follow(context.Background(), path, done))
		if err != nil || string(got) != text {
			t.Errorf("plain log %q followed as %q, %v", text, got, err)
		}
	}
}

// A reader sees each frame once it is flushed, while the writer goes on.
func TestReadWhileWriting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "1.log")
	w, err := buildlog.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write([]byte("first\n"))
	if got := readAll(t, path); got != "" {
		t.Errorf("before a flush: %q", got)
	}
	w.Flush()
	w.Write([]byte("second, not flushed\n"))
	if got := readAll(t, path); got != "first\n" {
		t.Errorf("after a flush: %q", got)
	}
	// The timer flushes what waits.
	deadline := time.Now().Add(10 * time.Second)
	for readAll(t, path) != "first\nsecond, not flushed\n" {
		if time.Now().After(deadline) {
			t.Fatalf("not flushed by the timer: %q", readAll(t, path))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Follow streams the log as it is written and ends once done is closed
// and everything is read, also what was written just before.
func TestFollow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "1.log")
	done := make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := buildlog.Follow(ctx, path, done) // before the file exists
	defer r.Close()
	got := make(chan string, 10)
	go func() {
		var b strings.Builder
		buf := make([]byte, 7)
		for {
			n, err := r.Read(buf)
			b.Write(buf[:n])
			if strings.HasSuffix(b.String(), "\n") {
				got <- b.String()
				b.Reset()
			}
			if err != nil {
				got <- "ERR " + err.Error()
				close(got)
				return
			}
		}
	}()
	w, err := buildlog.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("one\n"))
	w.Flush()
	if s := <-got; s != "one\n" {
		t.Fatalf("got %q", s)
	}
	w.Write([]byte("two\n"))
	w.Write([]byte("three\n"))
	w.Close()
	close(done)
	var rest []string
	for s := range got {
		rest = append(rest, s)
	}
	if strings.Join(rest, "|") != "two\nthree\n|ERR EOF" {
		t.Errorf("then %q", rest)
	}

	// A cancelled context ends a follower of a build that goes on.
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if _, err := io.ReadAll(buildlog.Follow(cctx, path+".none", make(chan struct{}))); err != context.Canceled {
		t.Errorf("cancelled follow: %v", err)
	}
}

// A crash while a frame is written loses that frame only.
func TestTruncatedLastFrame(t *testing.T) {
	path := filepath.Join(t.TempDir(), "1.log")
	w, _ := buildlog.Create(path)
	w.Write([]byte("kept\n"))
	w.Flush()
	w.Write([]byte(lines(0, 100)))
	w.Close()
	raw, _ := os.ReadFile(path)
	for _, cut := range []int{1, 3, 10, 40} {
		os.WriteFile(path, raw[:len(raw)-cut], 0o644)
		if got := readAll(t, path); got != "kept\n" {
			t.Errorf("cut %d bytes: read %q", cut, got)
		}
	}
	// A damaged frame before the end is an error.
	bad := bytes.Clone(raw)
	bad[len(bad)-5] ^= 0xff
	os.WriteFile(path, bad, 0o644)
	r, _ := buildlog.Open(path)
	if _, err := io.ReadAll(r); err == nil {
		t.Error("a damaged frame read without an error")
	}
}

// The account's cap (max-log-size) cuts what reaches the file; a frame
// larger than MaxFrame in a file is refused, not decoded.
func TestCap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "1.log")
	w, _ := buildlog.Create(path)
	lim := account.NewLogLimit(w, 100)
	lim.Write([]byte(lines(0, 100)))
	w.Close()
	got := readAll(t, path)
	if !strings.Contains(got, "log truncated at 100 B") || len(got) > 200 {
		t.Errorf("capped log: %q", got)
	}

	enc, _ := zstd.NewWriter(nil)
	big := enc.EncodeAll(make([]byte, 2*buildlog.MaxFrame), nil)
	os.WriteFile(path, big, 0o644)
	r, _ := buildlog.Open(path)
	if n, err := io.Copy(io.Discard, r); err == nil {
		t.Errorf("a frame of %d bytes read (%d) without an error", 2*buildlog.MaxFrame, n)
	}
}
