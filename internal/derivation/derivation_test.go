package derivation_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// The fixtures under testdata were made by the real Nix 2.8.0; see
// testdata/gen.sh.

// fixture is one .drv file written by nix-instantiate.
type fixture struct {
	attr string // attribute in drvs.nix ("capture.x" for capture.nix), or "" for none
	path string // its store path
	name string // derivation name
	data []byte
}

func loadFixtures(t testing.TB) []fixture {
	t.Helper()
	attrs := map[string]string{}
	index, err := os.ReadFile("testdata/drvs.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(index)), "\n") {
		attr, path, _ := strings.Cut(line, " ")
		attrs[path] = attr
	}
	entries, err := os.ReadDir("testdata/drv")
	if err != nil {
		t.Fatal(err)
	}
	var out []fixture
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join("testdata/drv", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		path := storepath.Dir + "/" + e.Name()
		name, err := derivation.NameFromPath(path)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fixture{attr: attrs[path], path: path, name: name, data: data})
	}
	if len(out) < 25 {
		t.Fatalf("only %d fixtures; run testdata/gen.sh", len(out))
	}
	return out
}

func fixtureByAttr(t testing.TB, attr string) fixture {
	t.Helper()
	for _, f := range loadFixtures(t) {
		if f.attr == attr {
			return f
		}
	}
	t.Fatalf("no fixture for %s", attr)
	return fixture{}
}

