package storepath_test

import (
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

func TestContentAddress(t *testing.T) {
	h := nixhash.SHA256Of([]byte("x"))
	for _, s := range []string{
		"text:" + h.String(),
		"fixed:" + h.String(),
		"fixed:r:" + h.String(),
		"fixed:r:" + nixhash.Hash{Algo: nixhash.SHA1, Digest: make([]byte, 20)}.String(),
	} {
		ca, err := storepath.ParseContentAddress(s)
		if err != nil {
			t.Errorf("%s: %v", s, err)
			continue
		}
		if ca.String() != s {
			t.Errorf("%s renders as %s", s, ca)
		}
	}
	// Other hash forms are accepted and rendered in nix32.
	if ca, err := storepath.ParseContentAddress("fixed:r:sha256:" + h.Hex()); err != nil || ca.String() != "fixed:r:"+h.String() {
		t.Errorf("hex: %v %v", ca, err)
	}
	for _, s := range []string{"", "text", "text:sha1:" + strings.Repeat("0", 40), "fixed:", "fixed:r:", "nar:" + h.String(), "fixed:sha256:xyz"} {
		if _, err := storepath.ParseContentAddress(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
	// The path of a recursive sha256 address is the `nix-store --add` path.
	ca, _ := storepath.ParseContentAddress("fixed:r:" + h.String())
	want, _ := storepath.MakeFixedOutput("name", true, h, nil, false)
	if got, err := ca.Path("name", nil, false); err != nil || got != want {
		t.Errorf("path %s %v, want %s", got, err, want)
	}
	text, _ := storepath.ParseContentAddress("text:" + h.String())
	if _, err := text.Path("x", nil, true); err == nil {
		t.Error("a self-referencing text path was computed")
	}
}
