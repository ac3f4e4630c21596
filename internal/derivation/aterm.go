package derivation

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/nixfarm/nixfarm/internal/storepath"
)

// ParseError reports where and why Parse rejected its input.
type ParseError struct {
	Offset int    // byte offset of the offending token
	What   string // what was wrong
	Err    error  // underlying cause, or nil
}

func (e *ParseError) Error() string {
	msg := fmt.Sprintf("derivation at byte %d: %s", e.Offset, e.What)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Public reports that the message may be shown to clients: it describes
// only the bytes they sent (see package publicerr).
func (e *ParseError) Public() bool { return true }

// Unwrap returns ErrInvalid and the underlying cause, if any.
func (e *ParseError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrInvalid, e.Err}
	}
	return []error{ErrInvalid}
}

// Parse parses a derivation in the ATerm syntax of a .drv file.
//
// It is stricter than Nix: it accepts only the exact bytes Nix writes, so
// that Bytes returns its input unchanged. Lists must be comma-separated with
// no whitespace; outputs, input derivations, their output names, input
// sources and environment variables must be sorted without duplicates;
// strings written with escapes (builder, arguments, environment) may use
// only \" \\ \n \r \t and may not hold a raw newline, carriage return or
// tab; strings Nix writes without escapes (output names, paths, hash
// fields, platform) may not hold a backslash. Store paths must be valid,
// input derivations must be .drv paths, and each output must have one of
// the field combinations described on Output. Nothing may follow the final
// ")". Input above MaxSize is rejected before parsing.
//
// Errors are *ParseError values giving the byte offset; they wrap
// ErrInvalid.
func Parse(data []byte) (*Derivation, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(data), MaxSize)
	}
	p := &parser{data: data}
	d, err := p.derivation()
	if err != nil {
		return nil, err
	}
	return d, nil
}

type parser struct {
	data []byte
	pos  int
}

func (p *parser) fail(off int, format string, args ...any) error {
	return &ParseError{Offset: off, What: fmt.Sprintf(format, args...)}
}

func (p *parser) wrap(off int, err error, format string, args ...any) error {
	return &ParseError{Offset: off, What: fmt.Sprintf(format, args...), Err: err}
}

// found describes the byte at the current position for error messages.
func (p *parser) found() string {
	if p.pos >= len(p.data) {
		return "end of input"
	}
	return fmt.Sprintf("%q", p.data[p.pos])
}

func (p *parser) literal(s, what string) error {
	rest := p.data[p.pos:]
	for i := 0; i < len(s); i++ {
		if i >= len(rest) || rest[i] != s[i] {
			p.pos += i
			return p.fail(p.pos, "expected %q %s, found %s", s[i:], what, p.found())
		}
	}
	p.pos += len(s)
	return nil
}

func (p *parser) char(c byte, what string) error {
	if p.pos < len(p.data) && p.data[p.pos] == c {
		p.pos++
		return nil
	}
	return p.fail(p.pos, "expected %q %s, found %s", c, what, p.found())
}

// plain parses a string that Nix writes without escaping (printUnquotedString).
func (p *parser) plain(what string) (string, error) {
	if err := p.char('"', "to start "+what); err != nil {
		return "", err
	}
	start := p.pos
	end := bytes.IndexByte(p.data[start:], '"')
	if end < 0 {
		return "", p.fail(start-1, "unterminated %s", what)
	}
	s := p.data[start : start+end]
	if i := bytes.IndexByte(s, '\\'); i >= 0 {
		return "", p.fail(start+i, "backslash in %s, which Nix writes without escapes", what)
	}
	p.pos = start + end + 1
	return string(s), nil
}

// escaped parses a string that Nix writes with printString, which escapes
// '"', '\\', newline, carriage return and tab.
func (p *parser) escaped(what string) (string, error) {
	if err := p.char('"', "to start "+what); err != nil {
		return "", err
	}
	start := p.pos
	var sb *strings.Builder
	for i := start; i < len(p.data); i++ {
		c := p.data[i]
		switch c {
		case '"':
			p.pos = i + 1
			if sb == nil {
				return string(p.data[start:i]), nil
			}
			return sb.String(), nil
		case '\n', '\r', '\t':
			return "", p.fail(i, "raw %q in %s, which Nix writes escaped", c, what)
		case '\\':
			if sb == nil {
				sb = &strings.Builder{}
				sb.Grow(len(p.data) - start)
				sb.Write(p.data[start:i])
			}
			i++
			if i >= len(p.data) {
				return "", p.fail(start-1, "unterminated %s", what)
			}
			switch e := p.data[i]; e {
			case '"', '\\':
				sb.WriteByte(e)
			case 'n':
				sb.WriteByte('\n')
			case 'r':
				sb.WriteByte('\r')
			case 't':
				sb.WriteByte('\t')
			default:
				return "", p.fail(i-1, "invalid escape \\%c in %s; only \\\" \\\\ \\n \\r \\t are allowed", e, what)
			}
		default:
			if sb != nil {
				sb.WriteByte(c)
			}
		}
	}
	return "", p.fail(start-1, "unterminated %s", what)
}

