package derivation_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// basicFixture is the BasicDerivation a real Nix 2.8 client sent to a
// remote builder, cut out of a recorded session by testdata/extract.
type basicFixture struct {
	proto   string // "serve" (command 8) or "worker" (operation 36)
	drvPath string
	data    []byte
}

func loadBasicFixtures(t testing.TB) []basicFixture {
	t.Helper()
	var out []basicFixture
	for _, proto := range []string{"serve", "worker"} {
		files, err := filepath.Glob(filepath.Join("testdata", proto, "*.drv.basic"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) < 9 {
			t.Fatalf("only %d %s captures; run testdata/gen.sh", len(files), proto)
		}
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			drvPath := storepath.Dir + "/" + strings.TrimSuffix(filepath.Base(file), ".basic")
			out = append(out, basicFixture{proto: proto, drvPath: drvPath, data: data})
		}
	}
	return out
}

// readBasic reads a BasicDerivation from data and reports how many bytes it
// consumed, found by reading a marker placed after data.
func readBasic(data []byte, name string) (*derivation.Basic, int, error) {
	const marker = 0x6b72616d72656b72
	var buf bytes.Buffer
	buf.Write(data)
	w := wire.NewWriter(&buf)
	w.Uint64(marker)
	w.Flush()
	r := wire.NewReader(&buf)
	b, err := derivation.ReadBasic(r, name)
	if err != nil {
		return nil, 0, err
	}
	// Find the marker: it tells how far ReadBasic read.
	rest, _ := io.ReadAll(r)
	n := len(data) + 8 - len(rest)
	if len(rest) < 8 || binary.LittleEndian.Uint64(rest[:8]) != marker {
		n = -1
	}
	return b, n, nil
}

func encodeBasic(t testing.TB, b *derivation.Basic) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := wire.NewWriter(&buf)
	if err := b.Write(w); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestBasicCaptures decodes what Nix sent, re-encodes it byte for byte, and
// checks it against the .drv it came from: the same derivation without
// inputDrvs, and with inputSrcs replaced by the input closure when the
// .drv has input derivations.
func TestBasicCaptures(t *testing.T) {
	for _, f := range loadBasicFixtures(t) {
		name, err := derivation.NameFromPath(f.drvPath)
		if err != nil {
			t.Fatal(err)
		}
		b, n, err := readBasic(f.data, name)
		if err != nil {
			t.Errorf("%s %s: %v", f.proto, f.drvPath, err)
			continue
		}
		if n != len(f.data) {
			t.Errorf("%s %s: read %d of %d bytes", f.proto, f.drvPath, n, len(f.data))
		}
		if got := encodeBasic(t, b); !bytes.Equal(got, f.data) {
			t.Errorf("%s %s: re-encoded differently:\n got %q\nwant %q", f.proto, f.drvPath, got, f.data)
		}

		drv, err := os.ReadFile(filepath.Join("testdata/drv", filepath.Base(f.drvPath)))
		if err != nil {
			t.Fatal(err)
		}
		d := mustParse(t, drv)
		var inputs []string // nil: inputSrcs unchanged
		if len(d.InputDrvs) > 0 {
			// The captured derivations' outputs reference nothing, so the
			// closure of the inputs is the inputs themselves.
			inputs = append(inputs, d.InputSrcs...)
			for drvPath, outs := range d.InputDrvs {
				in, err := resolver(nil)(drvPath)
				if err != nil {
					t.Fatal(err)
				}
				for _, o := range outs {
					inputs = append(inputs, in.Outputs[o].Path)
				}
			}
		}
		if want := d.Basic(name, inputs); !reflect.DeepEqual(b, want) {
			t.Errorf("%s %s:\n  read %#v\n  want %#v", f.proto, f.drvPath, b, want)
		}
		paths := b.OutputPaths()
		if len(paths) != len(d.Outputs) {
			t.Errorf("%s %s: OutputPaths = %v", f.proto, f.drvPath, paths)
		}
		for o, p := range paths {
			if string(p) != d.Outputs[o].Path {
				t.Errorf("%s %s: output %s = %s, want %s", f.proto, f.drvPath, o, p, d.Outputs[o].Path)
			}
		}
	}
}

func TestBasicCaptureStructuredAttrs(t *testing.T) {
	for _, f := range loadBasicFixtures(t) {
		if !strings.HasSuffix(f.drvPath, "-structured.drv") {
			continue
		}
		b, _, err := readBasic(f.data, "structured")
		if err != nil {
			t.Fatal(err)
		}
		attrs, ok := b.StructuredAttrs()
		if !ok || attrs["name"] != "structured" || !reflect.DeepEqual(attrs["outputs"], []any{"out", "doc"}) {
			t.Errorf("%s: StructuredAttrs = %v, %v", f.proto, attrs, ok)
		}
		return
	}
	t.Fatal("no structured capture")
}

// TestBasicRoundTrip encodes the BasicDerivation of every known-answer
// derivation, including the floating, deferred and impure ones Nix cannot
// build remotely without experimental features.
func TestBasicRoundTrip(t *testing.T) {
	for _, f := range loadFixtures(t) {
		want := mustParse(t, f.data).Basic(f.name, nil)
		data := encodeBasic(t, want)
		got, n, err := readBasic(data, f.name)
		if err != nil {
			t.Errorf("%s: %v", f.path, err)
			continue
		}
		if n != len(data) || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: read back %#v (%d of %d bytes), want %#v", f.path, got, n, len(data), want)
		}
	}
}

func TestBasicFromDerivationCopies(t *testing.T) {
	d := mustParse(t, fixtureByAttr(t, "chain-3").data)
	b := d.Basic("chain-3", []string{"/nix/store/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-b", "/nix/store/00000000000000000000000000000000-a", "/nix/store/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-b"})
	if want := []string{"/nix/store/00000000000000000000000000000000-a", "/nix/store/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-b"}; !reflect.DeepEqual(b.InputSrcs, want) {
		t.Errorf("InputSrcs = %v, want %v", b.InputSrcs, want)
	}
	b.Env["name"] = "changed"
	b.Args[0] = "changed"
	o := b.Outputs["out"]
	o.Path = ""
	b.Outputs["out"] = o
	if d.Env["name"] != "chain-3" || d.Args[0] == "changed" || d.Outputs["out"].Path == "" {
		t.Error("Basic shares memory with the derivation")
	}
}
