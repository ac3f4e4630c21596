package derivation_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/wire"
)

const (
	hp   = "/nix/store/7ng8gjbr4kmq0dfplczr188hkz8amwdv-x" // a valid store path
	hp2  = "/nix/store/8ng8gjbr4kmq0dfplczr188hkz8amwdv-y"
	hdrv = "/nix/store/7ng8gjbr4kmq0dfplczr188hkz8amwdv-x.drv"
	hdr2 = "/nix/store/8ng8gjbr4kmq0dfplczr188hkz8amwdv-y.drv"
	sha1 = "11f6ad8ec52a2984abaafd7c3b516503785c2072"
)

// aterm assembles a derivation from the text of its seven fields.
func aterm(outputs, inputDrvs, inputSrcs, platform, builder, args, env string) string {
	return "Derive([" + outputs + "],[" + inputDrvs + "],[" + inputSrcs + "]," + platform + "," + builder + ",[" + args + "],[" + env + "])"
}

const okOut = `("out","` + hp + `","","")`

func withOutputs(o string) string { return aterm(o, "", "", `"x86_64-linux"`, `"/bin/sh"`, "", "") }
func withInputDrvs(s string) string {
	return aterm(okOut, s, "", `"x86_64-linux"`, `"/bin/sh"`, "", "")
}
func withInputSrcs(s string) string {
	return aterm(okOut, "", s, `"x86_64-linux"`, `"/bin/sh"`, "", "")
}
func withArgs(s string) string { return aterm(okOut, "", "", `"x86_64-linux"`, `"/bin/sh"`, s, "") }
func withEnv(s string) string  { return aterm(okOut, "", "", `"x86_64-linux"`, `"/bin/sh"`, "", s) }

func TestParseValidSynthetic(t *testing.T) {
	for _, in := range []string{
		withOutputs(""), // no outputs: parses, but Kind is Invalid
		withOutputs(`("dev","` + hp2 + `","",""),("out","` + hp + `","","")`),
		withOutputs(`("out","` + hp + `","sha1","` + sha1 + `")`),
		withOutputs(`("out","","r:sha256","")`),
		withOutputs(`("out","","","")`),
		withOutputs(`("out","","r:sha256","impure")`),
		withInputDrvs(`("` + hdrv + `",["dev","out"]),("` + hdr2 + `",[])`),
		withInputSrcs(`"` + hp + `","` + hp2 + `"`),
		withArgs(`"","\"\\\n\r\t","` + "\x01\xff" + `"`),
		withEnv(`("","\\"),("a\n","")`),
		aterm(okOut, "", "", "\"weird\x01platform\n\"", `""`, "", ""),
	} {
		d, err := derivation.Parse([]byte(in))
		if err != nil {
			t.Errorf("Parse(%q): %v", in, err)
			continue
		}
		if got := string(d.Bytes()); got != in {
			t.Errorf("Bytes:\n got %q\nwant %q", got, in)
		}
	}
}

