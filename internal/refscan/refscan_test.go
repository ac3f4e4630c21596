package refscan_test

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/refscan"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

// naive is the obvious definition: the candidates that occur in data.
func naive(data []byte, hashes []string) []string {
	var out []string
	for _, h := range hashes {
		if len(h) == refscan.HashLen && bytes.Contains(data, []byte(h)) && !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	slices.Sort(out)
	if out == nil {
		out = []string{}
	}
	return out
}

// scan writes data to a new Scanner in pieces cut at the given offsets.
func scan(hashes []string, data []byte, cuts ...int) []string {
	s := refscan.New(hashes)
	prev := 0
	for _, c := range cuts {
		if n, err := s.Write(data[prev:c]); n != c-prev || err != nil {
			panic("Write failed")
		}
		prev = c
	}
	s.Write(data[prev:])
	found := s.Found()
	if found == nil {
		found = []string{}
	}
	return found
}

func randHash(r *rand.Rand) string {
	b := make([]byte, refscan.HashLen)
	for i := range b {
		b[i] = alphabet[r.IntN(32)]
	}
	return string(b)
}

const (
	h1 = "dc04vv14dak1c1r48qa0m23vr9jy8sm0"
	h2 = "zc842j0rz61mjsp3h3wp5ly71ak6qgdn"
	h3 = "0000000000000000000000000000000a"
)

func TestScan(t *testing.T) {
	all := []string{h1, h2, h3}
	tests := []struct {
		name string
		data string
		want []string
	}{
		{"empty", "", nil},
		{"nothing", "foobar", nil},
		{"alone", h1, []string{h1}},
		{"surrounded by text", "foobar" + h1 + "xyzzy", []string{h1}},
		{"preceded by nix32", "abc" + h1, []string{h1}},
		{"followed by nix32", h1 + "abc", []string{h1}},
		{"embedded in nix32 run", strings.Repeat("z", 100) + h1 + strings.Repeat("0", 100), []string{h1}},
		{"two", "/nix/store/" + h1 + "-a\x00/nix/store/" + h2 + "-b", []string{h1, h2}},
		{"repeated", h1 + h1 + h1, []string{h1}},
		{"overlapping", "000000000000000000000000000000000000000a", []string{h3}},
		{"back to back", h2 + h1, []string{h1, h2}},
		{"cut short", h1[:31] + "-" + h1[1:], nil},
		{"upper case", strings.ToUpper(h1), nil},
		{"broken by e", h1[:16] + "e" + h1[16:], nil},
		{"broken by NUL", h1[:16] + "\x00" + h1[16:], nil},
		{"near miss then hit", h1[:31] + "e" + h1, []string{h1}},
		{"in binary", "\xff\xfe\x00" + h2 + "\x80", []string{h2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			if want == nil {
				want = []string{}
			}
			if n := naive([]byte(tt.data), all); !slices.Equal(n, want) {
				t.Fatalf("bad test: naive finds %v", n)
			}
			// Every way of cutting the data in two or three pieces.
			data := []byte(tt.data)
			for i := 0; i <= len(data); i++ {
				if got := scan(all, data, i); !slices.Equal(got, want) {
					t.Fatalf("cut at %d: found %v, want %v", i, got, want)
				}
				for j := i; j <= len(data) && j < i+40; j++ {
					if got := scan(all, data, i, j); !slices.Equal(got, want) {
						t.Fatalf("cut at %d,%d: found %v, want %v", i, j, got, want)
					}
				}
			}
		})
	}
}

func TestByteAtATime(t *testing.T) {
	data := []byte("x" + h1 + "y" + h2[:20])
	data = append(data, h2[20:]...)
	cuts := make([]int, 0, len(data))
	for i := 1; i < len(data); i++ {
		cuts = append(cuts, i)
	}
	if got := scan([]string{h1, h2, h3}, data, cuts...); !slices.Equal(got, []string{h1, h2}) {
		t.Fatalf("found %v", got)
	}
}

func TestCandidates(t *testing.T) {
	data := []byte(h1 + " " + h2)
	// Invalid candidates are never found, even if the text occurs.
	bad := []string{"", h1[:31], h1 + "0", strings.ToUpper(h2), "e" + h1[1:]}
	if got := scan(bad, []byte(strings.Join(bad, " "))); len(got) != 0 {
		t.Errorf("found invalid candidates %v", got)
	}
	if got := scan([]string{h1, h1, h2}, data); !slices.Equal(got, []string{h1, h2}) {
		t.Errorf("duplicate candidates: found %v", got)
	}
	if got := scan(nil, data); len(got) != 0 {
		t.Errorf("no candidates: found %v", got)
	}
	// Found returns a copy.
	s := refscan.New([]string{h1})
	s.Write(data)
	f := s.Found()
	f[0] = "changed"
	if s.Found()[0] != h1 {
		t.Error("Found shares its slice")
	}
}

// TestRandom compares the scanner with the naive search on random data rich
// in nix32 runs, written in random pieces.
func TestRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 2000; iter++ {
		var hashes []string
		for n := r.IntN(6); n > 0; n-- {
			hashes = append(hashes, randHash(r))
		}
		var data []byte
		for len(data) < 300 {
			switch r.IntN(5) {
			case 0:
				if len(hashes) > 0 {
					h := hashes[r.IntN(len(hashes))]
					if r.IntN(3) == 0 {
						h = h[:r.IntN(32)] // a near miss
					}
					data = append(data, h...)
				}
			case 1:
				data = append(data, byte(r.IntN(256)))
			default:
				data = append(data, alphabet[r.IntN(32)])
			}
		}
		var cuts []int
		for c := r.IntN(40); c < len(data); c += 1 + r.IntN(70) {
			cuts = append(cuts, c)
		}
		if got, want := scan(hashes, data, cuts...), naive(data, hashes); !slices.Equal(got, want) {
			t.Fatalf("data %q cuts %v: found %v, want %v", data, cuts, got, want)
		}
	}
}

