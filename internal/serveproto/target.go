package serveproto

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// ParseTarget parses "path", "drvPath!out1,out2" or "drvPath!*".
func ParseTarget(s string) (Target, error) {
	pathStr, outs, hasOutputs := strings.Cut(s, "!")
	p, err := storepath.Parse(pathStr)
	if err != nil {
		return Target{}, fmt.Errorf("build target %q: %w", s, err)
	}
	t := Target{Path: p}
	if !hasOutputs {
		return t, nil
	}
	if !p.IsDerivation() {
		return Target{}, fmt.Errorf("build target %q names outputs of a path that is not a derivation", s)
	}
	if outs == "*" {
		return t, nil
	}
	for _, o := range strings.Split(outs, ",") {
		if o == "" {
			return Target{}, fmt.Errorf("build target %q has an empty output name", s)
		}
		t.Outputs = append(t.Outputs, o)
	}
	return t, nil
}

// String renders the target as Nix writes it.
func (t Target) String() string {
	if len(t.Outputs) == 0 {
		if t.Path.IsDerivation() {
			return string(t.Path) + "!*"
		}
		return string(t.Path)
	}
	return string(t.Path) + "!" + strings.Join(t.Outputs, ",")
}

// realisation is the JSON Nix sends for each built output.
type realisation struct {
	DependentRealisations map[string]string `json:"dependentRealisations"`
	ID                    string            `json:"id"`
	OutPath               string            `json:"outPath"`
	Signatures            []string          `json:"signatures"`
}

// writeBuiltOutputs writes the DrvOutputs of a build: per output, the id
// "sha256:<hashModulo>!<name>" and the realisation JSON. The hash is that of
// the BasicDerivation as received, as stock nix-store --serve computes it.
func writeBuiltOutputs(w *wire.Writer, drv *derivation.Basic, res *build.Result) error {
	if !res.Status.Success() || len(res.Outputs) == 0 {
		return w.Uint64(0)
	}
	h, err := derivation.HashModulo(drv.Derivation(), nil)
	if err != nil {
		return w.Uint64(0) // clients read builtOutputs only for CA derivations
	}
	names := make([]string, 0, len(res.Outputs))
	for n := range res.Outputs {
		names = append(names, n)
	}
	sort.Strings(names)
	w.Uint64(uint64(len(names)))
	for _, n := range names {
		id := "sha256:" + h.Hex() + "!" + n
		js, err := json.Marshal(realisation{
			DependentRealisations: map[string]string{},
			ID:                    id,
			OutPath:               res.Outputs[n].Base(),
			Signatures:            []string{},
		})
		if err != nil {
			return err
		}
		w.String(id)
		w.Bytes(js)
	}
	return w.Err()
}