func TestParseHostile(t *testing.T) {
	tests := []struct {
		name, in string
		want     string // substring of the error
		offset   int    // byte offset, or -1 for "don't check"
		is       error  // wrapped cause, or nil
	}{
		{"empty", "", `expected "Derive(" at the start`, 0, nil},
		{"not aterm", `{"json":1}`, `expected "Derive("`, 0, nil},
		{"bad keyword", "Derive[", `expected "(" at the start`, 6, nil},
		{"just keyword", "Derive(", "found end of input", 7, nil},
		{"unterminated string", `Derive([("out`, "unterminated output name", 9, nil},
		{"bad escape", withEnv(`("k","a\qb")`), `invalid escape \q in value of environment variable k`, -1, nil},
		{"escape at end", strings.TrimSuffix(withEnv(`("k","a\`), "])"), "unterminated value of environment variable k", -1, nil},
		{"raw newline", withArgs("\"a\nb\""), `raw '\n' in argument`, -1, nil},
		{"raw tab", withEnv("(\"k\t\",\"\")"), `raw '\t' in environment variable name`, -1, nil},
		{"backslash in platform", aterm(okOut, "", "", `"x86\"`, `""`, "", ""), "backslash in platform", -1, nil},
		{"backslash in path", withOutputs(`("out","/nix/store/a\\b","","")`), "backslash in output path", -1, nil},
		{"unsorted outputs", withOutputs(okOut + `,("dev","` + hp2 + `","","")`), `output "dev" is out of order after "out"`, -1, nil},
		{"duplicate output", withOutputs(okOut + "," + okOut), `duplicate output "out"`, -1, nil},
		{"unsorted input drvs", withInputDrvs(`("` + hdr2 + `",["out"]),("` + hdrv + `",["out"])`), "input derivation " + `"` + hdrv + `" is out of order`, -1, nil},
		{"duplicate input drvs", withInputDrvs(`("` + hdrv + `",["out"]),("` + hdrv + `",["out"])`), "duplicate input derivation", -1, nil},
		{"unsorted input drv outputs", withInputDrvs(`("` + hdrv + `",["out","dev"])`), `output of input derivation "dev" is out of order after "out"`, -1, nil},
		{"duplicate input drv output", withInputDrvs(`("` + hdrv + `",["out","out"])`), `duplicate output of input derivation "out"`, -1, nil},
		{"unsorted input srcs", withInputSrcs(`"` + hp2 + `","` + hp + `"`), "input source " + `"` + hp + `" is out of order`, -1, nil},
		{"duplicate input srcs", withInputSrcs(`"` + hp + `","` + hp + `"`), "duplicate input source", -1, nil},
		{"unsorted env", withEnv(`("b",""),("a","")`), `environment variable "a" is out of order after "b"`, -1, nil},
		{"duplicate env", withEnv(`("a","1"),("a","2")`), `duplicate environment variable "a"`, -1, nil},
		{"short output path", withOutputs(`("out","/nix/store/abc-x","","")`), "bad output \"out\"", 8, storepath.ErrInvalid},
		{"output path outside store", withOutputs(`("out","/tmp/x","","")`), "not in /nix/store", 8, storepath.ErrInvalid},
		{"bad hash char in source", withInputSrcs(`"/nix/store/eng8gjbr4kmq0dfplczr188hkz8amwdv-x"`), "bad input source", -1, storepath.ErrInvalid},
		{"bad source name", withInputSrcs(`"/nix/store/7ng8gjbr4kmq0dfplczr188hkz8amwdv-a b"`), "forbidden character", -1, storepath.ErrInvalid},
		{"input drv not a drv", withInputDrvs(`("` + hp + `",["out"])`), "is not a derivation path", -1, nil},
		{"input drv bad path", withInputDrvs(`("x.drv",["out"])`), "bad input derivation", -1, storepath.ErrInvalid},
		{"bad output name", withOutputs(`("a b","` + hp + `","","")`), `output name "a b"`, 9, storepath.ErrInvalid},
		{"empty output name", withOutputs(`("","` + hp + `","","")`), `output name ""`, 9, storepath.ErrInvalid},
		{"bad input drv output name", withInputDrvs(`("` + hdrv + `",["o/ut"])`), "bad output of input derivation", -1, storepath.ErrInvalid},
		{"hash without algo", withOutputs(`("out","` + hp + `","","` + sha1 + `")`), "but no hash algorithm", 8, nil},
		{"unknown algo", withOutputs(`("out","` + hp + `","r:sha3","` + sha1 + `")`), `output hash algorithm "r:sha3"`, 8, nil},
		{"short hash", withOutputs(`("out","` + hp + `","sha1","abcd")`), "is not 40 lowercase hex digits of sha1", 8, nil},
		{"upper-case hash", withOutputs(`("out","` + hp + `","sha1","` + strings.ToUpper(sha1) + `")`), "lowercase hex", 8, nil},
		{"nix32 hash", withOutputs(`("out","` + hp + `","sha1","za96pd44x14iq81hrccp000zqpvzhp9r")`), "lowercase hex", 8, nil},
		{"fixed without path", withOutputs(`("out","","sha1","` + sha1 + `")`), "fixed output path", 8, storepath.ErrInvalid},
		{"floating with path", withOutputs(`("out","` + hp + `","sha256","")`), "content-addressed output with hash \"\" has path", 8, nil},
		{"impure with path", withOutputs(`("out","` + hp + `","sha256","impure")`), `hash "impure" has path`, 8, nil},
		{"trailing newline", withOutputs(okOut) + "\n", "1 bytes of trailing data", -1, nil},
		{"whitespace", "Derive([ " + okOut[1:], `expected '(' to start an output, found ' '`, 8, nil},
		{"missing comma", withArgs(`"a""b"`), "expected ',' or ']' in the argument list, found '\"'", -1, nil},
		{"leading comma", withArgs(`,"a"`), `expected '"' to start argument, found ','`, -1, nil},
		{"trailing comma", withArgs(`"a",`), `expected '"' to start argument, found ']'`, -1, nil},
		{"missing paren", strings.TrimSuffix(withArgs(""), ")"), "expected ')' to end the derivation, found end of input", -1, nil},
		{"output tuple too long", withOutputs(`("out","` + hp + `","","","")`), "expected ')' to end output out", -1, nil},
		{"env tuple too short", withEnv(`("a")`), "expected ',' after environment variable name a", -1, nil},
		{"unquoted", withArgs(`a`), `expected '"' to start argument, found 'a'`, -1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := derivation.Parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("Parse(%q) succeeded", tt.in)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "derivation at byte ") {
				t.Errorf("error %q does not give the offset", err)
			}
			var pe *derivation.ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not a *ParseError", err)
			}
			if tt.offset >= 0 && pe.Offset != tt.offset {
				t.Errorf("offset %d, want %d (%v)", pe.Offset, tt.offset, err)
			}
			if pe.Offset < 0 || pe.Offset > len(tt.in) {
				t.Errorf("offset %d outside the input", pe.Offset)
			}
			if !errors.Is(err, derivation.ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error does not wrap %v: %v", tt.is, err)
			}
		})
	}
}

