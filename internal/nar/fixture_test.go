package nar_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"testing/iotest"

	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/nixhash"
)

// TestDumpPathKnownAnswers compares DumpPath with `nix-store --dump` output
// of the same trees, byte for byte.
func TestDumpPathKnownAnswers(t *testing.T) {
	trees := makeTrees(t)
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			want := readFixture(t, name)
			var got bytes.Buffer
			if err := nar.DumpPath(&got, filepath.Join(trees, name)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Fatalf("DumpPath differs from nix-store --dump: got %d bytes, want %d; first difference at byte %d",
					got.Len(), len(want), firstDiff(got.Bytes(), want))
			}
		})
	}
}

// TestFixtureHashes checks the fixtures against the hashes nix-hash gave.
func TestFixtureHashes(t *testing.T) {
	hashes := readHashes(t)
	for _, name := range fixtures {
		want, ok := hashes[name]
		if !ok {
			t.Fatalf("hashes.txt has no line for %q", name)
		}
		sum := sha256.Sum256(readFixture(t, name))
		if got := hex.EncodeToString(sum[:]); got != want.flatHex {
			t.Errorf("%s: sha256 %s, nix-hash --flat says %s", name, got, want.flatHex)
		}
		if got := nixhash.EncodeNix32(sum[:]); got != want.narNix32 {
			t.Errorf("%s: nar hash %s, nix-hash --base32 says %s", name, got, want.narNix32)
		}
	}
}

// TestCopyFixtures checks that Copy reproduces each fixture and leaves the
// bytes after it unread, whatever the shape of the source's reads.
func TestCopyFixtures(t *testing.T) {
	trailer := []byte("TRAILING protocol data that is not part of the NAR")
	sources := map[string]func([]byte) io.Reader{
		"bytes":    func(b []byte) io.Reader { return bytes.NewReader(b) },
		"one-byte": func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) },
		"half":     func(b []byte) io.Reader { return iotest.HalfReader(bytes.NewReader(b)) },
		"data-err": func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) },
	}
	for _, name := range fixtures {
		want := readFixture(t, name)
		input := append(append([]byte(nil), want...), trailer...)
		for sname, mk := range sources {
			t.Run(name+"/"+sname, func(t *testing.T) {
				src := mk(input)
				var dst bytes.Buffer
				n, err := nar.Copy(&dst, src)
				if err != nil {
					t.Fatal(err)
				}
				if n != int64(len(want)) || !bytes.Equal(dst.Bytes(), want) {
					t.Fatalf("Copy wrote %d bytes (returned %d), want the %d bytes of the fixture", dst.Len(), n, len(want))
				}
				rest, err := io.ReadAll(src)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(rest, trailer) {
					t.Fatalf("Copy consumed bytes after the NAR: %q left, want %q", rest, trailer)
				}
			})
		}
		t.Run(name+"/exact", func(t *testing.T) {
			var dst bytes.Buffer
			if _, err := nar.Copy(&dst, &exactReader{t: t, data: want}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(dst.Bytes(), want) {
				t.Fatal("Copy did not reproduce the fixture")
			}
		})
	}
}

// TestReaderMatchesDisk reads each fixture with the Reader and compares
// every header and file with the tree on disk; then writes the nodes back
// with the Writer, which must reproduce the fixture.
func TestReaderMatchesDisk(t *testing.T) {
	trees := makeTrees(t)
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			fixture := readFixture(t, name)
			src := &exactReader{t: t, data: fixture}
			nodes, err := readAll(src)
			if err != nil {
				t.Fatal(err)
			}
			if len(src.data) != 0 {
				t.Fatalf("%d bytes of the NAR left unread after io.EOF", len(src.data))
			}
			want := diskNodes(t, filepath.Join(trees, name))
			if len(nodes) != len(want) {
				t.Fatalf("read %d nodes, the tree has %d", len(nodes), len(want))
			}
			for i := range want {
				if nodes[i] != want[i] {
					t.Errorf("node %d: read %+v, disk has %+v", i, nodes[i].Header, want[i].Header)
				}
			}
			out, err := writeAll(nodes)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, fixture) {
				t.Fatalf("Writer output differs from the fixture at byte %d", firstDiff(out, fixture))
			}
		})
	}
}

