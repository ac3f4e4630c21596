package nar_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/nar"
)

// step is one call on a Writer.
type step struct {
	h    *nar.Header // WriteHeader, or
	data string      // Write
}

func hdr(path string, typ nar.Type) step { return step{h: &nar.Header{Path: path, Type: typ}} }

func file(path string, size int64) step {
	return step{h: &nar.Header{Path: path, Type: nar.TypeRegular, Size: size}}
}

func link(path, target string) step {
	return step{h: &nar.Header{Path: path, Type: nar.TypeSymlink, LinkTarget: target}}
}

func data(s string) step { return step{data: s} }

// run performs steps on a new Writer and returns the error of the last one,
// failing the test if an earlier one fails.
func run(t *testing.T, w *nar.Writer, steps []step) error {
	t.Helper()
	for i, s := range steps {
		var err error
		if s.h != nil {
			err = w.WriteHeader(s.h)
		} else {
			_, err = io.WriteString(w, s.data)
		}
		if i == len(steps)-1 {
			return err
		}
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	return nil
}

const (
	regT = nar.TypeRegular
	dirT = nar.TypeDirectory
)

func TestWriterErrors(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
		want  string
	}{
		{"first not root", []step{hdr("/a", dirT)}, `first node is "/a", must be the root "/"`},
		{"empty path", []step{hdr("", dirT)}, `first node is "", must be the root "/"`},
		{"invalid type", []step{hdr("/", 0)}, `"/" has invalid type 0`},
		{"negative size", []step{file("/", -1)}, `regular file "/" has negative size -1`},
		{"executable directory", []step{{h: &nar.Header{Path: "/", Type: dirT, Executable: true}}}, `directory "/" has an executable flag`},
		{"executable symlink", []step{{h: &nar.Header{Path: "/", Type: nar.TypeSymlink, LinkTarget: "x", Executable: true}}}, `symlink "/" has an executable flag`},
		{"file with target", []step{{h: &nar.Header{Path: "/", Type: regT, LinkTarget: "x"}}}, `regular file "/" has a link target`},
		{"empty link target", []step{link("/", "")}, `target of symlink "/" is empty`},
		{"NUL in link target", []step{link("/", "a\x00")}, `target of symlink "/" contains a NUL byte`},
		{"long link target", []step{link("/", strings.Repeat("x", 4097))}, `is 4097 bytes long, more than 4096`},
		{"root twice", []step{hdr("/", dirT), hdr("/", dirT)}, `name "" is empty`},
		{"after root file", []step{file("/", 0), file("/a", 0)}, `cannot add "/a": the root is not a directory`},
		{"after root symlink", []step{link("/", "x"), file("/a", 0)}, `the root is not a directory`},
		{"relative path", []step{hdr("/", dirT), file("a", 0)}, `path "a" does not start with '/'`},
		{"trailing slash", []step{hdr("/", dirT), hdr("/a/", dirT)}, `name "" is empty`},
		{"dot", []step{hdr("/", dirT), file("/.", 0)}, `name "." is not allowed`},
		{"dot dot", []step{hdr("/", dirT), hdr("/a", dirT), file("/a/..", 0)}, `name ".." is not allowed`},
		{"NUL in name", []step{hdr("/", dirT), file("/a\x00", 0)}, `contains a NUL byte`},
		{"long name", []step{hdr("/", dirT), file("/"+strings.Repeat("n", 256), 0)}, `is 256 bytes long, more than 255`},
		{"double slash", []step{hdr("/", dirT), file("//a", 0)}, `"//a" is not in a directory that is still open`},
		{"out of order", []step{hdr("/", dirT), file("/b", 0), file("/a", 0)}, `"/a" is out of order: entries of "/" must be in increasing byte order and "b" was already written`},
		{"byte order", []step{hdr("/", dirT), file("/a", 0), file("/B", 0)}, `"/B" is out of order`},
		{"duplicate", []step{hdr("/", dirT), file("/a", 0), hdr("/a", dirT)}, `duplicate entry "/a"`},
		{"child of file", []step{hdr("/", dirT), file("/a", 0), file("/a/b", 0)}, `"/a/b" is not in a directory that is still open`},
		{"child of symlink", []step{hdr("/", dirT), link("/a", "x"), file("/a/b", 0)}, `"/a/b" is not in a directory that is still open`},
		{"missing parent", []step{hdr("/", dirT), file("/x/y", 0)}, `"/x/y" is not in a directory that is still open`},
		{"back into closed directory", []step{hdr("/", dirT), hdr("/a", dirT), file("/b", 0), file("/a/z", 0)}, `"/a/z" is not in a directory that is still open`},
		{"sibling before nested", []step{hdr("/", dirT), hdr("/a", dirT), file("/a/x", 0), file("/a-b", 0), file("/a.b", 0), file("/a", 0)}, `"/a" is out of order`},
		{"file incomplete", []step{hdr("/", dirT), file("/a", 5), data("abc"), file("/b", 0)}, `cannot start "/b": 2 of the 5 bytes of "/a" are not written`},
		{"write outside file", []step{hdr("/", dirT), data("x")}, "write outside a regular file"},
		{"write before header", []step{data("x")}, "write outside a regular file"},
		{"write too long", []step{file("/", 2), data("abc")}, `write exceeds file size: "/" has 2 bytes`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := nar.NewWriter(io.Discard)
			err := run(t, w, tc.steps)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if tc.steps[len(tc.steps)-1].h != nil && !errors.Is(err, nar.ErrHeader) {
				t.Errorf("error %q does not wrap ErrHeader", err)
			}
		})
	}
}

