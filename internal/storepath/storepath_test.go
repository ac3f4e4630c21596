package storepath_test

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// The fixtures in testdata were made by the real Nix; see testdata/gen.sh.

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
		out = append(out, strings.Fields(sc.Text()))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatalf("testdata/%s is empty", name)
	}
	return out
}

func mustParse(t *testing.T, s string) storepath.Path {
	t.Helper()
	p, err := storepath.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFixedOutputKnownAnswers checks paths from `nix-store --add` and
// `nix-store --add-fixed`, given the content address Nix recorded.
func TestFixedOutputKnownAnswers(t *testing.T) {
	methods := map[string]bool{}
	for _, f := range readLines(t, "fixed.txt") {
		want, ca := mustParse(t, f[0]), f[1]
		t.Run(ca, func(t *testing.T) {
			rest, ok := strings.CutPrefix(ca, "fixed:")
			if !ok {
				t.Fatalf("ca %q is not fixed:", ca)
			}
			rest, recursive := strings.CutPrefix(rest, "r:")
			h, err := nixhash.Parse(rest)
			if err != nil {
				t.Fatal(err)
			}
			methods[fmtMethod(recursive, h.Algo)] = true
			got, err := storepath.MakeFixedOutput(want.Name(), recursive, h, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("MakeFixedOutput = %s, Nix made %s", got, want)
			}
		})
	}
	for _, m := range []string{"r:sha256", "sha256", "r:sha1", "sha1", "md5", "sha512", "r:sha512"} {
		if !methods[m] {
			t.Errorf("no known answer for fixed:%s", m)
		}
	}
}

func fmtMethod(recursive bool, a nixhash.Algo) string {
	if recursive {
		return "r:" + a.String()
	}
	return a.String()
}

// TestTextKnownAnswers checks builtins.toFile results and a .drv against
// MakeText, with and without references.
func TestTextKnownAnswers(t *testing.T) {
	withRefs := 0
	for _, f := range readLines(t, "text.txt") {
		want := mustParse(t, f[0])
		t.Run(want.Name(), func(t *testing.T) {
			contents, err := os.ReadFile(filepath.Join("testdata", "text", f[1]))
			if err != nil {
				t.Fatal(err)
			}
			refs, err := storepath.ParseList(f[2:])
			if err != nil {
				t.Fatal(err)
			}
			if len(refs) > 0 {
				withRefs++
			}
			got, err := storepath.MakeText(want.Name(), contents, refs)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("MakeText = %s, Nix made %s", got, want)
			}
			// Order of references must not matter.
			rev := slices.Clone(refs)
			slices.Reverse(rev)
			before := slices.Clone(rev)
			if got, _ := storepath.MakeText(want.Name(), contents, rev); got != want {
				t.Errorf("MakeText with reversed refs = %s, want %s", got, want)
			}
			if !slices.Equal(rev, before) {
				t.Errorf("MakeText reordered its argument")
			}
		})
	}
	if withRefs < 2 {
		t.Errorf("only %d text fixtures with references", withRefs)
	}
}

// TestMakeOutputKnownAnswer recomputes the output path of the fixture .drv,
// which has no input derivations, so its hashDerivationModulo is simply the
// SHA-256 of the ATerm with the output path blanked.
func TestMakeOutputKnownAnswer(t *testing.T) {
	for _, f := range readLines(t, "text.txt") {
		drv := mustParse(t, f[0])
		if !drv.IsDerivation() {
			continue
		}
		contents, err := os.ReadFile(filepath.Join("testdata", "text", f[1]))
		if err != nil {
			t.Fatal(err)
		}
		const marker = `Derive([("out","`
		s := string(contents)
		if !strings.HasPrefix(s, marker) {
			t.Fatalf("unexpected drv %q", s)
		}
		out := s[len(marker):]
		out = out[:strings.IndexByte(out, '"')]
		blanked := strings.ReplaceAll(s, `"`+out+`"`, `""`)
		drvName := strings.TrimSuffix(drv.Name(), ".drv")
		got, err := storepath.MakeOutput("out", nixhash.SHA256Of([]byte(blanked)), drvName)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != out {
			t.Errorf("MakeOutput = %s, Nix made %s", got, out)
		}
		return
	}
	t.Fatal("no .drv among the text fixtures")
}