func TestParseTooLarge(t *testing.T) {
	huge := make([]byte, derivation.MaxSize+1)
	copy(huge, "Derive([")
	_, err := derivation.Parse(huge)
	if !errors.Is(err, derivation.ErrTooLarge) {
		t.Errorf("Parse of %d bytes: %v", len(huge), err)
	}
}

// TestParseTruncated cuts every fixture at every byte.
func TestParseTruncated(t *testing.T) {
	for _, f := range loadFixtures(t) {
		for i := range f.data {
			if _, err := derivation.Parse(f.data[:i]); err == nil {
				t.Fatalf("%s cut to %d bytes parsed", f.path, i)
			} else if !errors.Is(err, derivation.ErrInvalid) {
				t.Fatalf("%s cut to %d bytes: %v", f.path, i, err)
			}
		}
	}
}

// basicStream builds a BasicDerivation on the wire from parts; each part
// is a uint64, a string, or a []string (written as a list).
func basicStream(parts ...any) []byte {
	var buf bytes.Buffer
	w := wire.NewWriter(&buf)
	for _, p := range parts {
		switch v := p.(type) {
		case int:
			w.Uint64(uint64(v))
		case uint64:
			w.Uint64(v)
		case string:
			w.String(v)
		case []string:
			w.Strings(v)
		default:
			panic(fmt.Sprintf("basicStream: %T", p))
		}
	}
	w.Flush()
	return buf.Bytes()
}

func TestReadBasicHostile(t *testing.T) {
	noArgs, noEnv := []string{}, 0
	tests := []struct {
		name string
		in   []byte
		want string
		is   error
	}{
		{"empty", nil, "outputs count", io.ErrUnexpectedEOF},
		{"huge output count", basicStream(uint64(1) << 62), "outputs, the limit is 1024", derivation.ErrInvalid},
		{"huge source count", basicStream(0, uint64(1)<<40), "input sources, the limit is", derivation.ErrInvalid},
		{"source count over limit", basicStream(0, 1<<20+1), "input sources, the limit is 1048576", derivation.ErrInvalid},
		{"huge env count", basicStream(0, noArgs, "x86_64-linux", "/bin/sh", noArgs, uint64(1)<<40), "environment variables, the limit is", derivation.ErrInvalid},
		{"huge builder", basicStream(0, noArgs, "x86_64-linux", uint64(1)<<40), "builder: string of 1099511627776 bytes", wire.ErrTooLong},
		{"long output name", basicStream(1, strings.Repeat("a", 300)), "output name: string of 300 bytes", wire.ErrTooLong},
		{"bad output name", basicStream(1, "a/b", hp, "", ""), `output name "a/b"`, storepath.ErrInvalid},
		{"bad output path", basicStream(1, "out", "/nix/store/x", "", ""), "output path", storepath.ErrInvalid},
		{"bad output hash", basicStream(1, "out", hp, "sha1", "x"), "not 40 lowercase hex digits", derivation.ErrInvalid},
		{"unsorted outputs", basicStream(2, "out", hp, "", "", "dev", hp2, "", ""), `output "dev" is out of order`, derivation.ErrInvalid},
		{"duplicate outputs", basicStream(2, "out", hp, "", "", "out", hp, "", ""), `duplicate output "out"`, derivation.ErrInvalid},
		{"bad source", basicStream(0, []string{"/nix/store/x"}), "input source", storepath.ErrInvalid},
		{"unsorted sources", basicStream(0, []string{hp2, hp}), "out of order", derivation.ErrInvalid},
		{"duplicate sources", basicStream(0, []string{hp, hp}), "duplicate input source", derivation.ErrInvalid},
		{"unsorted env", basicStream(0, noArgs, "p", "b", noArgs, 2, "b", "", "a", ""), `environment variable "a" is out of order`, derivation.ErrInvalid},
		{"duplicate env", basicStream(0, noArgs, "p", "b", noArgs, 2, "a", "", "a", ""), `duplicate environment variable "a"`, derivation.ErrInvalid},
		{"truncated env", basicStream(0, noArgs, "p", "b", noArgs, 2, "a", ""), "environment variable name", io.ErrUnexpectedEOF},
		{"bad padding", append(basicStream(0, noArgs, "p", "b", noArgs, noEnv)[:24], 'p', 0, 0, 0, 0, 0, 0, 1), "platform", wire.ErrBadPadding},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := derivation.ReadBasic(wire.NewReader(bytes.NewReader(tt.in)), "x")
			if err == nil {
				t.Fatalf("ReadBasic succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "basic derivation x: ") {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("error does not wrap %v: %v", tt.is, err)
			}
		})
	}
}