// list parses "[" item ("," item)* "]", calling item for each element.
func (p *parser) list(what string, item func() error) error {
	if err := p.char('[', "to start "+what); err != nil {
		return err
	}
	if p.pos < len(p.data) && p.data[p.pos] == ']' {
		p.pos++
		return nil
	}
	for {
		if err := item(); err != nil {
			return err
		}
		if p.pos < len(p.data) {
			switch p.data[p.pos] {
			case ',':
				p.pos++
				continue
			case ']':
				p.pos++
				return nil
			}
		}
		return p.fail(p.pos, "expected ',' or ']' in %s, found %s", what, p.found())
	}
}

// order checks that keys come in strictly increasing byte order.
type order struct {
	what  string
	prev  string
	first bool
}

func newOrder(what string) *order { return &order{what: what, first: true} }

func (o *order) next(p *parser, off int, s string) error {
	if !o.first {
		if s == o.prev {
			return p.fail(off, "duplicate %s %q", o.what, s)
		}
		if s < o.prev {
			return p.fail(off, "%s %q is out of order after %q; Nix writes them sorted", o.what, s, o.prev)
		}
	}
	o.first, o.prev = false, s
	return nil
}

func (p *parser) derivation() (*Derivation, error) {
	d := &Derivation{
		Outputs:   map[string]Output{},
		InputDrvs: map[string][]string{},
		InputSrcs: []string{},
		Args:      []string{},
		Env:       map[string]string{},
	}
	if err := p.literal("Derive(", "at the start of a derivation"); err != nil {
		return nil, err
	}

	outOrder := newOrder("output")
	err := p.list("the output list", func() error {
		start := p.pos
		if err := p.char('(', "to start an output"); err != nil {
			return err
		}
		nameAt := p.pos
		name, err := p.plain("output name")
		if err != nil {
			return err
		}
		if err := validateOutputName(name); err != nil {
			return p.wrap(nameAt, err, "bad output")
		}
		if err := outOrder.next(p, nameAt, name); err != nil {
			return err
		}
		var o Output
		if err := p.char(',', "after the output name"); err != nil {
			return err
		}
		if o.Path, err = p.plain("output path"); err != nil {
			return err
		}
		if err := p.char(',', "after the output path"); err != nil {
			return err
		}
		if o.HashAlgo, err = p.plain("output hash algorithm"); err != nil {
			return err
		}
		if err := p.char(',', "after the output hash algorithm"); err != nil {
			return err
		}
		if o.Hash, err = p.plain("output hash"); err != nil {
			return err
		}
		if err := p.char(')', "to end output "+name); err != nil {
			return err
		}
		if err := o.validate(); err != nil {
			return p.wrap(start, err, "bad output %q", name)
		}
		d.Outputs[name] = o
		return nil
	})
	if err != nil {
		return nil, err
	}

	if err := p.char(',', "after the output list"); err != nil {
		return nil, err
	}
	drvOrder := newOrder("input derivation")
	err = p.list("the input derivation list", func() error {
		if err := p.char('(', "to start an input derivation"); err != nil {
			return err
		}
		pathAt := p.pos
		path, err := p.plain("input derivation path")
		if err != nil {
			return err
		}
		if _, err := NameFromPath(path); err != nil {
			return p.wrap(pathAt, err, "bad input derivation")
		}
		if err := drvOrder.next(p, pathAt, path); err != nil {
			return err
		}
		if err := p.char(',', "after the input derivation path"); err != nil {
			return err
		}
		names := []string{}
		nameOrder := newOrder("output of input derivation")
		err = p.list("the output names of "+path, func() error {
			at := p.pos
			name, err := p.plain("input derivation output name")
			if err != nil {
				return err
			}
			if err := validateOutputName(name); err != nil {
				return p.wrap(at, err, "bad output of input derivation %s", path)
			}
			if err := nameOrder.next(p, at, name); err != nil {
				return err
			}
			names = append(names, name)
			return nil
		})
		if err != nil {
			return err
		}
		if err := p.char(')', "to end input derivation "+path); err != nil {
			return err
		}
		d.InputDrvs[path] = names
		return nil
	})
	if err != nil {
		return nil, err
	}

	if err := p.char(',', "after the input derivation list"); err != nil {
		return nil, err
	}
	srcOrder := newOrder("input source")
	err = p.list("the input source list", func() error {
		at := p.pos
		path, err := p.plain("input source")
		if err != nil {
			return err
		}
		if _, err := storepath.Parse(path); err != nil {
			return p.wrap(at, err, "bad input source")
		}
		if err := srcOrder.next(p, at, path); err != nil {
			return err
		}
		d.InputSrcs = append(d.InputSrcs, path)
		return nil
	})
	if err != nil {
		return nil, err
	}

	if err := p.char(',', "after the input source list"); err != nil {
		return nil, err
	}
	if d.Platform, err = p.plain("platform"); err != nil {
		return nil, err
	}
	if err := p.char(',', "after the platform"); err != nil {
		return nil, err
	}
	if d.Builder, err = p.escaped("builder"); err != nil {
		return nil, err
	}
	if err := p.char(',', "after the builder"); err != nil {
		return nil, err
	}
	err = p.list("the argument list", func() error {
		arg, err := p.escaped("argument")
		if err != nil {
			return err
		}
		d.Args = append(d.Args, arg)
		return nil
	})
	if err != nil {
		return nil, err
	}

	if err := p.char(',', "after the argument list"); err != nil {
		return nil, err
	}
	envOrder := newOrder("environment variable")
	err = p.list("the environment", func() error {
		if err := p.char('(', "to start an environment variable"); err != nil {
			return err
		}
		at := p.pos
		key, err := p.escaped("environment variable name")
		if err != nil {
			return err
		}
		if err := envOrder.next(p, at, key); err != nil {
			return err
		}
		if err := p.char(',', "after environment variable name "+key); err != nil {
			return err
		}
		value, err := p.escaped("value of environment variable " + key)
		if err != nil {
			return err
		}
		if err := p.char(')', "to end environment variable "+key); err != nil {
			return err
		}
		d.Env[key] = value
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := p.char(')', "to end the derivation"); err != nil {
		return nil, err
	}
	if p.pos != len(p.data) {
		return nil, p.fail(p.pos, "%d bytes of trailing data after the derivation", len(p.data)-p.pos)
	}
	return d, nil
}

// Bytes returns the derivation in the ATerm syntax, byte for byte as Nix
// writes it: outputs, input derivations and environment sorted by name,
// input sources and the output names of input derivations sorted and
// without duplicates. Like Nix, it writes output names, paths, hash fields
// and the platform without escaping.
func (d *Derivation) Bytes() []byte {
	return d.appendATerm(make([]byte, 0, d.sizeHint()), false, nil)
}

// String returns Bytes as a string.
func (d *Derivation) String() string { return string(d.Bytes()) }

func (d *Derivation) sizeHint() int {
	n := 64 + len(d.Platform) + 2*len(d.Builder)
	for k, o := range d.Outputs {
		n += 12 + len(k) + len(o.Path) + len(o.HashAlgo) + len(o.Hash)
	}
	for k, v := range d.InputDrvs {
		n += 8 + len(k)
		for _, s := range v {
			n += 3 + len(s)
		}
	}
	for _, s := range d.InputSrcs {
		n += 3 + len(s)
	}
	for _, s := range d.Args {
		n += 3 + len(s) + len(s)/8
	}
	for k, v := range d.Env {
		n += 6 + len(k) + len(v) + len(v)/8
	}
	return n
}

// appendATerm is Nix's Derivation::unparse. With mask, output paths and the
// environment variables named after outputs are written empty. If inputs
// is not nil it is written in place of d.InputDrvs.
func (d *Derivation) appendATerm(b []byte, mask bool, inputs map[string][]string) []byte {
	b = append(b, "Derive(["...)
	for i, name := range sortedKeys(d.Outputs) {
		o := d.Outputs[name]
		if i > 0 {
			b = append(b, ',')
		}
		path := o.Path
		if mask {
			path = ""
		}
		b = append(b, '(')
		b = appendPlain(b, name)
		b = append(b, ',')
		b = appendPlain(b, path)
		b = append(b, ',')
		b = appendPlain(b, o.HashAlgo)
		b = append(b, ',')
		b = appendPlain(b, o.Hash)
		b = append(b, ')')
	}
	b = append(b, "],["...)
	if inputs == nil {
		inputs = d.InputDrvs
	}
	for i, path := range sortedKeys(inputs) {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '(')
		b = appendPlain(b, path)
		b = append(b, ',')
		b = appendPlainList(b, sortedSet(inputs[path]))
		b = append(b, ')')
	}
	b = append(b, "],"...)
	b = appendPlainList(b, sortedSet(d.InputSrcs))
	b = append(b, ',')
	b = appendPlain(b, d.Platform)
	b = append(b, ',')
	b = appendEscaped(b, d.Builder)
	b = append(b, ",["...)
	for i, arg := range d.Args {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendEscaped(b, arg)
	}
	b = append(b, "],["...)
	for i, key := range sortedKeys(d.Env) {
		if i > 0 {
			b = append(b, ',')
		}
		value := d.Env[key]
		if _, isOutput := d.Outputs[key]; mask && isOutput {
			value = ""
		}
		b = append(b, '(')
		b = appendEscaped(b, key)
		b = append(b, ',')
		b = appendEscaped(b, value)
		b = append(b, ')')
	}
	return append(b, "])"...)
}

func appendPlain(b []byte, s string) []byte {
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func appendPlainList(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendPlain(b, s)
	}
	return append(b, ']')
}

func appendEscaped(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