// TestParse checks validation. Nix 2.8 itself is a little laxer in three
// places that Parse deliberately is not: it canonicalises "//" and a
// trailing "/", and it never checks that the character after the hash is a
// dash.
func TestParse(t *testing.T) {
	const h = "0c6kzph7l0dcbfmjap64f0czdafn3b7x"
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"plain", "/nix/store/" + h + "-hello-2.12", true},
		{"drv", "/nix/store/" + h + "-hello-2.12.drv", true},
		{"one char name", "/nix/store/" + h + "-a", true},
		{"every allowed char", "/nix/store/" + h + "-azAZ09+-._?=", true},
		{"leading dot", "/nix/store/" + h + "-.foo", true},
		{"name of 211", "/nix/store/" + h + "-" + strings.Repeat("n", 211), true},
		{"name of 212", "/nix/store/" + h + "-" + strings.Repeat("n", 212), false},
		{"other store dir", "/gnu/store/" + h + "-hello", false},
		{"relative", "nix/store/" + h + "-hello", false},
		{"bare base", h + "-hello", false},
		{"store dir only", "/nix/store/", false},
		{"double slash", "/nix/store//" + h + "-hello", false},
		{"trailing slash", "/nix/store/" + h + "-hello/", false},
		{"subpath", "/nix/store/" + h + "-hello/bin/hello", false},
		{"short hash", "/nix/store/" + h[1:] + "-hello", false},
		{"long hash", "/nix/store/" + h + "a-hello", false},
		{"no name", "/nix/store/" + h, false},
		{"empty name", "/nix/store/" + h + "-", false},
		{"no dash", "/nix/store/" + h + "_hello", false},
		{"hash with e", "/nix/store/e" + h[1:] + "-hello", false},
		{"hash with o", "/nix/store/o" + h[1:] + "-hello", false},
		{"hash with u", "/nix/store/u" + h[1:] + "-hello", false},
		{"hash with t", "/nix/store/t" + h[1:] + "-hello", false},
		{"hash upper case", "/nix/store/" + strings.ToUpper(h) + "-hello", false},
		{"hash with dash", "/nix/store/" + h[:31] + "--hello", false},
		{"name with space", "/nix/store/" + h + "-hello world", false},
		{"name with slash", "/nix/store/" + h + "-a/b", false},
		{"name with colon", "/nix/store/" + h + "-a:b", false},
		{"name with at", "/nix/store/" + h + "-a@b", false},
		{"name with tilde", "/nix/store/" + h + "-a~", false},
		{"name with NUL", "/nix/store/" + h + "-a\x00", false},
		{"name with newline", "/nix/store/" + h + "-a\n", false},
		{"name with UTF-8", "/nix/store/" + h + "-héllo", false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := storepath.Parse(tt.in)
			if tt.ok {
				if err != nil {
					t.Fatalf("Parse(%q): %v", tt.in, err)
				}
				if string(p) != tt.in {
					t.Errorf("Parse(%q) = %q", tt.in, p)
				}
				base := strings.TrimPrefix(tt.in, "/nix/store/")
				if q, err := storepath.FromBase(base); err != nil || q != p {
					t.Errorf("FromBase(%q) = %q, %v", base, q, err)
				}
				return
			}
			if !errors.Is(err, storepath.ErrInvalid) {
				t.Fatalf("Parse(%q) = %q, %v; want ErrInvalid", tt.in, p, err)
			}
		})
	}
}