// diskNodes lists a tree on disk in NAR order. filepath.WalkDir visits
// entries in lexical (byte) order of name, which is NAR order.
func diskNodes(t *testing.T, root string) []node {
	t.Helper()
	var nodes []node
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		n := node{Header: nar.Header{Path: "/" + filepath.ToSlash(rel)}}
		if rel == "." {
			n.Path = "/"
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			n.Type, n.Size, n.Contents = nar.TypeRegular, int64(len(b)), string(b)
			n.Executable = fi.Mode().Perm()&0o100 != 0
		case fi.Mode()&fs.ModeSymlink != 0:
			n.Type = nar.TypeSymlink
			if n.LinkTarget, err = os.Readlink(p); err != nil {
				return err
			}
		case fi.IsDir():
			n.Type = nar.TypeDirectory
		}
		nodes = append(nodes, n)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return nodes
}

// TestRestoreFixtures restores each fixture and dumps the result again,
// which must give back the fixture, and checks the modes Restore set.
func TestRestoreFixtures(t *testing.T) {
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			want := readFixture(t, name)
			target := filepath.Join(t.TempDir(), "out")
			trailer := []byte("after")
			src := bytes.NewReader(append(append([]byte(nil), want...), trailer...))
			if err := nar.Restore(src, target); err != nil {
				t.Fatal(err)
			}
			if src.Len() != len(trailer) {
				t.Fatalf("Restore left %d bytes unread, want %d", src.Len(), len(trailer))
			}
			var got bytes.Buffer
			if err := nar.DumpPath(&got, target); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Fatalf("dump of the restored tree differs from the fixture at byte %d", firstDiff(got.Bytes(), want))
			}
			checkRestoredModes(t, target)
		})
	}
}

// checkRestoredModes checks the modes nix-store --restore gives: 0755 for
// directories and executables, 0644 for other files.
func checkRestoredModes(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		var want fs.FileMode
		switch {
		case fi.IsDir():
			want = 0o755
		case fi.Mode().IsRegular():
			want = 0o644
			if fi.Mode()&0o100 != 0 {
				want = 0o755
			}
		default:
			return nil
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %o, want %o", p, got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestLiveNixDump runs the real nix-store --dump on freshly made trees: it
// checks that mktree.sh is still deterministic here and that DumpPath
// agrees with this Nix.
func TestLiveNixDump(t *testing.T) {
	nixStore := requireNix(t, "nix-store")
	trees := makeTrees(t)
	for _, name := range fixtures {
		p := filepath.Join(trees, name)
		want, err := exec.Command(nixStore, "--dump", p).Output()
		if err != nil {
			t.Fatalf("nix-store --dump %s: %v", p, err)
		}
		if !bytes.Equal(want, readFixture(t, name)) {
			t.Errorf("%s: nix-store --dump differs from the fixture: run testdata/gen.sh?", name)
		}
		var got bytes.Buffer
		if err := nar.DumpPath(&got, p); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("%s: DumpPath differs from nix-store --dump at byte %d", name, firstDiff(got.Bytes(), want))
		}
	}
}

// TestLiveNixRestore restores each fixture with nix-store --restore and
// with Restore, and compares the two trees node by node, modes included.
func TestLiveNixRestore(t *testing.T) {
	nixStore := requireNix(t, "nix-store")
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			fixture := readFixture(t, name)
			tmp := t.TempDir()
			theirs, ours := filepath.Join(tmp, "nix"), filepath.Join(tmp, "ours")
			cmd := exec.Command(nixStore, "--restore", theirs)
			cmd.Stdin = bytes.NewReader(fixture)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("nix-store --restore: %v\n%s", err, out)
			}
			if err := nar.Restore(bytes.NewReader(fixture), ours); err != nil {
				t.Fatal(err)
			}
			compareTrees(t, theirs, ours)
		})
	}
}