func TestReadBasicName(t *testing.T) {
	ok := basicStream(1, "out", hp, "", "", []string{}, "p", "b", []string{}, 0)
	for _, name := range []string{"", "a b", strings.Repeat("n", 300)} {
		if _, err := derivation.ReadBasic(wire.NewReader(bytes.NewReader(ok)), name); err == nil {
			t.Errorf("ReadBasic accepted name %q", name)
		}
	}
	if _, err := derivation.ReadBasic(wire.NewReader(bytes.NewReader(ok)), "x"); err != nil {
		t.Error(err)
	}
}

// repeatReader yields n bytes of c.
type repeatReader struct {
	c byte
	n int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	p = p[:min(len(p), r.n)]
	for i := range p {
		p[i] = r.c
	}
	r.n -= len(p)
	return len(p), nil
}

// TestReadBasicBudget sends two arguments of 40 MiB: each is below the
// per-string bound, together they exceed MaxSize.
func TestReadBasicBudget(t *testing.T) {
	const n = 40 << 20
	head := basicStream(0, []string{}, "p", "b", 2, n)
	second := basicStream(n)
	r := io.MultiReader(bytes.NewReader(head), &repeatReader{'a', n}, bytes.NewReader(second), &repeatReader{'a', n})
	_, err := derivation.ReadBasic(wire.NewReader(r), "x")
	if !errors.Is(err, wire.ErrTooLong) || !strings.Contains(err.Error(), "argument 1") {
		t.Errorf("ReadBasic of 80 MiB: %v", err)
	}
}

func TestReadBasicTruncated(t *testing.T) {
	for _, f := range loadBasicFixtures(t) {
		for i := range f.data {
			_, err := derivation.ReadBasic(wire.NewReader(bytes.NewReader(f.data[:i])), "x")
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("%s cut to %d bytes: %v", f.drvPath, i, err)
			}
		}
	}
}

func TestHasherErrors(t *testing.T) {
	self := &derivation.Derivation{
		Outputs:   map[string]derivation.Output{"out": {}},
		InputDrvs: map[string][]string{hdrv: {"out"}},
	}
	cyclic := func(string) (*derivation.Derivation, error) { return self, nil }
	missing := func(string) (*derivation.Derivation, error) { return nil, fs.ErrNotExist }
	noDev := func(string) (*derivation.Derivation, error) {
		return &derivation.Derivation{Outputs: map[string]derivation.Output{"out": {Path: hp}}}, nil
	}
	mixed := &derivation.Derivation{Outputs: map[string]derivation.Output{"a": {Path: hp}, "b": {}}}
	wantsDev := &derivation.Derivation{
		Outputs:   map[string]derivation.Output{"out": {}},
		InputDrvs: map[string][]string{hdrv: {"dev"}},
	}
	tests := []struct {
		name    string
		d       *derivation.Derivation
		resolve derivation.Resolver
		want    string
		is      error
	}{
		{"cycle", self, cyclic, "depends on itself", derivation.ErrInvalid},
		{"resolver error", self, missing, "loading input derivation " + hdrv, fs.ErrNotExist},
		{"no resolver", self, nil, "no resolver", nil},
		{"missing output", wantsDev, noDev, `has no output "dev"`, derivation.ErrInvalid},
		{"mixed outputs", mixed, noDev, "mixes kinds of output", derivation.ErrInvalid},
		{"no outputs", &derivation.Derivation{}, noDev, "no outputs", derivation.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := derivation.HashModulo(tt.d, tt.resolve)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("HashModulo: %v; want %q", err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error does not wrap %v: %v", tt.is, err)
			}
		})
	}
	if _, err := derivation.OutputPaths("a b", mustParse(t, []byte(withOutputs(okOut))), nil); err == nil {
		t.Error("OutputPaths accepted a bad name")
	}
	if _, err := derivation.OutputPaths("", mustParse(t, []byte(withOutputs(okOut))), nil); err == nil {
		t.Error("OutputPaths accepted an empty name")
	}
}
