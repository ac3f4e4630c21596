package derivation

import (
	"fmt"
	"slices"

	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// Basic is a BasicDerivation: a derivation without its input derivations,
// as the serve protocol's BuildDerivation (command 8) and the worker
// protocol's BuildDerivation (operation 36) send it after the .drv path.
//
// On the wire it is, in wire strings and little-endian u64s:
//
//	u64 n, n × (name, path, hashAlgo, hash)   outputs, sorted by name
//	u64 n, n × path                           input sources, sorted
//	platform, builder
//	u64 n, n × arg                            arguments
//	u64 n, n × (key, value)                   environment, sorted by key
//
// The output fields are those of the ATerm (see Output).
type Basic struct {
	Name      string // the .drv path's name without ".drv"; not on the wire
	Outputs   map[string]Output
	InputSrcs []string // sorted
	Platform  string
	Builder   string
	Args      []string
	Env       map[string]string
}

// Field bounds for ReadBasic, on top of the MaxSize budget for the whole
// BasicDerivation.
const (
	maxOutputs     = 1024
	maxHashAlgoLen = 16  // "r:sha512" is 8
	maxHashLen     = 128 // a hex SHA-512
)

// basicReader reads wire strings while charging them to a byte budget.
type basicReader struct {
	r      *wire.Reader
	budget uint64
}

func (br *basicReader) uint64(what string) (uint64, error) {
	if br.budget < 8 {
		return 0, fmt.Errorf("%w: %s: basic derivation exceeds %d bytes", ErrTooLarge, what, MaxSize)
	}
	v, err := br.r.Uint64()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	br.budget -= 8
	return v, nil
}

// count reads a list or map length. Every element costs at least 8 bytes,
// so the budget bounds it too.
func (br *basicReader) count(what string, max uint64) (int, error) {
	n, err := br.uint64(what + " count")
	if err != nil {
		return 0, err
	}
	if n > max {
		return 0, fmt.Errorf("%w: %d %s, the limit is %d", ErrInvalid, n, what, max)
	}
	if n > br.budget/8 {
		return 0, fmt.Errorf("%w: %d %s: basic derivation exceeds %d bytes", ErrTooLarge, n, what, MaxSize)
	}
	return int(n), nil
}

func (br *basicReader) string(what string, max uint64) (string, error) {
	if br.budget < 8 {
		return "", fmt.Errorf("%w: %s: basic derivation exceeds %d bytes", ErrTooLarge, what, MaxSize)
	}
	limit := min(max, br.budget-8)
	s, err := br.r.String(limit)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	br.budget -= 8 + uint64(len(s)) + uint64(wire.Padding(uint64(len(s))))
	return s, nil
}

// ReadBasic reads a BasicDerivation and gives it the name name (the .drv
// path's name without ".drv"). It reads at most MaxSize bytes, and is as
// strict as Parse: output names and store paths must be valid, outputs
// must have one of the field combinations described on Output, and
// outputs, input sources and environment variables must be sorted without
// duplicates, as Nix writes them.
func ReadBasic(r *wire.Reader, name string) (*Basic, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: basic derivation needs a name", ErrInvalid)
	}
	if err := storepath.ValidateName(name + Extension); err != nil {
		return nil, fmt.Errorf("basic derivation name: %w", err)
	}
	br := &basicReader{r: r, budget: MaxSize}
	b := &Basic{
		Name:      name,
		Outputs:   map[string]Output{},
		InputSrcs: []string{},
		Args:      []string{},
		Env:       map[string]string{},
	}
	if err := br.read(b); err != nil {
		return nil, fmt.Errorf("basic derivation %s: %w", name, err)
	}
	return b, nil
}