// compareTrees compares two trees on disk: the same paths, types, modes,
// contents and link targets.
func compareTrees(t *testing.T, a, b string) {
	t.Helper()
	list := func(root string) map[string]string {
		m := map[string]string{}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			fi, err := os.Lstat(p)
			if err != nil {
				return err
			}
			desc := fi.Mode().String()
			switch {
			case fi.Mode().IsRegular():
				c, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				desc += " " + string(c)
			case fi.Mode()&fs.ModeSymlink != 0:
				l, err := os.Readlink(p)
				if err != nil {
					return err
				}
				desc += " -> " + l
			}
			m[rel] = desc
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	ma, mb := list(a), list(b)
	for p, da := range ma {
		if db, ok := mb[p]; !ok {
			t.Errorf("%s: missing from %s", p, b)
		} else if da != db {
			t.Errorf("%s: %q in %s, %q in %s", p, da, a, db, b)
		}
	}
	for p := range mb {
		if _, ok := ma[p]; !ok {
			t.Errorf("%s: missing from %s", p, a)
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestReaderReadSizes reads the tree fixture with Read calls of many sizes,
// through the buffer and straight from the source.
func TestReaderReadSizes(t *testing.T) {
	fixture := readFixture(t, "tree")
	want, err := readAll(bytes.NewReader(fixture))
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{1, 3, 8, 100, 4096, 1 << 16, 1 << 20} {
		r := nar.NewReader(&exactReader{t: t, data: fixture})
		buf := make([]byte, size)
		for i := 0; ; i++ {
			h, err := r.Next()
			if err == io.EOF {
				if i != len(want) {
					t.Fatalf("size %d: %d nodes, want %d", size, i, len(want))
				}
				break
			}
			if err != nil {
				t.Fatalf("size %d: %v", size, err)
			}
			var got []byte
			for {
				n, err := r.Read(buf)
				got = append(got, buf[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("size %d: %v", size, err)
				}
			}
			if *h != want[i].Header || string(got) != want[i].Contents {
				t.Fatalf("size %d: node %d is %+v with %d bytes, want %+v", size, i, *h, len(got), want[i].Header)
			}
		}
		if _, err := r.Next(); err != io.EOF {
			t.Fatalf("Next after the end: %v, want io.EOF", err)
		}
	}
}

// TestReaderSkipsContents calls Next without reading the files.
func TestReaderSkipsContents(t *testing.T) {
	fixture := readFixture(t, "tree")
	src := &exactReader{t: t, data: fixture}
	r := nar.NewReader(src)
	n := 0
	for {
		_, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if len(src.data) != 0 || n < 40 {
		t.Fatalf("%d nodes, %d bytes left", n, len(src.data))
	}
}

// TestReaderAPI checks Read outside regular files and Next after the end.
func TestReaderAPI(t *testing.T) {
	r := nar.NewReader(bytes.NewReader(narOf(dir(ent("l", sym("x")), ent("r", reg("data"))))))
	if n, err := r.Read(make([]byte, 4)); n != 0 || err != io.EOF {
		t.Fatalf("Read before Next: %d, %v", n, err)
	}
	want := []nar.Header{
		{Path: "/", Type: nar.TypeDirectory},
		{Path: "/l", Type: nar.TypeSymlink, LinkTarget: "x"},
		{Path: "/r", Type: nar.TypeRegular, Size: 4},
	}
	for _, w := range want {
		h, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if *h != w {
			t.Fatalf("header %+v, want %+v", *h, w)
		}
		if h.Type != nar.TypeRegular {
			if n, err := r.Read(make([]byte, 4)); n != 0 || err != io.EOF {
				t.Fatalf("Read of %s: %d, %v", h.Type, n, err)
			}
		}
	}
	if n, err := r.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty Read: %d, %v", n, err)
	}
	for range 2 {
		if h, err := r.Next(); h != nil || err != io.EOF {
			t.Fatalf("Next at the end: %v, %v", h, err)
		}
	}
	if n, err := r.Read(make([]byte, 4)); n != 0 || err != io.EOF {
		t.Fatalf("Read at the end: %d, %v", n, err)
	}
	if s := nar.TypeSymlink.String(); s != "symlink" {
		t.Fatalf("TypeSymlink.String() = %q", s)
	}
}
