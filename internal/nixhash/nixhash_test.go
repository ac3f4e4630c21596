package nixhash_test

import (
	"bufio"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/nixhash"
)

// The fixtures in testdata were made by the real Nix; see testdata/gen.sh.

type knownHash struct {
	input                   string
	algo                    nixhash.Algo
	b16, nix32, base64, sri string
}

func readLines(t *testing.T, name string) [][]string {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, strings.Split(sc.Text(), " "))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatalf("testdata/%s is empty", name)
	}
	return out
}

func mustAlgo(t *testing.T, s string) nixhash.Algo {
	t.Helper()
	a, err := nixhash.ParseAlgo(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func knownHashes(t *testing.T) []knownHash {
	var out []knownHash
	for _, f := range readLines(t, "hashes.txt") {
		if len(f) != 6 {
			t.Fatalf("bad hashes.txt line %q", f)
		}
		out = append(out, knownHash{f[0], mustAlgo(t, f[1]), f[2], f[3], f[4], f[5]})
	}
	return out
}

func TestKnownAnswers(t *testing.T) {
	algosSeen := map[nixhash.Algo]bool{}
	for _, k := range knownHashes(t) {
		algosSeen[k.algo] = true
		t.Run(k.input+"/"+k.algo.String(), func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", "inputs", k.input))
			if err != nil {
				t.Fatal(err)
			}
			hw := k.algo.New()
			hw.Write(data)
			h := nixhash.FromDigest(k.algo, hw)
			if len(h.Digest) != k.algo.Size() {
				t.Fatalf("digest of %d bytes, Size() = %d", len(h.Digest), k.algo.Size())
			}
			if k.algo == nixhash.SHA256 && !nixhash.SHA256Of(data).Equal(h) {
				t.Errorf("SHA256Of disagrees with Algo.New")
			}
			for _, c := range []struct{ what, got, want string }{
				{"Hex", h.Hex(), k.b16},
				{"Nix32", h.Nix32(), k.nix32},
				{"EncodeNix32", nixhash.EncodeNix32(h.Digest), k.nix32},
				{"Base64", h.Base64(), k.base64},
				{"SRI", h.SRI(), k.sri},
				{"String", h.String(), k.algo.String() + ":" + k.nix32},
			} {
				if c.got != c.want {
					t.Errorf("%s = %q, want %q (Nix)", c.what, c.got, c.want)
				}
			}
			if n := nixhash.Nix32Len(k.algo.Size()); n != len(k.nix32) {
				t.Errorf("Nix32Len(%d) = %d, Nix wrote %d characters", k.algo.Size(), n, len(k.nix32))
			}
			d, err := nixhash.DecodeNix32(k.nix32)
			if err != nil || hex.EncodeToString(d) != k.b16 {
				t.Errorf("DecodeNix32 = %x, %v; want %s", d, err, k.b16)
			}

			bare := []string{k.b16, k.nix32, k.base64}
			prefixed := []string{k.sri}
			for _, b := range bare {
				prefixed = append(prefixed, k.algo.String()+":"+b)
			}
			check := func(fn, s string, got nixhash.Hash, err error) {
				t.Helper()
				if err != nil {
					t.Errorf("%s(%q): %v", fn, s, err)
				} else if !got.Equal(h) {
					t.Errorf("%s(%q) = %s, want %s", fn, s, got, h)
				}
			}
			for _, s := range bare {
				got, err := nixhash.ParseDigest(k.algo, s)
				check("ParseDigest", s, got, err)
				got, err = nixhash.ParseAs(k.algo, s)
				check("ParseAs", s, got, err)
				if _, err := nixhash.Parse(s); !errors.Is(err, nixhash.ErrInvalid) {
					t.Errorf("Parse(%q) of a bare digest: %v, want ErrInvalid", s, err)
				}
			}
			for _, s := range prefixed {
				got, err := nixhash.Parse(s)
				check("Parse", s, got, err)
				got, err = nixhash.ParseAs(k.algo, s)
				check("ParseAs", s, got, err)
			}
		})
	}
	for _, a := range []nixhash.Algo{nixhash.MD5, nixhash.SHA1, nixhash.SHA256, nixhash.SHA512} {
		if !algosSeen[a] {
			t.Errorf("no known answers for %s", a)
		}
	}
}

// TestLenient checks non-canonical forms that Nix accepts.
func TestLenient(t *testing.T) {
	for _, f := range readLines(t, "lenient.txt") {
		a, s, want := mustAlgo(t, f[0]), f[1], f[2]
		h, err := nixhash.ParseAs(a, s)
		if err != nil {
			t.Errorf("ParseAs(%s, %q): %v; Nix accepts it", a, s, err)
			continue
		}
		if h.Hex() != want {
			t.Errorf("ParseAs(%s, %q) = %s, Nix says %s", a, s, h.Hex(), want)
		}
	}
}

// TestNixRejects checks that every string Nix rejects is rejected here too.
func TestNixRejects(t *testing.T) {
	for _, f := range readLines(t, "bad.txt") {
		a := mustAlgo(t, f[0])
		s := strings.Join(f[1:], " ")
		if h, err := nixhash.ParseAs(a, s); !errors.Is(err, nixhash.ErrInvalid) {
			t.Errorf("ParseAs(%s, %q) = %v, %v; Nix rejects it", a, s, h, err)
		}
		if strings.ContainsAny(s, ":-") {
			continue
		}
		if h, err := nixhash.ParseDigest(a, s); !errors.Is(err, nixhash.ErrInvalid) {
			t.Errorf("ParseDigest(%s, %q) = %v, %v; Nix rejects it", a, s, h, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	const sha256Hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	const sha1Nix32 = "143xibwh31h9bvxzalr0sjvbbvpa6ffs"
	tests := []struct {
		name string
		fn   func() (nixhash.Hash, error)
	}{
		{"no algorithm", func() (nixhash.Hash, error) { return nixhash.Parse(sha256Hex) }},
		{"empty", func() (nixhash.Hash, error) { return nixhash.Parse("") }},
		{"unknown algorithm", func() (nixhash.Hash, error) { return nixhash.Parse("sha3:" + sha256Hex) }},
		{"upper-case algorithm", func() (nixhash.Hash, error) { return nixhash.Parse("SHA256:" + sha256Hex) }},
		{"unknown SRI algorithm", func() (nixhash.Hash, error) { return nixhash.Parse("blake3-AAAA") }},
		{"SRI hex digest", func() (nixhash.Hash, error) { return nixhash.Parse("sha256-" + sha256Hex) }},
		{"SRI long digest", func() (nixhash.Hash, error) {
			return nixhash.Parse("sha1-" + strings.Repeat("A", 40))
		}},
		{"prefix mismatch", func() (nixhash.Hash, error) { return nixhash.ParseAs(nixhash.SHA256, "sha1:"+sha1Nix32) }},
		{"SRI mismatch", func() (nixhash.Hash, error) {
			return nixhash.ParseAs(nixhash.SHA1, "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")
		}},
		{"sha1 digest as sha256", func() (nixhash.Hash, error) { return nixhash.ParseAs(nixhash.SHA256, sha1Nix32) }},
		{"digest of unknown algorithm", func() (nixhash.Hash, error) { return nixhash.ParseDigest(0, sha256Hex) }},
		{"hex with space", func() (nixhash.Hash, error) {
			return nixhash.ParseDigest(nixhash.SHA256, sha256Hex[:63]+" ")
		}},
		{"nix32 with upper case", func() (nixhash.Hash, error) {
			return nixhash.ParseDigest(nixhash.SHA1, strings.ToUpper(sha1Nix32))
		}},
		{"nix32 with t", func() (nixhash.Hash, error) {
			return nixhash.ParseDigest(nixhash.SHA1, "t"+sha1Nix32[1:])
		}},
		{"trailing newline", func() (nixhash.Hash, error) { return nixhash.Parse("sha1:" + sha1Nix32 + "\n") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := tt.fn()
			if !errors.Is(err, nixhash.ErrInvalid) {
				t.Fatalf("got %v, %v; want ErrInvalid", h, err)
			}
		})
	}
}

func TestNix32(t *testing.T) {
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
	for c := 0; c < 256; c++ {
		if got, want := nixhash.IsNix32Char(byte(c)), strings.IndexByte(alphabet, byte(c)) >= 0; got != want {
			t.Errorf("IsNix32Char(%q) = %v, want %v", byte(c), got, want)
		}
	}
	for n, want := range map[int]int{0: 0, 1: 2, 16: 26, 20: 32, 32: 52, 64: 103} {
		if got := nixhash.Nix32Len(n); got != want {
			t.Errorf("Nix32Len(%d) = %d, want %d", n, got, want)
		}
	}
	// Each digit's value shows in the last character, which holds the
	// lowest five bits of the first byte.
	for i := 0; i < 32; i++ {
		got := nixhash.EncodeNix32([]byte{byte(i), 0, 0, 0, 0})
		if want := strings.Repeat("0", 7) + alphabet[i:i+1]; got != want {
			t.Errorf("EncodeNix32(%d,0,0,0,0) = %q, want %q", i, got, want)
		}
	}
	// 20 bytes fill 32 digits exactly; 32 bytes leave four bits over,
	// which must be zero.
	if _, err := nixhash.DecodeNix32(strings.Repeat("z", 32)); err != nil {
		t.Errorf("DecodeNix32(32 z) = %v", err)
	}
	for _, s := range []string{"1" + strings.Repeat("z", 51), "0" + strings.Repeat("z", 51)} {
		if _, err := nixhash.DecodeNix32(s); err != nil {
			t.Errorf("DecodeNix32(%q) = %v", s, err)
		}
	}
	for _, s := range []string{"2" + strings.Repeat("0", 51), "z" + strings.Repeat("z", 51), "e", "-"} {
		if _, err := nixhash.DecodeNix32(s); !errors.Is(err, nixhash.ErrInvalid) {
			t.Errorf("DecodeNix32(%q) = %v, want ErrInvalid", s, err)
		}
	}
}

func TestAlgo(t *testing.T) {
	tests := []struct {
		name string
		algo nixhash.Algo
		size int
	}{
		{"md5", nixhash.MD5, 16},
		{"sha1", nixhash.SHA1, 20},
		{"sha256", nixhash.SHA256, 32},
		{"sha512", nixhash.SHA512, 64},
	}
	for _, tt := range tests {
		a, err := nixhash.ParseAlgo(tt.name)
		if err != nil || a != tt.algo {
			t.Errorf("ParseAlgo(%q) = %v, %v", tt.name, a, err)
		}
		if a.String() != tt.name || a.Size() != tt.size || a.New().Size() != tt.size {
			t.Errorf("%s: String %q Size %d New().Size %d", tt.name, a, a.Size(), a.New().Size())
		}
	}
	for _, s := range []string{"", "sha", "SHA256", "sha256 ", "blake3"} {
		if _, err := nixhash.ParseAlgo(s); err == nil {
			t.Errorf("ParseAlgo(%q) succeeded", s)
		}
	}
	if s := nixhash.Algo(0).String(); s != "algo(0)" {
		t.Errorf("Algo(0).String() = %q", s)
	}
}

func TestHashZeroAndEqual(t *testing.T) {
	var zero nixhash.Hash
	if !zero.IsZero() {
		t.Error("zero Hash is not IsZero")
	}
	h := nixhash.SHA256Of([]byte("hello"))
	if h.IsZero() {
		t.Error("SHA-256 of hello IsZero")
	}
	if !h.Equal(nixhash.SHA256Of([]byte("hello"))) || h.Equal(nixhash.SHA256Of([]byte("hellO"))) {
		t.Error("Equal compares digests wrongly")
	}
	if h.Equal(nixhash.Hash{Algo: nixhash.SHA512, Digest: h.Digest}) {
		t.Error("Equal ignores the algorithm")
	}
}
