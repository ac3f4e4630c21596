package nar_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/nar"
)

// setByte returns a copy of b with b[i] = v.
func setByte(b []byte, i int, v byte) []byte {
	c := append([]byte(nil), b...)
	c[i] = v
	return c
}

// What Nix 2.8's nix-store --restore does with a hostile NAR, checked by
// TestLiveNixRestoreHostile.
const (
	nixRejects = "rejects"
	// nixAccepts marks a deliberate difference: nar is stricter. Nix 2.8
	// accepts unsorted entries (its parser resets the previous name for
	// every entry, so the check never fires), cuts symlink targets at NUL,
	// skips a symlink without target, and takes the regular-file keywords
	// in any order and number.
	nixAccepts = "accepts"
)

type hostileCase struct {
	name string
	data []byte
	want string // in the error message
	nix  string // nixRejects, nixAccepts or "" (not checked)
}

func hostileCases() []hostileCase {
	oneFile := narOf(reg("abc"))
	return []hostileCase{
		{"empty input", nil, "truncated in magic", nixRejects},
		{"wrong magic", build("nix-archive-2", reg("x")), `bad magic "nix-archive-2"`, nixRejects},
		{"magic too long", build(strings.Repeat("x", 100)), "magic is 100 bytes long, more than 16", nixRejects},
		{"missing open paren", narOf([]any{"type", "regular", "contents", "", ")"}), `expected "(" opening "/", got "type"`, nixRejects},
		{"missing type", narOf([]any{"(", "regular", "contents", "", ")"}), `expected "type" of "/", got "regular"`, nixRejects},
		{"bogus type", narOf([]any{"(", "type", "fifo", ")"}), `unknown node type "fifo" of "/"`, nixRejects},
		{"bogus type in entry", narOf(dir(ent("p", []any{"(", "type", "pipe", ")"}))), `unknown node type "pipe" of "/p"`, nixRejects},
		{"type token too long", narOf([]any{"(", "type", strings.Repeat("r", 17)}), `node type of "/" is 17 bytes long, more than 16`, nixRejects},
		{"regular without contents", narOf([]any{"(", "type", "regular", ")"}), `expected "executable" or "contents" in regular file "/", got ")"`, nixAccepts},
		{"executable after contents", narOf([]any{"(", "type", "regular", "contents", "x", "executable", "", ")"}), `expected ")" closing "/", got "executable"`, nixAccepts},
		{"executable with value", narOf([]any{"(", "type", "regular", "executable", "yes", "contents", "", ")"}), `executable marker of "/" has non-empty value "yes"`, nixRejects},
		{"executable twice", narOf([]any{"(", "type", "regular", "executable", "", "executable", "", "contents", "", ")"}), `expected "contents" of regular file "/", got "executable"`, nixAccepts},
		{"contents twice", narOf([]any{"(", "type", "regular", "contents", "a", "contents", "b", ")"}), `expected ")" closing "/", got "contents"`, nixAccepts},
		{"type twice", narOf([]any{"(", "type", "directory", "type", "directory", ")"}), `expected "entry" or ")" in directory "/", got "type"`, nixRejects},
		{"huge contents length, short data", build("nix-archive-1", "(", "type", "regular", "contents", uint64(1)<<62, raw("short")), `truncated in contents of "/"`, nixRejects},
		{"contents length beyond int64", build("nix-archive-1", "(", "type", "regular", "contents", uint64(1)<<63+5, raw("short")), `contents length 9223372036854775813 of "/" is too large`, nixRejects},
		{"non-zero padding in keyword", setByte(oneFile, 24+8+1, 1), `non-zero padding after "(" opening "/"`, nixRejects},
		{"non-zero padding in magic", setByte(oneFile, 8+13, 'x'), "non-zero padding after magic", nixRejects},
		{"non-zero padding after contents", setByte(oneFile, len(oneFile)-16-5, 7), `non-zero padding after contents of "/"`, nixRejects},
		{"non-zero padding in name", setByte(narOf(dir(ent("n", reg("")))), 24+2*16+24+3*16+8+1, 1), `non-zero padding after entry name in directory "/"`, nixRejects},
		{"non-zero padding in target", setByte(narOf(sym("t")), 24+4*16+8+1, 1), `non-zero padding after target of symlink "/"`, nixRejects},
		{"unsorted entries", narOf(dir(ent("b", reg("")), ent("a", reg("")))), `entries of directory "/" are not sorted: "a" comes after "b"`, nixAccepts},
		{"unsorted by byte order", narOf(dir(ent("a", reg("")), ent("A", reg("")))), `"A" comes after "a"`, nixAccepts},
		{"unsorted UTF-8", narOf(dir(ent("\u00e4", reg("")), ent("z", reg("")))), `"z" comes after "ä"`, nixAccepts},
		{"unsorted nested", narOf(dir(ent("d", dir(ent("y", reg("")), ent("x", reg("")))))), `entries of directory "/d" are not sorted: "x" comes after "y"`, nixAccepts},
		{"duplicate names", narOf(dir(ent("a", reg("")), ent("a", reg("")))), `duplicate entry "a" in directory "/"`, nixRejects},
		{"duplicate file and directory", narOf(dir(ent("a", reg("")), ent("a", dir()))), `duplicate entry "a" in directory "/"`, nixRejects},
		{"empty name", narOf(dir(ent("", reg("")))), `entry name "" in directory "/" is empty`, nixRejects},
		{"dot", narOf(dir(ent(".", reg("")))), `entry name "." in directory "/" is not allowed`, nixRejects},
		{"dot dot", narOf(dir(ent("..", reg("")))), `entry name ".." in directory "/" is not allowed`, nixRejects},
		{"dot dot nested", narOf(dir(ent("a", dir(ent("..", sym("/etc")))))), `entry name ".." in directory "/a" is not allowed`, nixRejects},
		{"slash in name", narOf(dir(ent("a/b", reg("")))), `entry name "a/b" in directory "/" contains '/'`, nixRejects},
		{"slash only", narOf(dir(ent("/", reg("")))), `contains '/'`, nixRejects},
		{"NUL in name", narOf(dir(ent("a\x00b", reg("")))), `entry name "a\x00b" in directory "/" contains a NUL byte`, nixRejects},
		{"name too long", narOf(dir(ent(strings.Repeat("n", 256), reg("")))), `entry name in directory "/" is 256 bytes long, more than 255`, nixRejects},
		{"name length huge", build("nix-archive-1", "(", "type", "directory", "entry", "(", "name", uint64(1)<<60), "is 1152921504606846976 bytes long, more than 255", nixRejects},
		{"entry keyword wrong", narOf(dir([]any{"entri", "(", "name", "a", "node", reg(""), ")"})), `expected "entry" or ")" in directory "/", got "entri"`, nixRejects},
		{"entry without open paren", narOf(dir([]any{"entry", "name", "a", "node", reg(""), ")"})), `expected "(" opening an entry of directory "/", got "name"`, nixRejects},
		{"entry without name", narOf(dir([]any{"entry", "(", "node", reg(""), ")"})), `expected "name" in an entry of directory "/", got "node"`, nixRejects},
		{"entry without node", narOf(dir([]any{"entry", "(", "name", "a", reg(""), ")"})), `expected "node" in entry "/a", got "("`, nixRejects},
		{"entry not closed", narOf(dir([]any{"entry", "(", "name", "a", "node", reg("")}, ent("b", reg("")))), `expected ")" closing entry "/a", got "entry"`, nixRejects},
		{"symlink with empty target", narOf(sym("")), `target of symlink "/" is empty`, nixRejects},
		{"symlink target with NUL", narOf(dir(ent("l", sym("a\x00b")))), `target of symlink "/l" contains a NUL byte`, nixAccepts},
		{"symlink target too long", narOf(sym(strings.Repeat("t", 4097))), `target of symlink "/" is 4097 bytes long, more than 4096`, nixRejects},
		{"symlink without target", narOf([]any{"(", "type", "symlink", ")"}), `expected "target" of symlink "/", got ")"`, nixAccepts},
		{"symlink with contents", narOf([]any{"(", "type", "symlink", "target", "t", "contents", "", ")"}), `expected ")" closing "/", got "contents"`, nixRejects},
		{"deep nesting", narOf(nested(nar.MaxDepth+1, reg(""))), "is nested more than 256 deep", nixAccepts},
	}
}

