package storepath_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// FuzzParse checks store path validation, which every protocol runs on
// client bytes: Parse never panics, rejects with ErrInvalid, and a path it
// accepts is exactly the input, is rebuilt by FromBase from its base, and
// splits into a 32-character nix32 hash and a name that ValidateName
// accepts (so never "/" or "..", never longer than 211).
func FuzzParse(f *testing.F) {
	const h = "0c6kzph7l0dcbfmjap64f0czdafn3b7x"
	for _, s := range []string{
		"/nix/store/" + h + "-hello-2.12",
		"/nix/store/" + h + "-hello-2.12.drv",
		"/nix/store/" + h + "-azAZ09+-._?=",
		"/nix/store/" + h + "-" + strings.Repeat("n", 211),
		"/nix/store/" + h + "-..",
		"/nix/store/" + h + "-hello/bin/hello",
		"/nix/store//" + h + "-hello",
		"/nix/store/" + h,
		"/gnu/store/" + h + "-hello",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := storepath.Parse(s)
		if err != nil {
			if !errors.Is(err, storepath.ErrInvalid) {
				t.Fatalf("Parse(%q): error without ErrInvalid: %v", s, err)
			}
			if p != "" {
				t.Fatalf("Parse(%q) failed but returned %q", s, p)
			}
			return
		}
		if p.String() != s {
			t.Fatalf("Parse(%q) = %q", s, p)
		}
		if q, err := storepath.FromBase(p.Base()); err != nil || q != p {
			t.Fatalf("FromBase(%q) = %q, %v", p.Base(), q, err)
		}
		if p.Base() != p.HashPart()+"-"+p.Name() {
			t.Fatalf("%q: base %q is not hash %q - name %q", s, p.Base(), p.HashPart(), p.Name())
		}
		if _, err := nixhash.DecodeNix32(p.HashPart()); err != nil {
			t.Fatalf("%q: hash part does not decode: %v", s, err)
		}
		if err := storepath.ValidateName(p.Name()); err != nil {
			t.Fatalf("%q: accepted with name %q: %v", s, p.Name(), err)
		}
		if strings.ContainsAny(p.Name(), "/\x00") || len(p.Name()) > storepath.MaxNameLen {
			t.Fatalf("%q: name %q", s, p.Name())
		}
		if p.IsDerivation() != strings.HasSuffix(s, ".drv") {
			t.Fatalf("%q: IsDerivation %v", s, p.IsDerivation())
		}
	})
}

// FuzzParseContentAddress checks the "ca" field parser (narinfo, path
// infos sent by clients): no panic, and what it accepts renders to a form
// that parses to the same address, stably.
func FuzzParseContentAddress(f *testing.F) {
	h := nixhash.SHA256Of([]byte("x"))
	for _, s := range []string{
		"text:" + h.String(),
		"fixed:" + h.String(),
		"fixed:r:" + h.String(),
		"fixed:r:sha256:" + h.Hex(),
		"fixed:r:" + h.SRI(),
		"fixed:sha1:" + nixhash.Hash{Algo: nixhash.SHA1, Digest: make([]byte, 20)}.String()[5:],
		"fixed:md5:00000000000000000000000000000000",
		"text:sha1:0000000000000000000000000000000000000000",
		"fixed:r:r:" + h.String(),
		"git:" + h.String(),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ca, err := storepath.ParseContentAddress(s)
		if err != nil {
			return
		}
		if ca.Method < storepath.Text || ca.Method > storepath.Recursive {
			t.Fatalf("%q: method %d", s, ca.Method)
		}
		out := ca.String()
		again, err := storepath.ParseContentAddress(out)
		if err != nil {
			t.Fatalf("%q renders as %q, which does not parse: %v", s, out, err)
		}
		if again.Method != ca.Method || !again.Hash.Equal(ca.Hash) {
			t.Fatalf("%q: %+v renders as %q, which parses as %+v", s, ca, out, again)
		}
		if again.String() != out {
			t.Fatalf("%q: rendering not stable: %q then %q", s, out, again.String())
		}
		if _, err := ca.Path("name", nil, false); err != nil {
			t.Fatalf("%q: no path: %v", s, err)
		}
	})
}