func (br *basicReader) read(b *Basic) error {
	n, err := br.count("outputs", maxOutputs)
	if err != nil {
		return err
	}
	prev := ""
	for i := 0; i < n; i++ {
		name, err := br.string("output name", storepath.MaxNameLen)
		if err != nil {
			return err
		}
		if err := validateOutputName(name); err != nil {
			return err
		}
		if i > 0 && name <= prev {
			return sortError("output", name, prev)
		}
		prev = name
		var o Output
		if o.Path, err = br.string("path of output "+name, wire.MaxPathLen); err != nil {
			return err
		}
		if o.HashAlgo, err = br.string("hash algorithm of output "+name, maxHashAlgoLen); err != nil {
			return err
		}
		if o.Hash, err = br.string("hash of output "+name, maxHashLen); err != nil {
			return err
		}
		if err := o.validate(); err != nil {
			return fmt.Errorf("output %q: %w", name, err)
		}
		b.Outputs[name] = o
	}

	if n, err = br.count("input sources", wire.MaxListLen); err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		path, err := br.string("input source", wire.MaxPathLen)
		if err != nil {
			return err
		}
		if _, err := storepath.Parse(path); err != nil {
			return fmt.Errorf("input source: %w", err)
		}
		if i > 0 && path <= prev {
			return sortError("input source", path, prev)
		}
		prev = path
		b.InputSrcs = append(b.InputSrcs, path)
	}

	if b.Platform, err = br.string("platform", MaxSize); err != nil {
		return err
	}
	if b.Builder, err = br.string("builder", MaxSize); err != nil {
		return err
	}

	if n, err = br.count("arguments", wire.MaxListLen); err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		arg, err := br.string(fmt.Sprintf("argument %d", i), MaxSize)
		if err != nil {
			return err
		}
		b.Args = append(b.Args, arg)
	}

	if n, err = br.count("environment variables", wire.MaxListLen); err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		key, err := br.string("environment variable name", MaxSize)
		if err != nil {
			return err
		}
		if i > 0 && key <= prev {
			return sortError("environment variable", key, prev)
		}
		prev = key
		value, err := br.string("value of environment variable "+key, MaxSize)
		if err != nil {
			return err
		}
		b.Env[key] = value
	}
	return nil
}

func sortError(what, s, prev string) error {
	if s == prev {
		return fmt.Errorf("%w: duplicate %s %q", ErrInvalid, what, s)
	}
	return fmt.Errorf("%w: %s %q is out of order after %q; Nix writes them sorted", ErrInvalid, what, s, prev)
}

// Write writes b in the wire form ReadBasic reads, sorting outputs, input
// sources and environment variables as Nix does and dropping duplicate
// input sources. It does not flush w.
func (b *Basic) Write(w *wire.Writer) error {
	w.Uint64(uint64(len(b.Outputs)))
	for _, name := range sortedKeys(b.Outputs) {
		o := b.Outputs[name]
		w.String(name)
		w.String(o.Path)
		w.String(o.HashAlgo)
		w.String(o.Hash)
	}
	w.Strings(sortedSet(b.InputSrcs))
	w.String(b.Platform)
	w.String(b.Builder)
	w.Strings(b.Args)
	w.Uint64(uint64(len(b.Env)))
	for _, key := range sortedKeys(b.Env) {
		w.String(key)
		w.String(b.Env[key])
	}
	if err := w.Err(); err != nil {
		return fmt.Errorf("writing basic derivation %s: %w", b.Name, err)
	}
	return nil
}

// Kind classifies the derivation by its outputs, as Derivation.Kind does.
func (b *Basic) Kind() Kind { return kindOf(b.Outputs) }

// OutputPaths returns the paths of the outputs whose path is known and
// valid: all outputs of an input-addressed or fixed-output derivation, none
// of a floating, deferred or impure one.
func (b *Basic) OutputPaths() map[string]storepath.Path {
	paths := make(map[string]storepath.Path, len(b.Outputs))
	for name, o := range b.Outputs {
		if p, err := storepath.Parse(o.Path); err == nil {
			paths[name] = p
		}
	}
	return paths
}

// StructuredAttrs returns the attributes of a derivation that uses
// __structuredAttrs, decoded from the "__json" environment variable, and
// whether there are any. A malformed "__json" counts as none; use
// DecodeStructuredAttrs to see the error.
func (b *Basic) StructuredAttrs() (map[string]any, bool) {
	attrs, ok, err := DecodeStructuredAttrs(b.Env)
	return attrs, ok && err == nil
}

// Derivation returns b as a Derivation with no input derivations, the form
// in which a builder that receives a BasicDerivation hashes it (for
// example for the ids of the realisations it reports).
func (b *Basic) Derivation() *Derivation {
	d := &Derivation{
		Outputs:   make(map[string]Output, len(b.Outputs)),
		InputDrvs: map[string][]string{},
		InputSrcs: slices.Clone(b.InputSrcs),
		Platform:  b.Platform,
		Builder:   b.Builder,
		Args:      slices.Clone(b.Args),
		Env:       make(map[string]string, len(b.Env)),
	}
	for k, v := range b.Outputs {
		d.Outputs[k] = v
	}
	for k, v := range b.Env {
		d.Env[k] = v
	}
	return d
}