// TestReaderHostile feeds malformed NARs to Next/Read, Copy and Restore:
// each must fail with an error wrapping ErrInvalid that names the problem.
func TestReaderHostile(t *testing.T) {
	for _, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readAll(bytes.NewReader(tc.data))
			checkHostileErr(t, "Reader", err, tc.want)

			n, err := nar.Copy(io.Discard, bytes.NewReader(tc.data))
			checkHostileErr(t, "Copy", err, tc.want)
			if n > int64(len(tc.data)) {
				t.Errorf("Copy wrote %d bytes of a %d-byte input", n, len(tc.data))
			}

			target := filepath.Join(t.TempDir(), "out")
			err = nar.Restore(bytes.NewReader(tc.data), target)
			checkHostileErr(t, "Restore", err, tc.want)
		})
	}
}

func checkHostileErr(t *testing.T, what string, err error, want string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: accepted a malformed NAR", what)
		return
	}
	if !errors.Is(err, nar.ErrInvalid) {
		t.Errorf("%s: error %q does not wrap ErrInvalid", what, err)
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("%s: error %q does not mention %q", what, err, want)
	}
}

// TestLiveNixRestoreHostile checks what the real nix-store --restore does
// with the hostile NARs, to keep the list of places where nar is stricter
// than Nix accurate.
func TestLiveNixRestoreHostile(t *testing.T) {
	nixStore := requireNix(t, "nix-store")
	for _, tc := range hostileCases() {
		if tc.nix == "" {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(nixStore, "--restore", filepath.Join(t.TempDir(), "out"))
			cmd.Stdin = bytes.NewReader(tc.data)
			out, err := cmd.CombinedOutput()
			switch {
			case tc.nix == nixRejects && err == nil:
				t.Errorf("nix-store --restore accepted it")
			case tc.nix == nixAccepts && err != nil:
				t.Errorf("nix-store --restore rejected it: %v\n%s", err, out)
			}
		})
	}
}

