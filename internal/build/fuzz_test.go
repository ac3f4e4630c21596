package build_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
)

// FuzzParseDerivedPath checks both string forms of derived paths, which
// clients send to have things built: neither parser panics; whatever one
// accepts names a valid store path, wants outputs only of a derivation,
// never an empty or "*" output, no more outputs than the input has bytes,
// and renders (String, LegacyString) to a string its parser reads back as
// the same path. A path both forms accept alike renders alike.
func FuzzParseDerivedPath(f *testing.F) {
	drv := "/nix/store/" + strings.Repeat("d", 32) + "-x.drv"
	src := "/nix/store/" + strings.Repeat("s", 32) + "-src"
	for _, s := range []string{
		src, drv, drv + "!*", drv + "!out", drv + "!out,dev", drv + "!", drv + "!,",
		drv + "!out,,dev", drv + "!*,out", src + "!out", drv + "!a!b", "/nix/store/x!out", "!",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		check := func(form string, d build.DerivedPath) {
			if d.Path == "" || (!d.Built && len(d.Outputs) > 0) || (d.Built && !d.Path.IsDerivation()) {
				t.Fatalf("%s %q: %+v", form, s, d)
			}
			if len(d.Outputs) > len(s) {
				t.Fatalf("%s %q: %d outputs", form, s, len(d.Outputs))
			}
			for _, o := range d.Outputs {
				if o == "" || o == "*" || strings.Contains(o, ",") {
					t.Fatalf("%s %q: output %q", form, s, o)
				}
			}
		}
		d, err := build.ParseDerivedPath(s)
		if err == nil {
			check("new form", d)
			again, err := build.ParseDerivedPath(d.String())
			if err != nil || !reflect.DeepEqual(again, d) {
				t.Fatalf("%q parses as %+v, renders as %q, which parses as %+v, %v", s, d, d, again, err)
			}
		}
		l, lerr := build.ParseLegacyDerivedPath(s)
		if lerr == nil {
			check("legacy form", l)
			ls, err := l.LegacyString()
			if err != nil {
				t.Fatalf("legacy %q parses as %+v, which has no legacy form: %v", s, l, err)
			}
			again, err := build.ParseLegacyDerivedPath(ls)
			if err != nil || !reflect.DeepEqual(again, l) {
				t.Fatalf("legacy %q parses as %+v, renders as %q, which parses as %+v, %v", s, l, ls, again, err)
			}
		}
		if err == nil && lerr == nil && reflect.DeepEqual(d, l) && d.String() != l.String() {
			t.Fatalf("%q: the same path renders as %q and %q", s, d, l)
		}
	})
}
