package clientconfig_test

import (
	"testing"

	"github.com/nixfarm/nixfarm/internal/clientconfig"
)

// FuzzParseVersion: whatever `nix --version` prints, ParseVersion either
// refuses it or returns a version that reads back the same.
func FuzzParseVersion(f *testing.F) {
	for _, s := range []string{"nix (Nix) 2.8.0\n", "nix (Lix, like Nix) 2.91.1", "nix (Nix) 2.26.3pre", "", "nix (Nix) 99999999999999999999.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, out string) {
		v, err := clientconfig.ParseVersion(out)
		if err != nil {
			return
		}
		if v.Name != "Nix" && v.Name != "Lix" || v.Version == "" {
			t.Fatalf("%q parsed as %+v", out, v)
		}
		again, err := clientconfig.ParseVersion("nix (" + v.Name + ") " + v.Version)
		if err != nil || again != v {
			t.Fatalf("%q: %+v reads back as %+v, %v", out, v, again, err)
		}
	})
}