// TestTruncated cuts NARs at every offset: each prefix must fail with an
// error wrapping both ErrInvalid and io.ErrUnexpectedEOF.
func TestTruncated(t *testing.T) {
	small := narOf(dir(
		ent("a", exe("#!/bin/sh\n")),
		ent("b", dir(ent("c", reg("")), ent("d", sym("../a")))),
		ent("e", dir()),
		ent("f", reg("123456789")),
	))
	inputs := map[string]struct {
		data   []byte
		stride int
	}{
		"small": {small, 1},
		"link":  {readFixture(t, "link"), 1},
		"exe":   {readFixture(t, "exe"), 1},
		"tree":  {readFixture(t, "tree"), 13},
	}
	for name, in := range inputs {
		for n := 0; n < len(in.data); n += in.stride {
			prefix := in.data[:n]
			_, err := readAll(bytes.NewReader(prefix))
			if !errors.Is(err, nar.ErrInvalid) || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("%s cut at %d: Reader error %v, want a truncation error", name, n, err)
			}
			if _, err := nar.Copy(io.Discard, bytes.NewReader(prefix)); !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("%s cut at %d: Copy error %v, want a truncation error", name, n, err)
			}
		}
	}
}

// TestMaxDepth accepts directories nested exactly MaxDepth deep.
func TestMaxDepth(t *testing.T) {
	data := narOf(nested(nar.MaxDepth, sym("x")))
	nodes, err := readAll(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	last := nodes[len(nodes)-1].Path
	if want := strings.Repeat("/d", nar.MaxDepth); last != want {
		t.Fatalf("deepest path %q, want %q", last, want)
	}
}

// TestReaderErrorsAreSticky checks that after an error every call fails
// again and the source is not touched.
func TestReaderErrorsAreSticky(t *testing.T) {
	data := narOf(dir(ent("b", reg("x")), ent("a", reg("y"))))
	src := &countingReader{r: bytes.NewReader(data)}
	r := nar.NewReader(src)
	var first error
	for first == nil {
		_, first = r.Next()
	}
	n := src.n
	if _, err := r.Next(); err != first {
		t.Fatalf("second Next: %v, want %v", err, first)
	}
	if _, err := r.Read(make([]byte, 10)); err != first {
		t.Fatalf("Read: %v, want %v", err, first)
	}
	if src.n != n {
		t.Fatal("the source was read after an error")
	}
}

// errReader fails after serving data.
type errReader struct {
	data []byte
	err  error
}

func (e *errReader) Read(p []byte) (int, error) {
	if len(e.data) == 0 {
		return 0, e.err
	}
	n := copy(p, e.data)
	e.data = e.data[n:]
	return n, nil
}

// TestSourceErrors checks that an error of the source is passed on and is
// not reported as an invalid NAR.
func TestSourceErrors(t *testing.T) {
	boom := errors.New("boom")
	data := readFixture(t, "tree")
	for _, n := range []int{0, 10, 100, len(data) / 2} {
		_, err := readAll(&errReader{data: data[:n], err: boom})
		if !errors.Is(err, boom) || errors.Is(err, nar.ErrInvalid) {
			t.Errorf("cut at %d: Reader error %v, want one wrapping only the source's", n, err)
		}
		_, err = nar.Copy(io.Discard, &errReader{data: data[:n], err: boom})
		if !errors.Is(err, boom) || errors.Is(err, nar.ErrInvalid) {
			t.Errorf("cut at %d: Copy error %v, want one wrapping only the source's", n, err)
		}
	}
}

type failWriter struct{ after int }

func (f *failWriter) Write(p []byte) (int, error) {
	if len(p) > f.after {
		n := f.after
		f.after = 0
		return n, errors.New("disk full")
	}
	f.after -= len(p)
	return len(p), nil
}

func TestCopyWriteError(t *testing.T) {
	data := readFixture(t, "tree")
	n, err := nar.Copy(&failWriter{after: 1000}, bytes.NewReader(data))
	if err == nil || !strings.Contains(err.Error(), "writing nar: disk full") {
		t.Fatalf("Copy error %v, want the write error", err)
	}
	if n != 1000 {
		t.Fatalf("Copy reported %d bytes written, want 1000", n)
	}
}

// TestRestoreTargetExists refuses to restore over anything.
func TestRestoreTargetExists(t *testing.T) {
	data := readFixture(t, "tree")
	tmp := t.TempDir()
	dirTarget := filepath.Join(tmp, "dir")
	fileTarget := filepath.Join(tmp, "file")
	linkTarget := filepath.Join(tmp, "dangling")
	if err := os.Mkdir(dirTarget, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fileTarget, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(tmp, "nowhere"), linkTarget); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{dirTarget, fileTarget, linkTarget} {
		src := bytes.NewReader(data)
		err := nar.Restore(src, target)
		if !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "already exists") {
			t.Errorf("Restore to %s: %v, want an error wrapping fs.ErrExist", target, err)
		}
		if src.Len() != len(data) {
			t.Errorf("Restore to %s read the NAR although the target exists", target)
		}
	}
	if _, err := os.Lstat(filepath.Join(tmp, "nowhere")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Restore followed the dangling symlink: %v", err)
	}
	if err := nar.Restore(bytes.NewReader(data), filepath.Join(tmp, "missing", "parent")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Restore without a parent directory: %v, want fs.ErrNotExist", err)
	}
}

