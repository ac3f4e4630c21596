package nar_test

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"

	"github.com/nixfarm/nixfarm/internal/nar"
)

// chunkReader returns reads of random sizes, to move token and file
// boundaries around the Reader's buffer.
type chunkReader struct {
	r   io.Reader
	rng *rand.Rand
	max int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if n := 1 + c.rng.IntN(c.max); len(p) > n {
		p = p[:n]
	}
	return c.r.Read(p)
}

// largeNodes returns the nodes of a NAR of several MiB, larger than every
// buffer, with files of sizes around the buffer sizes and, if many, many
// small entries in between.
func largeNodes(many bool) []node {
	rng := rand.New(rand.NewPCG(1, 2))
	contents := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return string(b)
	}
	nodes := []node{{Header: nar.Header{Path: "/", Type: nar.TypeDirectory}}}
	sizes := []int{0, 1, 7, 8, 9, 4095, 4096, 4097, 64<<10 - 1, 64 << 10, 64<<10 + 3, 1<<20 - 5, 1 << 20, 1<<20 + 1, 2<<20 + 13}
	for i, size := range sizes {
		d := fmt.Sprintf("/d%02d", i)
		nodes = append(nodes, node{Header: nar.Header{Path: d, Type: nar.TypeDirectory}})
		c := contents(size)
		nodes = append(nodes, node{Header: nar.Header{Path: d + "/big", Type: nar.TypeRegular, Size: int64(size), Executable: i%2 == 0}, Contents: c})
		small := 50 + rng.IntN(50)
		if !many {
			small = 3
		}
		for j := range small {
			p := fmt.Sprintf("%s/f%03d", d, j)
			switch j % 3 {
			case 0:
				c := contents(rng.IntN(300))
				nodes = append(nodes, node{Header: nar.Header{Path: p, Type: nar.TypeRegular, Size: int64(len(c))}, Contents: c})
			case 1:
				nodes = append(nodes, node{Header: nar.Header{Path: p, Type: nar.TypeSymlink, LinkTarget: fmt.Sprintf("../%x", rng.Uint64())}})
			case 2:
				nodes = append(nodes, node{Header: nar.Header{Path: p, Type: nar.TypeDirectory}})
				nodes = append(nodes, node{Header: nar.Header{Path: p + "/x", Type: nar.TypeSymlink, LinkTarget: "y"}})
			}
		}
	}
	return nodes
}

// TestLargeNAR runs a NAR bigger than every buffer through Copy and the
// Reader with reads of many sizes, so buffer compaction happens with
// tokens and files cut at every kind of place.
func TestLargeNAR(t *testing.T) {
	nodes := largeNodes(true)
	data, err := writeAll(nodes)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d nodes, %d bytes", len(nodes), len(data))
	trailer := []byte("trailing bytes")
	input := append(append([]byte(nil), data...), trailer...)
	sources := map[string]func() io.Reader{
		"bytes":    func() io.Reader { return bytes.NewReader(input) },
		"half":     func() io.Reader { return iotest.HalfReader(bytes.NewReader(input)) },
		"chunks":   func() io.Reader { return &chunkReader{bytes.NewReader(input), rand.New(rand.NewPCG(3, 4)), 100 << 10} },
		"small":    func() io.Reader { return &chunkReader{bytes.NewReader(input), rand.New(rand.NewPCG(5, 6)), 50} },
		"one-byte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(input)) },
	}
	for name, mk := range sources {
		t.Run("Copy/"+name, func(t *testing.T) {
			src := mk()
			var dst bytes.Buffer
			n, err := nar.Copy(&dst, src)
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(len(data)) || !bytes.Equal(dst.Bytes(), data) {
				t.Fatalf("Copy returned %d, wrote %d bytes, want %d; first difference at %d", n, dst.Len(), len(data), firstDiff(dst.Bytes(), data))
			}
			if rest, _ := io.ReadAll(src); !bytes.Equal(rest, trailer) {
				t.Fatalf("left %q after the NAR, want %q", rest, trailer)
			}
		})
		for _, size := range []int{7, 1000, 100 << 10} {
			t.Run(fmt.Sprintf("Reader/%s/read%d", name, size), func(t *testing.T) {
				src := mk()
				r := nar.NewReader(src)
				buf := make([]byte, size)
				for i := 0; ; i++ {
					h, err := r.Next()
					if err == io.EOF {
						if i != len(nodes) {
							t.Fatalf("%d nodes, want %d", i, len(nodes))
						}
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					var got bytes.Buffer
					// Skip some files unread, read some partly.
					switch i % 5 {
					case 3:
					case 4:
						n, _ := io.ReadFull(r, buf[:min(len(buf), int(h.Size))])
						got.Write(buf[:n])
					default:
						if _, err := io.CopyBuffer(struct{ io.Writer }{&got}, struct{ io.Reader }{r}, buf); err != nil {
							t.Fatal(err)
						}
						if got.String() != nodes[i].Contents {
							t.Fatalf("contents of %s differ", h.Path)
						}
					}
					if *h != nodes[i].Header || !bytes.HasPrefix([]byte(nodes[i].Contents), got.Bytes()) {
						t.Fatalf("node %d: %+v, want %+v", i, *h, nodes[i].Header)
					}
				}
				if rest, _ := io.ReadAll(src); !bytes.Equal(rest, trailer) {
					t.Fatalf("left %q after the NAR, want %q", rest, trailer)
				}
			})
		}
	}
	t.Run("exact", func(t *testing.T) {
		if _, err := nar.Copy(io.Discard, &exactReader{t: t, data: data}); err != nil {
			t.Fatal(err)
		}
		if _, err := readAll(&exactReader{t: t, data: data}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Restore", func(t *testing.T) {
		// Fewer nodes: creating files is slow on some file systems.
		data, err := writeAll(largeNodes(false))
		if err != nil {
			t.Fatal(err)
		}
		target := t.TempDir() + "/out"
		if err := nar.Restore(&chunkReader{bytes.NewReader(data), rand.New(rand.NewPCG(7, 8)), 300 << 10}, target); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if err := nar.DumpPath(&got, target); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), data) {
			t.Fatalf("dump of the restored tree differs at byte %d", firstDiff(got.Bytes(), data))
		}
	})
}
