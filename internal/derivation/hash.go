package derivation

import (
	"fmt"
	"sync"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Resolver loads the derivation stored at a .drv path.
type Resolver func(drvPath string) (*Derivation, error)

// Hasher computes Nix's hashDerivationModulo, loading input derivations
// with a Resolver and remembering the hash of every input derivation it has
// seen, as Nix's drvHashes cache does. It is safe for concurrent use; calls
// are serialised, and the resolver is called with the Hasher locked.
type Hasher struct {
	resolve Resolver

	mu       sync.Mutex
	memo     map[string]drvHash
	visiting map[string]bool
}

// drvHash is Nix's DrvHash: one hash per output, and whether it depends on
// output paths that are not known yet.
type drvHash struct {
	outputs  map[string]nixhash.Hash
	deferred bool
}

// NewHasher returns a Hasher that loads input derivations with resolve.
func NewHasher(resolve Resolver) *Hasher {
	return &Hasher{resolve: resolve, memo: map[string]drvHash{}, visiting: map[string]bool{}}
}

// HashModulo computes the hashDerivationModulo of d with its outputs masked,
// the hash Nix calls staticOutputHashes and uses to compute input-addressed
// output paths (and as the "sha256:<hex>!<output>" id of a realisation).
// resolve loads input derivations; it is not called for a fixed-output
// derivation.
//
// For a fixed-output derivation the result is the SHA-256 of
// "fixed:out:<hashAlgo>:<hash>:<out path>", using the output path written
// in d. Otherwise it is the SHA-256 of d's ATerm with output paths and the
// environment variables named after outputs blanked, and each input
// derivation path replaced by the hex hash of that input (computed without
// masking).
func HashModulo(d *Derivation, resolve Resolver) (nixhash.Hash, error) {
	return NewHasher(resolve).HashModulo(d)
}

// OutputPaths computes the output paths of the input-addressed or
// fixed-output derivation d named drvName (its .drv path's name without
// ".drv"). resolve loads input derivations; it is not called for a
// fixed-output derivation. Other kinds of derivation have no output paths
// before they are built, and give an error.
func OutputPaths(drvName string, d *Derivation, resolve Resolver) (map[string]storepath.Path, error) {
	return NewHasher(resolve).OutputPaths(drvName, d)
}

// HashModulo is the package-level HashModulo, sharing h's memory of input
// derivations.
func (h *Hasher) HashModulo(d *Derivation) (nixhash.Hash, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	dh, err := h.modulo(d, "", true)
	if err != nil {
		return nixhash.Hash{}, err
	}
	if hash, ok := dh.outputs["out"]; ok {
		return hash, nil
	}
	for _, hash := range dh.outputs { // all outputs of a non-fixed derivation share it
		return hash, nil
	}
	return nixhash.Hash{}, fmt.Errorf("%w: derivation has no outputs", ErrInvalid)
}

// OutputPaths is the package-level OutputPaths, sharing h's memory of input
// derivations.
func (h *Hasher) OutputPaths(drvName string, d *Derivation) (map[string]storepath.Path, error) {
	if drvName == "" {
		return nil, fmt.Errorf("%w: output paths need the derivation's name", ErrInvalid)
	}
	if err := storepath.ValidateName(drvName + Extension); err != nil {
		return nil, fmt.Errorf("derivation name: %w", err)
	}
	switch kind := d.Kind(); kind {
	case FixedOutput:
		p, err := fixedOutputPath(drvName, d.Outputs["out"])
		if err != nil {
			return nil, err
		}
		return map[string]storepath.Path{"out": p}, nil
	case InputAddressed:
	default:
		return nil, fmt.Errorf("%w: a %s derivation has no output paths before it is built", ErrInvalid, kind)
	}
	h.mu.Lock()
	dh, err := h.modulo(d, drvName, true)
	h.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if dh.deferred {
		return nil, fmt.Errorf("%w: input-addressed derivation %s depends on content-addressed outputs, so its output paths are deferred",
			ErrInvalid, drvName)
	}
	paths := make(map[string]storepath.Path, len(d.Outputs))
	for name := range d.Outputs {
		p, err := storepath.MakeOutput(name, dh.outputs[name], drvName)
		if err != nil {
			return nil, fmt.Errorf("output %q of %s: %w", name, drvName, err)
		}
		paths[name] = p
	}
	return paths, nil
}

// Verify checks that the output paths written in d, and the environment
// variables named after its outputs, are the ones Nix computes for a
// derivation named drvName. It accepts any derivation whose output paths
// are not known in advance, as long as its kind is valid.
func (h *Hasher) Verify(drvName string, d *Derivation) error {
	kind := d.Kind()
	if kind == Invalid {
		return fmt.Errorf("%w: %s has no outputs or mixes kinds of output", ErrInvalid, drvName)
	}
	if !kind.HasKnownOutputPaths() {
		return nil
	}
	paths, err := h.OutputPaths(drvName, d)
	if err != nil {
		return err
	}
	for name, p := range paths {
		if got := d.Outputs[name].Path; got != string(p) {
			return fmt.Errorf("%w: output %q of %s is %s, but Nix computes %s", ErrInvalid, name, drvName, got, p)
		}
		if v, ok := d.Env[name]; ok && v != string(p) {
			return fmt.Errorf("%w: environment variable %q of %s is %q, want output path %s", ErrInvalid, name, drvName, v, p)
		}
	}
	return nil
}

// fixedOutputPath computes the path of the output of a fixed-output
// derivation named drvName.
func fixedOutputPath(drvName string, o Output) (storepath.Path, error) {
	hash, err := o.FixedHash()
	if err != nil {
		return "", err
	}
	p, err := storepath.MakeFixedOutput(storepath.OutputName(drvName, "out"), o.Recursive(), hash, nil, false)
	if err != nil {
		return "", fmt.Errorf("fixed output of %s: %w", drvName, err)
	}
	return p, nil
}

// impureOutputHash is the hash Nix gives every output of an impure
// derivation.
var impureOutputHash = nixhash.SHA256Of([]byte("impure"))

// modulo is Nix's hashDerivationModulo. name is the derivation's name, or
// "" when unknown, in which case a fixed output's path is taken from d.
// h.mu must be held.
func (h *Hasher) modulo(d *Derivation, name string, mask bool) (drvHash, error) {
	kind := d.Kind()
	switch kind {
	case Invalid:
		return drvHash{}, fmt.Errorf("%w: derivation has no outputs, or mixes kinds of output", ErrInvalid)
	case FixedOutput:
		o := d.Outputs["out"]
		var path string
		if name != "" {
			p, err := fixedOutputPath(name, o)
			if err != nil {
				return drvHash{}, err
			}
			path = string(p)
		} else {
			if _, err := o.FixedHash(); err != nil {
				return drvHash{}, err
			}
			if _, err := storepath.Parse(o.Path); err != nil {
				return drvHash{}, fmt.Errorf("fixed output path: %w", err)
			}
			path = o.Path
		}
		fp := "fixed:out:" + o.HashAlgo + ":" + o.Hash + ":" + path
		return drvHash{outputs: map[string]nixhash.Hash{"out": nixhash.SHA256Of([]byte(fp))}}, nil
	case Impure:
		dh := drvHash{outputs: make(map[string]nixhash.Hash, len(d.Outputs)), deferred: true}
		for o := range d.Outputs {
			dh.outputs[o] = impureOutputHash
		}
		return dh, nil
	}

	deferred := kind == FloatingCA
	inputs := make(map[string][]string, len(d.InputDrvs))
	for _, drvPath := range sortedKeys(d.InputDrvs) {
		in, err := h.input(drvPath)
		if err != nil {
			return drvHash{}, err
		}
		deferred = deferred || in.deferred
		for _, out := range d.InputDrvs[drvPath] {
			hash, ok := in.outputs[out]
			if !ok {
				return drvHash{}, fmt.Errorf("%w: input derivation %s has no output %q", ErrInvalid, drvPath, out)
			}
			key := hash.Hex()
			inputs[key] = append(inputs[key], out)
		}
	}
	hash := nixhash.SHA256Of(d.appendATerm(make([]byte, 0, d.sizeHint()), mask, inputs))
	dh := drvHash{outputs: make(map[string]nixhash.Hash, len(d.Outputs)), deferred: deferred}
	for o := range d.Outputs {
		dh.outputs[o] = hash
	}
	return dh, nil
}

// input returns the unmasked hashDerivationModulo of an input derivation,
// as Nix's pathDerivationModulo does. h.mu must be held.
func (h *Hasher) input(drvPath string) (drvHash, error) {
	if dh, ok := h.memo[drvPath]; ok {
		return dh, nil
	}
	if h.visiting[drvPath] {
		return drvHash{}, fmt.Errorf("%w: input derivation %s depends on itself", ErrInvalid, drvPath)
	}
	name, err := NameFromPath(drvPath)
	if err != nil {
		return drvHash{}, fmt.Errorf("input derivation: %w", err)
	}
	if h.resolve == nil {
		return drvHash{}, fmt.Errorf("input derivation %s: no resolver to load it", drvPath)
	}
	d, err := h.resolve(drvPath)
	if err != nil {
		return drvHash{}, fmt.Errorf("loading input derivation %s: %w", drvPath, err)
	}
	if d == nil {
		return drvHash{}, fmt.Errorf("loading input derivation %s: resolver returned nothing", drvPath)
	}
	h.visiting[drvPath] = true
	dh, err := h.modulo(d, name, false)
	delete(h.visiting, drvPath)
	if err != nil {
		return drvHash{}, fmt.Errorf("input derivation %s: %w", drvPath, err)
	}
	h.memo[drvPath] = dh
	return dh, nil
}