func TestWriterCloseErrors(t *testing.T) {
	if err := nar.NewWriter(io.Discard).Close(); err == nil || !strings.Contains(err.Error(), "no root node") {
		t.Errorf("Close of an empty Writer: %v", err)
	}
	w := nar.NewWriter(io.Discard)
	run(t, w, []step{file("/", 3), data("ab")})
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), `1 of the 3 bytes of "/" are not written`) {
		t.Errorf("Close with a short file: %v", err)
	}
	w = nar.NewWriter(io.Discard)
	if _, err := w.Write([]byte("abcd")); err == nil {
		t.Error("Write before any header succeeded")
	}
	run(t, w, []step{file("/", 3), data("abc")})
	if n, err := w.Write([]byte("d")); n != 0 || !errors.Is(err, nar.ErrWriteTooLong) {
		t.Errorf("Write past the end: %d, %v", n, err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: dirT}); err == nil {
		t.Error("WriteHeader after Close succeeded")
	}
}

// TestWriterRecovers checks that a refused header leaves the Writer usable
// and the output unharmed.
func TestWriterRecovers(t *testing.T) {
	var got bytes.Buffer
	w := nar.NewWriter(&got)
	run(t, w, []step{hdr("/", dirT), file("/b", 1), data("B")})
	if err := w.WriteHeader(&nar.Header{Path: "/a", Type: regT}); err == nil {
		t.Fatal("out-of-order header accepted")
	}
	if err := w.WriteHeader(&nar.Header{Path: "/c/d", Type: regT}); err == nil {
		t.Fatal("header without parent accepted")
	}
	run(t, w, []step{hdr("/c", dirT), link("/c/d", "../b"), hdr("/d", dirT)})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	want := narOf(dir(ent("b", reg("B")), ent("c", dir(ent("d", sym("../b")))), ent("d", dir())))
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("output differs from the expected NAR at byte %d", firstDiff(got.Bytes(), want))
	}
}

// TestWriterTrickyOrder writes names whose byte order differs from path
// order: "a" (a directory) < "a-b" < "a.b" < "a_b".
func TestWriterTrickyOrder(t *testing.T) {
	var got bytes.Buffer
	w := nar.NewWriter(&got)
	run(t, w, []step{
		hdr("/", dirT), hdr("/a", dirT), file("/a/x", 1), data("x"), hdr("/a/y", dirT),
		file("/a-b", 0), file("/a.b", 0), file("/a_b", 0), file("/\u00e4", 0),
	})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	want := narOf(dir(
		ent("a", dir(ent("x", reg("x")), ent("y", dir()))),
		ent("a-b", reg("")), ent("a.b", reg("")), ent("a_b", reg("")), ent("\u00e4", reg("")),
	))
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("output differs from the expected NAR at byte %d", firstDiff(got.Bytes(), want))
	}
}

func TestWriterWriteErrorIsSticky(t *testing.T) {
	w := nar.NewWriter(&failWriter{after: 10})
	run(t, w, []step{file("/", 1<<20)})
	big := make([]byte, 1<<20)
	if _, err := w.Write(big); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Write: %v, want the write error", err)
	}
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Close: %v, want the write error", err)
	}
}