func mustParse(t testing.TB, data []byte) *derivation.Derivation {
	t.Helper()
	d, err := derivation.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// resolver loads input derivations from testdata/drv and counts the loads.
func resolver(loads map[string]int) derivation.Resolver {
	return func(drvPath string) (*derivation.Derivation, error) {
		if loads != nil {
			loads[drvPath]++
		}
		data, err := os.ReadFile(filepath.Join("testdata/drv", strings.TrimPrefix(drvPath, storepath.Dir+"/")))
		if err != nil {
			return nil, err
		}
		return derivation.Parse(data)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, f := range loadFixtures(t) {
		d := mustParse(t, f.data)
		if got := d.Bytes(); !bytes.Equal(got, f.data) {
			t.Errorf("%s: Bytes differs from the file written by Nix:\n got %s\nwant %s", f.path, got, f.data)
		}
		if d.String() != string(f.data) {
			t.Errorf("%s: String differs from Bytes", f.path)
		}
	}
}

func TestPathOf(t *testing.T) {
	for _, f := range loadFixtures(t) {
		got, err := derivation.PathOf(f.name, mustParse(t, f.data))
		if err != nil {
			t.Errorf("%s: %v", f.path, err)
		} else if string(got) != f.path {
			t.Errorf("PathOf = %s, Nix wrote %s", got, f.path)
		}
	}
}

// showDerivation is the JSON of `nix show-derivation` (Nix 2.8).
type showDerivation struct {
	Outputs map[string]struct {
		Path     string `json:"path"`
		HashAlgo string `json:"hashAlgo"`
		Hash     string `json:"hash"`
		Impure   bool   `json:"impure"`
	} `json:"outputs"`
	InputSrcs []string            `json:"inputSrcs"`
	InputDrvs map[string][]string `json:"inputDrvs"`
	System    string              `json:"system"`
	Builder   string              `json:"builder"`
	Args      []string            `json:"args"`
	Env       map[string]string   `json:"env"`
}

// TestShowDerivation compares every parsed field, escapes decoded, with
// what Nix's own parser reports.
func TestShowDerivation(t *testing.T) {
	for _, f := range loadFixtures(t) {
		raw, err := os.ReadFile(filepath.Join("testdata/json", strings.TrimSuffix(filepath.Base(f.path), ".drv")+".json"))
		if err != nil {
			t.Fatal(err)
		}
		var all map[string]showDerivation
		if err := json.Unmarshal(raw, &all); err != nil {
			t.Fatal(err)
		}
		js, ok := all[f.path]
		if !ok || len(all) != 1 {
			t.Fatalf("%s: JSON does not describe it", f.path)
		}
		want := &derivation.Derivation{
			Outputs:   map[string]derivation.Output{},
			InputDrvs: js.InputDrvs,
			InputSrcs: js.InputSrcs,
			Platform:  js.System,
			Builder:   js.Builder,
			Args:      js.Args,
			Env:       js.Env,
		}
		for name, o := range js.Outputs {
			out := derivation.Output{Path: o.Path, HashAlgo: o.HashAlgo, Hash: o.Hash}
			if o.Impure {
				out.Hash = "impure"
			}
			want.Outputs[name] = out
		}
		if got := mustParse(t, f.data); !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n parsed %#v\nNix says %#v", f.path, got, want)
		}
	}
}

func TestKind(t *testing.T) {
	want := map[string]derivation.Kind{
		"ca": derivation.FloatingCA, "deferred": derivation.Deferred, "impure": derivation.Impure,
		"fetched": derivation.FixedOutput, "twin-a": derivation.FixedOutput, "twin-b": derivation.FixedOutput,
		"capture.fixed": derivation.FixedOutput,
	}
	for _, f := range loadFixtures(t) {
		w, ok := want[f.attr]
		if !ok {
			w = derivation.InputAddressed
			if strings.HasPrefix(f.attr, "fixed-") {
				w = derivation.FixedOutput
			}
		}
		d := mustParse(t, f.data)
		if got := d.Kind(); got != w {
			t.Errorf("%s (%s): Kind = %v, want %v", f.path, f.attr, got, w)
		}
		if got := d.Basic(f.name, nil).Kind(); got != w {
			t.Errorf("%s (%s): Basic.Kind = %v, want %v", f.path, f.attr, got, w)
		}
	}
}

// TestOutputPaths checks the output paths Nix wrote into every
// input-addressed and fixed-output .drv. Input-addressed paths depend on
// hashDerivationModulo of the whole closure, including the rule that a
// fixed-output input contributes only its output hash and path.
func TestOutputPaths(t *testing.T) {
	checked := 0
	for _, f := range loadFixtures(t) {
		d := mustParse(t, f.data)
		paths, err := derivation.OutputPaths(f.name, d, resolver(nil))
		if !d.Kind().HasKnownOutputPaths() {
			if err == nil {
				t.Errorf("%s: OutputPaths of a %v derivation succeeded", f.path, d.Kind())
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", f.path, err)
			continue
		}
		if len(paths) != len(d.Outputs) {
			t.Errorf("%s: %d paths for %d outputs", f.path, len(paths), len(d.Outputs))
		}
		for name, o := range d.Outputs {
			if string(paths[name]) != o.Path {
				t.Errorf("%s: output %s = %s, Nix computed %s", f.path, name, paths[name], o.Path)
			}
		}
		if err := derivation.NewHasher(resolver(nil)).Verify(f.name, d); err != nil {
			t.Errorf("%s: Verify: %v", f.path, err)
		}
		checked++
	}
	if checked < 20 {
		t.Errorf("only %d derivations checked", checked)
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	for _, attr := range []string{"chain-3", "fixed-recursive-sha1", "uses-fixed"} {
		f := fixtureByAttr(t, attr)
		d := mustParse(t, f.data)
		h := derivation.NewHasher(resolver(nil))
		d.Env["extra"] = "changed"
		if err := h.Verify(f.name, d); attr != "fixed-recursive-sha1" && err == nil {
			t.Errorf("%s: Verify accepted a changed environment", attr)
		}
		d = mustParse(t, f.data)
		o := d.Outputs["out"]
		o.Path = f.path[:len(f.path)-len(".drv")] + "-x"
		d.Outputs["out"] = o
		if err := h.Verify(f.name, d); err == nil || !errors.Is(err, derivation.ErrInvalid) {
			t.Errorf("%s: Verify of a wrong output path: %v", attr, err)
		}
	}
}

func TestHashModuloFixedOutput(t *testing.T) {
	f := fixtureByAttr(t, "fixed-recursive-sha1")
	d := mustParse(t, f.data)
	o := d.Outputs["out"]
	got, err := derivation.HashModulo(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := nixhash.SHA256Of([]byte("fixed:out:r:sha1:" + o.Hash + ":" + o.Path))
	if !got.Equal(want) {
		t.Errorf("HashModulo = %s, want %s", got.Hex(), want.Hex())
	}
	if o.HashAlgo != "r:sha1" {
		t.Errorf("hashAlgo = %q, want r:sha1", o.HashAlgo)
	}
}

// TestHashModuloInputAddressed checks that HashModulo is the hash whose
// output paths Nix wrote, and that the Hasher loads a shared input once.
func TestHashModuloInputAddressed(t *testing.T) {
	f := fixtureByAttr(t, "chain-3")
	d := mustParse(t, f.data)
	loads := map[string]int{}
	h := derivation.NewHasher(resolver(loads))
	hm, err := h.HashModulo(d)
	if err != nil {
		t.Fatal(err)
	}
	p, err := storepath.MakeOutput("out", hm, f.name)
	if err != nil {
		t.Fatal(err)
	}
	if string(p) != d.Outputs["out"].Path {
		t.Errorf("output path from HashModulo = %s, Nix wrote %s", p, d.Outputs["out"].Path)
	}
	chain1 := fixtureByAttr(t, "chain-1").path
	if loads[chain1] != 1 || len(loads) != 2 {
		t.Errorf("loads = %v, want chain-1 and chain-2 once each", loads)
	}
	if _, err := h.HashModulo(d); err != nil || loads[chain1] != 1 {
		t.Errorf("second HashModulo reloaded inputs: %v, %v", loads, err)
	}
}

// TestHashModuloMergesEqualInputs: twin-a and twin-b are different
// derivations with the same fixed output, so Nix merges them into one
// input of uses-twins; TestOutputPaths checks the result, this checks the
// premise.
func TestHashModuloMergesEqualInputs(t *testing.T) {
	a, err := derivation.HashModulo(mustParse(t, fixtureByAttr(t, "twin-a").data), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := derivation.HashModulo(mustParse(t, fixtureByAttr(t, "twin-b").data), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Equal(b) {
		t.Errorf("twin hashes differ: %s %s", a.Hex(), b.Hex())
	}
}

func TestHashModuloDeferred(t *testing.T) {
	d := mustParse(t, fixtureByAttr(t, "deferred").data)
	if _, err := derivation.HashModulo(d, resolver(nil)); err != nil {
		t.Errorf("HashModulo of a deferred derivation: %v", err)
	}
	// Pretending its output were input-addressed does not make its path known.
	d.Outputs["out"] = derivation.Output{Path: "/nix/store/00000000000000000000000000000000-deferred"}
	if _, err := derivation.OutputPaths("deferred", d, resolver(nil)); err == nil || !strings.Contains(err.Error(), "deferred") {
		t.Errorf("OutputPaths of a derivation with a floating input: %v", err)
	}
}

func TestReferences(t *testing.T) {
	d := mustParse(t, fixtureByAttr(t, "uses-twins").data)
	refs := d.References()
	if len(refs) != len(d.InputSrcs)+len(d.InputDrvs) || !slices.IsSorted(refs) {
		t.Errorf("References = %v", refs)
	}
	for p := range d.InputDrvs {
		if !slices.Contains(refs, storepath.Path(p)) {
			t.Errorf("References lacks %s", p)
		}
	}
}

func TestStructuredAttrs(t *testing.T) {
	d := mustParse(t, fixtureByAttr(t, "structured").data)
	attrs, ok := d.StructuredAttrs()
	if !ok {
		t.Fatal("structured derivation has no structured attributes")
	}
	if attrs["big"] != json.Number("9007199254740993") {
		t.Errorf("big = %#v; want the exact integer", attrs["big"])
	}
	if !reflect.DeepEqual(attrs["outputs"], []any{"out", "lib"}) {
		t.Errorf("outputs = %#v", attrs["outputs"])
	}
	nested, _ := attrs["nested"].(map[string]any)
	if a, _ := nested["a"].(map[string]any); a["b"] != "c\"\n" {
		t.Errorf("nested = %#v", attrs["nested"])
	}
	b := d.Basic("structured", nil)
	if battrs, ok := b.StructuredAttrs(); !ok || !reflect.DeepEqual(battrs, attrs) {
		t.Errorf("Basic.StructuredAttrs = %v, %v", battrs, ok)
	}
	if _, ok := mustParse(t, fixtureByAttr(t, "simple").data).StructuredAttrs(); ok {
		t.Error("simple derivation has structured attributes")
	}
	for _, bad := range []string{"", "null", "[1]", "{} {}", "{"} {
		_, present, err := derivation.DecodeStructuredAttrs(map[string]string{"__json": bad})
		if !present || err == nil {
			t.Errorf("__json %q: present %v, err %v", bad, present, err)
		}
	}
}

func TestNameFromPath(t *testing.T) {
	for in, want := range map[string]string{
		"/nix/store/7ng8gjbr4kmq0dfplczr188hkz8amwdv-simple.drv": "simple",
		"/nix/store/7ng8gjbr4kmq0dfplczr188hkz8amwdv-simple":     "",
		"/nix/store/7ng8gjbr4kmq0dfplczr188hkz8amwdv-.drv":       "",
		"/tmp/7ng8gjbr4kmq0dfplczr188hkz8amwdv-simple.drv":       "",
	} {
		got, err := derivation.NameFromPath(in)
		if got != want || (err == nil) != (want != "") {
			t.Errorf("NameFromPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// Guard against a test helper silently reading nothing.
func TestFixturesAreNixOutput(t *testing.T) {
	for _, f := range loadFixtures(t) {
		if !bytes.HasPrefix(f.data, []byte("Derive([")) || bytes.HasSuffix(f.data, []byte("\n")) {
			t.Errorf("%s does not look like a .drv", f.path)
		}
	}
}