// TestRestoreSymlinksNotFollowed restores symlinks pointing out of the
// target and checks nothing was written through them.
func TestRestoreSymlinksNotFollowed(t *testing.T) {
	tmp := t.TempDir()
	outside := filepath.Join(tmp, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	data := narOf(dir(
		ent("abs", sym(outside)),
		ent("rel", sym("../outside")),
		ent("z", dir(ent("file", reg("inside")))),
	))
	target := filepath.Join(tmp, "out")
	if err := nar.Restore(bytes.NewReader(data), target); err != nil {
		t.Fatal(err)
	}
	if got, err := os.Readlink(filepath.Join(target, "rel")); err != nil || got != "../outside" {
		t.Fatalf("rel -> %q, %v", got, err)
	}
	entries, err := os.ReadDir(outside)
	if err != nil || len(entries) != 0 {
		t.Fatalf("outside has %d entries (%v), want none", len(entries), err)
	}
}

// TestRestorePartialOnError restores a NAR that turns bad midway: Restore
// fails with ErrInvalid and leaves the partial tree for the caller.
func TestRestorePartialOnError(t *testing.T) {
	data := narOf(dir(ent("a", reg("first")), ent("c", reg("")), ent("b", reg(""))))
	target := filepath.Join(t.TempDir(), "out")
	err := nar.Restore(bytes.NewReader(data), target)
	if !errors.Is(err, nar.ErrInvalid) || !strings.Contains(err.Error(), "not sorted") {
		t.Fatalf("Restore: %v, want an unsorted-entries error", err)
	}
	if b, err := os.ReadFile(filepath.Join(target, "a")); err != nil || string(b) != "first" {
		t.Fatalf("partial tree: a = %q, %v", b, err)
	}
	if err := os.RemoveAll(target); err != nil {
		t.Fatal(err)
	}
}
