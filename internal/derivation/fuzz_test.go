package derivation_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// FuzzParse checks that Parse never panics, and that whatever it accepts is
// canonical: Bytes gives the input back, and parses to the same value.
// Hashing and the BasicDerivation round trip must not panic either.
func FuzzParse(f *testing.F) {
	for _, fx := range loadFixtures(f) {
		f.Add(fx.data)
	}
	f.Add([]byte(withEnv(`("a","\"\\\n\r\t"),("b","")`)))
	f.Add([]byte(withInputDrvs(`("` + hdrv + `",["dev","out"])`)))
	f.Add([]byte(withOutputs(`("out","","r:sha256","impure")`)))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := derivation.Parse(data)
		if err != nil {
			var pe *derivation.ParseError
			if !errors.As(err, &pe) && !errors.Is(err, derivation.ErrTooLarge) {
				t.Fatalf("error %T is not a *ParseError: %v", err, err)
			}
			return
		}
		out := d.Bytes()
		if !bytes.Equal(out, data) {
			t.Fatalf("Bytes differs from the input:\n got %q\nwant %q", out, data)
		}
		d2, err := derivation.Parse(out)
		if err != nil {
			t.Fatalf("Bytes does not parse: %v", err)
		}
		if !reflect.DeepEqual(d, d2) {
			t.Fatalf("reparsed to a different value:\n%#v\n%#v", d, d2)
		}
		d.Kind()
		derivation.PathOf("fuzz", d)
		derivation.HashModulo(d, func(string) (*derivation.Derivation, error) { return d2, nil })
		derivation.OutputPaths("fuzz", d, func(string) (*derivation.Derivation, error) { return d2, nil })

		b := d.Basic("fuzz", nil)
		var buf bytes.Buffer
		w := wire.NewWriter(&buf)
		if err := b.Write(w); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		b2, err := derivation.ReadBasic(wire.NewReader(&buf), "fuzz")
		if err != nil {
			t.Fatalf("ReadBasic of the BasicDerivation of an accepted derivation: %v", err)
		}
		if !reflect.DeepEqual(b, b2) {
			t.Fatalf("BasicDerivation changed on the wire:\n%#v\n%#v", b, b2)
		}
	})
}

// FuzzReadBasic checks that ReadBasic never panics, and that whatever it
// accepts Write encodes back to the bytes it read.
func FuzzReadBasic(f *testing.F) {
	for _, fx := range loadBasicFixtures(f) {
		f.Add(fx.data)
	}
	f.Add(basicStream(1, "out", "", "r:sha256", "impure", []string{hp}, "p", "b", []string{"a"}, 1, "k", "v"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := derivation.ReadBasic(wire.NewReader(bytes.NewReader(data)), "x")
		if err != nil {
			return
		}
		var buf bytes.Buffer
		w := wire.NewWriter(&buf)
		if err := b.Write(w); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		if !bytes.HasPrefix(data, buf.Bytes()) {
			t.Fatalf("Write gives %q, not a prefix of the input %q", buf.Bytes(), data)
		}
		b2, err := derivation.ReadBasic(wire.NewReader(&buf), "x")
		if err != nil || !reflect.DeepEqual(b, b2) {
			t.Fatalf("re-read %#v, %v; want %#v", b2, err, b)
		}
		b.Kind()
		b.OutputPaths()
		b.StructuredAttrs()
	})
}

// FuzzDecodeStructuredAttrs checks the decoder of a derivation's __json,
// which comes from clients' derivations: no panic, errors wrap ErrInvalid,
// and what it accepts is an object that survives encoding and decoding
// again unchanged (numbers kept as written).
func FuzzDecodeStructuredAttrs(f *testing.F) {
	for _, s := range []string{
		`{"outputs":{"out":{"outputHash":null}},"builder":"/bin/sh","args":["-c","echo"],"n":12345678901234567890}`,
		`{"exportReferencesGraph":{"closure":["/nix/store/x"]},"__sandboxProfile":"","preferLocalBuild":true}`,
		`{}`, `null`, `[]`, `{} {}`, `{"a":1e999}`, `{"a":"\ud800"}`, ``,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		attrs, present, err := derivation.DecodeStructuredAttrs(map[string]string{"__json": s})
		if !present {
			t.Fatal("__json not present")
		}
		if err != nil {
			if !errors.Is(err, derivation.ErrInvalid) {
				t.Fatalf("error without ErrInvalid: %v", err)
			}
			return
		}
		if attrs == nil {
			t.Fatal("nil attributes accepted")
		}
		js, err := json.Marshal(attrs)
		if err != nil {
			t.Fatalf("%q decodes to attributes that do not encode: %v", s, err)
		}
		again, _, err := derivation.DecodeStructuredAttrs(map[string]string{"__json": string(js)})
		if err != nil || !reflect.DeepEqual(again, attrs) {
			t.Fatalf("%q: attributes encode as %s, which decode as %v, %v", s, js, again, err)
		}
	})
}
