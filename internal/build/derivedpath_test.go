package build_test

import (
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

func TestDerivedPath(t *testing.T) {
	drv := "/nix/store/" + strings.Repeat("d", 32) + "-x.drv"
	src := "/nix/store/" + strings.Repeat("s", 32) + "-src"
	for _, tc := range []struct {
		in      string
		legacy  bool
		built   bool
		outputs []string
		str     string
	}{
		{src, false, false, nil, src},
		{drv, false, false, nil, drv},
		{drv, true, true, nil, drv + "!*"},
		{drv + "!*", false, true, nil, drv + "!*"},
		{drv + "!out", false, true, []string{"out"}, drv + "!out"},
		{drv + "!out,dev", true, true, []string{"out", "dev"}, drv + "!out,dev"},
	} {
		parse := build.ParseDerivedPath
		if tc.legacy {
			parse = build.ParseLegacyDerivedPath
		}
		d, err := parse(tc.in)
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if d.Built != tc.built || strings.Join(d.Outputs, ",") != strings.Join(tc.outputs, ",") || d.String() != tc.str {
			t.Errorf("%s (legacy %v): %+v renders %s", tc.in, tc.legacy, d, d)
		}
	}
	for _, bad := range []string{"", "x", src + "!out", drv + "!", drv + "!out,", drv + "!,", "/nix/store/short!out"} {
		if d, err := build.ParseDerivedPath(bad); err == nil {
			t.Errorf("%q accepted as %+v", bad, d)
		}
	}
	if _, err := (build.DerivedPath{Path: storepath.Path(drv)}).LegacyString(); err == nil {
		t.Error("an opaque .drv has no legacy form")
	}
}
