package build

import (
	"fmt"
	"strings"

	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// DerivedPath is something a client asks to have valid: a store path as
// it is (opaque), or outputs of a derivation, to be built if needed.
type DerivedPath struct {
	Path storepath.Path
	// Built means: build Path, a .drv, and make Outputs valid.
	Built bool
	// Outputs lists the wanted outputs of a built path; empty means all.
	Outputs []string
}

// ParseDerivedPath parses the form of Nix 2.4 and newer (worker protocol
// 1.30+): "path" is opaque, even for a .drv; "drv!out1,out2" and "drv!*"
// are built.
func ParseDerivedPath(s string) (DerivedPath, error) {
	return parseDerivedPath(s, false)
}

// ParseLegacyDerivedPath parses the older "path with outputs" form (the
// serve protocol, and worker protocol before 1.30): a bare .drv path means
// all of its outputs, built.
func ParseLegacyDerivedPath(s string) (DerivedPath, error) {
	return parseDerivedPath(s, true)
}

func parseDerivedPath(s string, legacy bool) (DerivedPath, error) {
	pathStr, outs, hasOutputs := strings.Cut(s, "!")
	p, err := storepath.Parse(pathStr)
	if err != nil {
		return DerivedPath{}, fmt.Errorf("derived path %q: %w", s, err)
	}
	d := DerivedPath{Path: p, Built: hasOutputs || (legacy && p.IsDerivation())}
	if !hasOutputs {
		return d, nil
	}
	if !p.IsDerivation() {
		return DerivedPath{}, publicerr.New("derived path %q names outputs of a path that is not a derivation", s)
	}
	if outs == "*" || (legacy && outs == "") {
		return d, nil
	}
	for _, o := range strings.Split(outs, ",") {
		if o == "" || o == "*" {
			return DerivedPath{}, publicerr.New("derived path %q has an invalid output name %q", s, o)
		}
		d.Outputs = append(d.Outputs, o)
	}
	return d, nil
}

// String renders the path as Nix 2.4+ writes it: "path", "drv!*" or
// "drv!out1,out2".
func (d DerivedPath) String() string {
	if !d.Built {
		return string(d.Path)
	}
	if len(d.Outputs) == 0 {
		return string(d.Path) + "!*"
	}
	return string(d.Path) + "!" + strings.Join(d.Outputs, ",")
}

// LegacyString renders the path in the older form, in which a bare .drv
// path means all outputs built.
func (d DerivedPath) LegacyString() (string, error) {
	switch {
	case !d.Built && d.Path.IsDerivation():
		return "", publicerr.New("%s: the legacy form cannot name a derivation file without building it", d.Path)
	case !d.Built || len(d.Outputs) == 0:
		return string(d.Path), nil
	}
	return string(d.Path) + "!" + strings.Join(d.Outputs, ","), nil
}

// Wants reports whether output name is among the wanted outputs.
func (d DerivedPath) Wants(name string) bool {
	if len(d.Outputs) == 0 {
		return true
	}
	for _, o := range d.Outputs {
		if o == name {
			return true
		}
	}
	return false
}
