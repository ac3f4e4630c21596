// Package derivation reads, writes and hashes Nix derivations.
//
// A derivation is stored as a .drv file in Nix's ATerm syntax:
//
//	Derive([("out","/nix/store/…-hello","","")],[("/nix/store/…-dep.drv",["out"])],
//	       ["/nix/store/…-src"],"x86_64-linux","/nix/store/…/bin/sh",["-c","…"],[("name","hello"),…])
//
// Parse accepts exactly what Nix 2.8 writes and nothing else, so for every
// input it accepts, Bytes gives the input back byte for byte. PathOf,
// HashModulo and OutputPaths compute the store paths Nix derives from a
// derivation: its own .drv path and the paths of its outputs.
//
// Basic is the BasicDerivation of the wire protocols: the derivation without
// its input derivations, as sent by the serve protocol's BuildDerivation
// (command 8) and the worker protocol's BuildDerivation (operation 36).
//
// The known answers in the tests (testdata/gen.sh) were produced by Nix 2.8.
package derivation

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// MaxSize bounds a derivation: the length of an ATerm accepted by Parse,
// and the number of wire bytes ReadBasic reads for one BasicDerivation.
const MaxSize = 64 << 20

// Extension is the suffix of a derivation's store path name.
const Extension = ".drv"

// ErrInvalid is wrapped by every error about a malformed or inconsistent
// derivation.
var ErrInvalid = publicerr.Sentinel("invalid derivation")

// ErrTooLarge is wrapped by errors for input above MaxSize.
var ErrTooLarge = publicerr.Sentinel("derivation too large")

// Output is one output of a derivation, with its fields exactly as they
// appear in the ATerm and on the wire:
//
//	input-addressed:    Path set,   HashAlgo "",            Hash ""
//	deferred:           Path "",    HashAlgo "",            Hash ""
//	fixed-output:       Path set,   HashAlgo "[r:]<algo>",  Hash <hex digest>
//	floating CA:        Path "",    HashAlgo "[r:]<algo>",  Hash ""
//	impure:             Path "",    HashAlgo "[r:]<algo>",  Hash "impure"
//
// "r:" means the output is hashed as a NAR (recursive) rather than as a flat
// file.
type Output struct {
	Path     string
	HashAlgo string
	Hash     string
}

// Kind returns the kind of derivation an output belongs to.
func (o Output) Kind() Kind {
	switch {
	case o.HashAlgo == "" && o.Path == "":
		return Deferred
	case o.HashAlgo == "":
		return InputAddressed
	case o.Hash == "impure":
		return Impure
	case o.Hash != "":
		return FixedOutput
	}
	return FloatingCA
}

// Recursive reports whether a content-addressed output is hashed as a NAR.
func (o Output) Recursive() bool { return strings.HasPrefix(o.HashAlgo, "r:") }

// Algo returns the hash algorithm of a content-addressed output.
func (o Output) Algo() (nixhash.Algo, error) {
	return nixhash.ParseAlgo(strings.TrimPrefix(o.HashAlgo, "r:"))
}

// FixedHash returns the content hash of a fixed-output output.
func (o Output) FixedHash() (nixhash.Hash, error) {
	a, err := o.Algo()
	if err != nil {
		return nixhash.Hash{}, fmt.Errorf("%w: output hash algorithm %q: %w", ErrInvalid, o.HashAlgo, err)
	}
	if len(o.Hash) != 2*a.Size() || !isLowerHex(o.Hash) {
		return nixhash.Hash{}, fmt.Errorf("%w: output hash %q is not %d lowercase hex digits of %s",
			ErrInvalid, o.Hash, 2*a.Size(), a)
	}
	return nixhash.ParseDigest(a, o.Hash)
}

