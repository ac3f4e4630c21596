package nixhash_test

import (
	"testing"

	"github.com/nixfarm/nixfarm/internal/nixhash"
)

// FuzzParse checks that whatever Parse accepts has a digest of the right
// size and that every form it renders parses back to the same hash.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
		"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
		"md5:d41d8cd98f00b204e9800998ecf8427e",
		"sha1:2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
		"sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg",
		"sha256:00000000000000000000000000000000000000000000",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := nixhash.Parse(s)
		if err != nil {
			return
		}
		if len(h.Digest) != h.Algo.Size() {
			t.Fatalf("Parse(%q): %d-byte digest for %s", s, len(h.Digest), h.Algo)
		}
		for _, form := range []string{h.String(), h.SRI(), h.Algo.String() + ":" + h.Hex(), h.Algo.String() + ":" + h.Base64()} {
			g, err := nixhash.Parse(form)
			if err != nil || !g.Equal(h) {
				t.Fatalf("Parse(%q) = %v, %v; want %v", form, g, err, h)
			}
		}
		for _, form := range []string{h.Hex(), h.Nix32(), h.Base64()} {
			g, err := nixhash.ParseAs(h.Algo, form)
			if err != nil || !g.Equal(h) {
				t.Fatalf("ParseAs(%q) = %v, %v; want %v", form, g, err, h)
			}
		}
	})
}