// TestNixKnownAnswer scans the NAR of an output built by the real Nix with
// the candidates Nix had, and expects exactly the references Nix recorded.
// See testdata/gen.sh.
func TestNixKnownAnswer(t *testing.T) {
	nar, err := os.ReadFile(filepath.Join("testdata", "out.nar"))
	if err != nil {
		t.Fatal(err)
	}
	candidates := readPaths(t, "candidates.txt")
	want := readPaths(t, "references.txt")
	if len(want) == 0 || len(want) == len(candidates) {
		t.Fatalf("fixture is not discriminating: %d of %d candidates referenced", len(want), len(candidates))
	}
	byHash := map[string]storepath.Path{}
	var hashes []string
	for _, p := range candidates {
		byHash[p.HashPart()] = p
		hashes = append(hashes, p.HashPart())
	}
	for _, chunk := range []int{len(nar), 1, 7, 31, 32, 33, 64, 4096} {
		s := refscan.New(hashes)
		for rest := nar; len(rest) > 0; {
			n := min(chunk, len(rest))
			s.Write(rest[:n])
			rest = rest[n:]
		}
		var got []storepath.Path
		for _, h := range s.Found() {
			got = append(got, byHash[h])
		}
		got = storepath.Sorted(got)
		if !slices.Equal(got, want) {
			t.Errorf("writes of %d bytes: found\n%v\nNix found\n%v", chunk, got, want)
		}
	}
}

func readPaths(t *testing.T, name string) []storepath.Path {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	ps, err := storepath.ParseList(strings.Fields(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return storepath.Sorted(ps)
}

func FuzzScanner(f *testing.F) {
	f.Add([]byte("abc"+h1+"xyz"+h2[:10]), uint8(5), uint8(3))
	f.Add([]byte(h3+h3[1:]+"0"), uint8(1), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, nHash, step uint8) {
		// Candidates are taken from the data itself so that they occur.
		var hashes []string
		for i := 0; i+refscan.HashLen <= len(data) && len(hashes) < int(nHash%8); i += refscan.HashLen/2 + 1 {
			hashes = append(hashes, string(data[i:i+refscan.HashLen]))
		}
		hashes = append(hashes, h1, h2)
		var cuts []int
		for c := int(step); step > 0 && c < len(data); c += int(step) {
			cuts = append(cuts, c)
		}
		if got, want := scan(hashes, data, cuts...), naive(data, validOnly(hashes)); !slices.Equal(got, want) {
			t.Fatalf("found %v, want %v", got, want)
		}
	})
}

func validOnly(hashes []string) []string {
	var out []string
	for _, h := range hashes {
		if len(h) == refscan.HashLen && strings.Trim(h, alphabet) == "" {
			out = append(out, h)
		}
	}
	return out
}

// benchData returns 64 MiB of the given kind.
func benchData(kind string) []byte {
	r := rand.New(rand.NewPCG(3, 4))
	b := make([]byte, 64<<20)
	switch kind {
	case "binary":
		for i := range b {
			b[i] = byte(r.Uint32())
		}
	case "text": // words and store paths, as in scripts and configs
		for i := 0; i < len(b); {
			if r.IntN(50) == 0 {
				i += copy(b[i:], "/nix/store/"+randHash(r)+"-name ")
				continue
			}
			n := 1 + r.IntN(12)
			for j := 0; j < n && i < len(b); j++ {
				b[i] = "abcdefghijklmnopqrstuvwxyz"[r.IntN(26)]
				i++
			}
			if i < len(b) {
				b[i] = " \n/._"[r.IntN(5)]
				i++
			}
		}
	case "nix32": // the worst case: every window is a candidate
		for i := range b {
			b[i] = alphabet[r.IntN(32)]
		}
	}
	return b
}

func BenchmarkScan64MiB(b *testing.B) {
	r := rand.New(rand.NewPCG(5, 6))
	hashes := make([]string, 1000)
	for i := range hashes {
		hashes[i] = randHash(r)
	}
	for _, kind := range []string{"binary", "text", "nix32"} {
		data := benchData(kind)
		b.Run(kind, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				s := refscan.New(hashes)
				for p := data; len(p) > 0; p = p[min(len(p), 64<<10):] {
					s.Write(p[:min(len(p), 64<<10)])
				}
			}
		})
	}
}