func TestAccessors(t *testing.T) {
	p := mustParse(t, "/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-hello-2.12.drv")
	if got := p.Base(); got != "0c6kzph7l0dcbfmjap64f0czdafn3b7x-hello-2.12.drv" {
		t.Errorf("Base = %q", got)
	}
	if got := p.HashPart(); got != "0c6kzph7l0dcbfmjap64f0czdafn3b7x" {
		t.Errorf("HashPart = %q", got)
	}
	if got := p.Name(); got != "hello-2.12.drv" {
		t.Errorf("Name = %q", got)
	}
	if !p.IsDerivation() || p.String() != string(p) {
		t.Errorf("IsDerivation/String wrong for %s", p)
	}
	q := mustParse(t, "/nix/store/00000000000000000000000000000000-x")
	if q.IsDerivation() {
		t.Errorf("%s is a derivation", q)
	}
	sorted := storepath.Sorted([]storepath.Path{p, q})
	if !slices.Equal(sorted, []storepath.Path{q, p}) {
		t.Errorf("Sorted = %v", sorted)
	}
	if ss := storepath.Strings(sorted); !slices.Equal(ss, []string{string(q), string(p)}) {
		t.Errorf("Strings = %v", ss)
	}
	if _, err := storepath.ParseList([]string{string(p), "/nix/store/bad"}); !errors.Is(err, storepath.ErrInvalid) {
		t.Errorf("ParseList with a bad element: %v", err)
	}
	if got := storepath.OutputName("hello", "out"); got != "hello" {
		t.Errorf("OutputName(out) = %q", got)
	}
	if got := storepath.OutputName("hello", "dev"); got != "hello-dev" {
		t.Errorf("OutputName(dev) = %q", got)
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "hello-2.12", ".", "..", "-", strings.Repeat("x", 211)} {
		if err := storepath.ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", "a/b", "ä", strings.Repeat("x", 212)} {
		if err := storepath.ValidateName(bad); !errors.Is(err, storepath.ErrInvalid) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestMakeErrors(t *testing.T) {
	sha1 := nixhash.Hash{Algo: nixhash.SHA1, Digest: make([]byte, 20)}
	sha256 := nixhash.SHA256Of(nil)
	ref := mustParse(t, "/nix/store/00000000000000000000000000000000-x")
	if _, err := storepath.Make("source", sha1, "x"); !errors.Is(err, storepath.ErrInvalid) {
		t.Errorf("Make with a sha1 inner hash: %v", err)
	}
	if _, err := storepath.Make("source", sha256, "a b"); !errors.Is(err, storepath.ErrInvalid) {
		t.Errorf("Make with a bad name: %v", err)
	}
	if _, err := storepath.MakeText("", nil, nil); !errors.Is(err, storepath.ErrInvalid) {
		t.Errorf("MakeText with an empty name: %v", err)
	}
	for _, c := range []struct {
		recursive bool
		h         nixhash.Hash
	}{{false, sha256}, {true, sha1}, {false, sha1}} {
		if _, err := storepath.MakeFixedOutput("x", c.recursive, c.h, []storepath.Path{ref}, false); !errors.Is(err, storepath.ErrInvalid) {
			t.Errorf("MakeFixedOutput(recursive=%v, %s) with refs: %v", c.recursive, c.h.Algo, err)
		}
		if _, err := storepath.MakeFixedOutput("x", c.recursive, c.h, nil, true); !errors.Is(err, storepath.ErrInvalid) {
			t.Errorf("MakeFixedOutput(recursive=%v, %s) with self: %v", c.recursive, c.h.Algo, err)
		}
	}
	// Recursive SHA-256 may carry references; they change the path.
	a, err := storepath.MakeFixedOutput("x", true, sha256, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := storepath.MakeFixedOutput("x", true, sha256, []storepath.Path{ref}, false)
	if err != nil {
		t.Fatal(err)
	}
	c, err := storepath.MakeFixedOutput("x", true, sha256, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if a == b || a == c || b == c {
		t.Errorf("references or self did not change the path: %s %s %s", a, b, c)
	}
}
