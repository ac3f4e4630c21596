package nar_test

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/nixfarm/nixfarm/internal/nar"
)

func addSeeds(f *testing.F) {
	for _, name := range fixtures {
		f.Add(readFixture(f, name))
	}
	for _, tc := range hostileCases() {
		if len(tc.data) < 64<<10 {
			f.Add(tc.data)
		}
	}
	f.Add(narOf(dir(ent("a", exe("#!")), ent("b", dir(ent("c", sym("..")))))))
	f.Add(append(narOf(reg("x")), "trailing"...))
}

// parse reads data with the Reader and returns the nodes, the number of
// bytes taken from the source and the error.
func parse(src io.Reader) ([]node, int64, error) {
	c := &countingReader{r: src}
	nodes, err := readAll(c)
	return nodes, c.n, err
}

// FuzzReader feeds random bytes to the Reader. It must never panic; a
// malformed input must fail with ErrInvalid; and a successful parse must
// have taken from the source exactly the bytes of the NAR and nothing after
// it: writing the nodes back gives exactly those bytes. The result must not
// depend on how the source splits its reads.
func FuzzReader(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		nodes, n, err := parse(bytes.NewReader(data))
		nodes1, n1, err1 := parse(iotest.OneByteReader(bytes.NewReader(data)))
		if (err == nil) != (err1 == nil) || len(nodes) != len(nodes1) {
			t.Fatalf("whole reads: %d nodes, %v; one-byte reads: %d nodes, %v", len(nodes), err, len(nodes1), err1)
		}
		if err != nil {
			if !errors.Is(err, nar.ErrInvalid) {
				t.Fatalf("error %q does not wrap ErrInvalid", err)
			}
			if err.Error() != err1.Error() {
				t.Fatalf("errors differ with read sizes: %q and %q", err, err1)
			}
			return
		}
		if n != n1 {
			t.Fatalf("consumed %d bytes with whole reads, %d with one-byte reads", n, n1)
		}
		out, err := writeAll(nodes)
		if err != nil {
			t.Fatalf("writing back an accepted NAR: %v", err)
		}
		if !bytes.Equal(out, data[:n]) {
			t.Fatalf("accepted NAR of %d bytes is not canonical or the Reader read past it: written back as %d bytes", n, len(out))
		}
	})
}

// FuzzCopy checks that Copy agrees with the Reader: the same verdict, and on
// success exactly the bytes of the NAR, copied unchanged, with the rest of
// the source left unread.
func FuzzCopy(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		_, want, rerr := parse(bytes.NewReader(data))
		src := bytes.NewReader(data)
		var dst bytes.Buffer
		n, err := nar.Copy(&dst, src)
		if (err == nil) != (rerr == nil) {
			t.Fatalf("Copy: %v; Reader: %v", err, rerr)
		}
		if err != nil {
			if err.Error() != rerr.Error() {
				t.Fatalf("Copy error %q, Reader error %q", err, rerr)
			}
			return
		}
		if n != want || int64(dst.Len()) != n || !bytes.Equal(dst.Bytes(), data[:n]) {
			t.Fatalf("Copy returned %d and wrote %d bytes; the NAR has %d", n, dst.Len(), want)
		}
		if int64(src.Len()) != int64(len(data))-n {
			t.Fatalf("Copy took %d bytes from the source for a %d-byte NAR", int64(len(data)-src.Len()), n)
		}
	})
}