// validate checks an output as Nix's parser does, but strictly: the fields
// must be one of the combinations listed on Output, store paths must be
// valid, and a fixed hash must be lowercase hex of the algorithm's size.
func (o Output) validate() error {
	if o.HashAlgo == "" {
		if o.Hash != "" {
			return fmt.Errorf("%w: output has hash %q but no hash algorithm", ErrInvalid, o.Hash)
		}
		if o.Path != "" {
			if _, err := storepath.Parse(o.Path); err != nil {
				return fmt.Errorf("output path: %w", err)
			}
		}
		return nil
	}
	if _, err := o.Algo(); err != nil {
		return fmt.Errorf("%w: output hash algorithm %q: %w", ErrInvalid, o.HashAlgo, err)
	}
	switch o.Hash {
	case "", "impure":
		if o.Path != "" {
			return fmt.Errorf("%w: content-addressed output with hash %q has path %q; want none",
				ErrInvalid, o.Hash, o.Path)
		}
		return nil
	}
	if _, err := o.FixedHash(); err != nil {
		return err
	}
	if _, err := storepath.Parse(o.Path); err != nil {
		return fmt.Errorf("fixed output path: %w", err)
	}
	return nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// validateOutputName checks an output name. Nix builds the output's store
// path name from it, so it must be a valid store path name.
func validateOutputName(name string) error {
	if err := storepath.ValidateName(name); err != nil {
		return fmt.Errorf("output name %q: %w", name, err)
	}
	return nil
}

// Derivation is a parsed .drv file.
type Derivation struct {
	Outputs   map[string]Output
	InputDrvs map[string][]string // .drv path -> wanted output names, sorted
	InputSrcs []string            // sorted
	Platform  string
	Builder   string
	Args      []string
	Env       map[string]string
}

// Kind classifies a derivation by its outputs.
type Kind uint8

// The kinds of derivation Nix 2.8 knows.
const (
	// Invalid is the kind of a derivation that has no outputs, mixes
	// outputs of different kinds, has a fixed output other than a single
	// "out", or has floating outputs with different hash algorithms.
	Invalid Kind = iota
	// InputAddressed outputs have paths computed from hashModulo.
	InputAddressed
	// Deferred outputs are input-addressed, but their paths are not known
	// yet because an input is content-addressed.
	Deferred
	// FixedOutput derivations have one output "out" with a known hash.
	FixedOutput
	// FloatingCA outputs are content-addressed with a hash known only
	// after the build (experimental ca-derivations).
	FloatingCA
	// Impure outputs are content-addressed and rebuilt every time
	// (experimental impure-derivations).
	Impure
)

var kindNames = [...]string{
	Invalid: "invalid", InputAddressed: "input-addressed", Deferred: "deferred",
	FixedOutput: "fixed-output", FloatingCA: "floating content-addressed", Impure: "impure",
}

// String names the kind.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// IsCA reports whether outputs of this kind are content-addressed, which is
// what Nix's daemon checks before building for an untrusted client.
func (k Kind) IsCA() bool { return k == FixedOutput || k == FloatingCA || k == Impure }

// HasKnownOutputPaths reports whether the output paths of such a derivation
// are known before it is built.
func (k Kind) HasKnownOutputPaths() bool { return k == InputAddressed || k == FixedOutput }

func kindOf(outputs map[string]Output) Kind {
	kind := Invalid
	floatingAlgo := ""
	for name, o := range outputs {
		k := o.Kind()
		if kind != Invalid && k != kind {
			return Invalid
		}
		kind = k
		switch k {
		case FixedOutput:
			if name != "out" || len(outputs) != 1 {
				return Invalid
			}
		case FloatingCA:
			algo := strings.TrimPrefix(o.HashAlgo, "r:")
			if floatingAlgo != "" && algo != floatingAlgo {
				return Invalid
			}
			floatingAlgo = algo
		}
	}
	return kind
}

// Kind classifies the derivation by its outputs, as Nix's
// BasicDerivation::type does.
func (d *Derivation) Kind() Kind { return kindOf(d.Outputs) }

// References returns the references of the .drv file: its input sources and
// input derivations, sorted and without duplicates. Outputs are not
// references.
func (d *Derivation) References() []storepath.Path {
	refs := make([]storepath.Path, 0, len(d.InputSrcs)+len(d.InputDrvs))
	for _, s := range d.InputSrcs {
		refs = append(refs, storepath.Path(s))
	}
	for p := range d.InputDrvs {
		refs = append(refs, storepath.Path(p))
	}
	slices.Sort(refs)
	return slices.Compact(refs)
}

// PathOf returns the store path Nix gives the .drv file of d: a text path
// named drvName+".drv" with d's ATerm as contents and its References.
func PathOf(drvName string, d *Derivation) (storepath.Path, error) {
	refs := d.References()
	for _, r := range refs {
		if _, err := storepath.Parse(string(r)); err != nil {
			return "", fmt.Errorf("derivation reference: %w", err)
		}
	}
	p, err := storepath.MakeText(drvName+Extension, d.Bytes(), refs)
	if err != nil {
		return "", fmt.Errorf("derivation path: %w", err)
	}
	return p, nil
}

// NameFromPath returns the derivation name of a .drv store path: its name
// without the ".drv" extension.
func NameFromPath(drvPath string) (string, error) {
	p, err := storepath.Parse(drvPath)
	if err != nil {
		return "", err
	}
	name, ok := strings.CutSuffix(p.Name(), Extension)
	if !ok || name == "" {
		return "", fmt.Errorf("%w: %q is not a derivation path", ErrInvalid, drvPath)
	}
	return name, nil
}

// Basic returns the BasicDerivation sent to a remote builder for d, whose
// .drv path has the name name+".drv". If inputSrcs is not nil it replaces
// d.InputSrcs, as Nix's build hook does with the input closure. The result
// shares no memory with d.
func (d *Derivation) Basic(name string, inputSrcs []string) *Basic {
	if inputSrcs == nil {
		inputSrcs = d.InputSrcs
	}
	srcs := slices.Clone(inputSrcs)
	slices.Sort(srcs)
	b := &Basic{
		Name:      name,
		Outputs:   make(map[string]Output, len(d.Outputs)),
		InputSrcs: append([]string{}, slices.Compact(srcs)...),
		Platform:  d.Platform,
		Builder:   d.Builder,
		Args:      append([]string{}, d.Args...),
		Env:       make(map[string]string, len(d.Env)),
	}
	for k, v := range d.Outputs {
		b.Outputs[k] = v
	}
	for k, v := range d.Env {
		b.Env[k] = v
	}
	return b
}

// StructuredAttrs returns the attributes of a derivation that uses
// __structuredAttrs, decoded from its "__json" environment variable, and
// whether it has them. See DecodeStructuredAttrs.
func (d *Derivation) StructuredAttrs() (map[string]any, bool) {
	attrs, ok, err := DecodeStructuredAttrs(d.Env)
	return attrs, ok && err == nil
}

// DecodeStructuredAttrs decodes the "__json" variable of a derivation
// environment, which holds all attributes of a derivation that sets
// __structuredAttrs = true. present is false if there is no such variable.
// Numbers are decoded as json.Number so that large integers keep their
// value.
func DecodeStructuredAttrs(env map[string]string) (attrs map[string]any, present bool, err error) {
	s, ok := env["__json"]
	if !ok {
		return nil, false, nil
	}
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	if err := dec.Decode(&attrs); err != nil {
		return nil, true, fmt.Errorf("%w: structured attributes: %w", ErrInvalid, err)
	}
	if attrs == nil {
		return nil, true, fmt.Errorf("%w: structured attributes are null, want an object", ErrInvalid)
	}
	if _, err := dec.Token(); err == nil {
		return nil, true, fmt.Errorf("%w: structured attributes: data after the object", ErrInvalid)
	}
	return attrs, true, nil
}

// sortedKeys returns the keys of m in byte order, the order of Nix's
// std::map<std::string, …>.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// sortedSet returns a sorted copy of ss without duplicates.
func sortedSet(ss []string) []string {
	out := slices.Clone(ss)
	slices.Sort(out)
	return slices.Compact(out)
}
