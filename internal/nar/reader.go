package nar

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
)

// Read-ahead rule. The Reader never reads a byte past the end of the NAR,
// yet reading one token at a time costs two reads of the source per token.
// So each read of the source asks for at most as many bytes as any valid NAR
// must still contain from that point: every token read is given the size of
// the smallest valid token there (minTok) and the smallest number of bytes
// that a valid NAR has after it (minAfter). These are lower bounds, so for a
// valid NAR the read-ahead always stays inside it; for an invalid one the
// parse fails anyway.
//
// The smallest node is an empty directory, "(" "type" "directory" ")" = 72
// bytes (64 counted token by token with minTok 16 for the type). A node with
// d enclosing directories is followed by at least 32*d bytes: an entry's ")"
// and its directory's ")" per level.
const (
	minNode  = 64 // lower bound of a node, token by token
	minLevel = 32 // bytes after a node per enclosing directory
	minToken = 16 // a non-empty token of at most 8 bytes
	minEmpty = 8  // the empty token
)

// maxKeyword bounds tokens that must be one of NAR's keywords; the longest,
// "nix-archive-1", has 13 bytes.
const maxKeyword = 16

// minRoom is the free space below which the buffer is compacted before a
// read, so reads of the source are not needlessly small.
const minRoom = 4 << 10

// teeLag bounds, in Copy mode, the bytes read from the source but not yet
// written to the tee before the next read of the source.
const teeLag = 64 << 10

// directRead is the size from which Read fills the caller's slice straight
// from the source instead of going through the buffer.
const directRead = 16 << 10

// defaultBufSize is the buffer size of a Reader from NewReader. It must hold
// the largest token (a symlink target) with its length and padding.
const defaultBufSize = 64 << 10

type state uint8

const (
	stMagic    state = iota // nothing read yet
	stNode                  // before the "(" of a node whose path is known
	stContents              // inside a regular file's contents
	stNodeEnd               // before the ")" closing a regular file or symlink
	stDir                   // inside a directory, before "entry" or ")"
	stDone                  // the root node is closed
)

// frame is an open directory.
type frame struct {
	pathLen int    // len(Reader.path) for this directory
	prev    []byte // name of the previous entry
	hasPrev bool
}

// Reader reads a NAR as a stream, like archive/tar: Next returns the header
// of each node in turn, and Read reads the contents of the current regular
// file. Next returns io.EOF once the root node is closed; call it until then
// to consume the whole NAR from the source.
//
// A Reader reads from its source only bytes that belong to the NAR, so the
// source can go on to be used for whatever follows. Every error is sticky.
type Reader struct {
	src   io.Reader
	buf   []byte
	r, w  int   // buf[r:w] has been read from src but not consumed
	nread int64 // bytes read from src

	// Copy mode: every byte read from src is written to tee, in large
	// chunks; buf[t:w] is not yet written.
	tee  io.Writer
	t    int
	nout int64

	state    state
	stack    []frame
	path     []byte // path of the current node, "" for the root
	noHeader bool   // Copy mode: don't materialise headers

	// The current node.
	typ    Type
	exec   bool
	size   int64
	left   int64 // contents not yet consumed
	target string

	err error
}

// NewReader returns a Reader that reads a NAR from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{src: r, buf: make([]byte, defaultBufSize)}
}

// Next advances to the next node of the NAR, skipping the rest of the
// current file's contents, and returns its header. It returns io.EOF after
// the root node has been closed, and an error wrapping ErrInvalid if the NAR
// is malformed.
func (r *Reader) Next() (*Header, error) {
	if err := r.next(); err != nil {
		return nil, err
	}
	h := &Header{Path: r.pathString(), Type: r.typ}
	switch r.typ {
	case TypeRegular:
		h.Executable, h.Size = r.exec, r.size
	case TypeSymlink:
		h.LinkTarget = r.target
	}
	return h, nil
}

// Read reads from the contents of the current regular file. It returns
// io.EOF at the end of the contents, and at once for other node types.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.state != stContents || r.left == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	if r.r == r.w && r.tee == nil && len(p) >= directRead {
		n, err := r.src.Read(p)
		r.nread += int64(n)
		r.left -= int64(n)
		if n > 0 || err == nil {
			return n, nil
		}
		return 0, r.readError(r.offset(), "contents of %q", err)
	}
	b, err := r.chunk()
	if err != nil {
		return 0, err
	}
	n := copy(p, b)
	r.r += n
	r.left -= int64(n)
	return n, nil
}

// WriteTo writes the rest of the current regular file's contents to w,
// straight from the Reader's buffer. It lets io.Copy(w, r) avoid a copy.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if r.err != nil {
			return total, r.err
		}
		if r.state != stContents || r.left == 0 {
			return total, nil
		}
		b, err := r.chunk()
		if err != nil {
			return total, err
		}
		n, err := w.Write(b)
		r.r += n
		r.left -= int64(n)
		total += int64(n)
		if err == nil && n < len(b) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return total, err
		}
	}
}

// chunk returns buffered contents of the current file, reading the source
// if the buffer is empty. The caller consumes what it uses.
func (r *Reader) chunk() ([]byte, error) {
	if r.r == r.w {
		start := r.offset()
		if err := r.fill(1, r.contentsLimit()); err != nil {
			return nil, r.readError(start, "contents of %q", err)
		}
	}
	n := r.w - r.r
	if int64(n) > r.left {
		n = int(r.left)
	}
	return r.buf[r.r : r.r+n], nil
}

// contentsLimit is the smallest number of bytes a valid NAR still has while
// reading a file's contents: the rest of them, their padding, the node's ")"
// and the closing of the enclosing directories.
func (r *Reader) contentsLimit() int64 {
	return r.left + int64(padding(uint64(r.size))) + minToken + r.after()
}

// after returns the number of bytes that at least follow the current
// regular file or symlink node, or a node not yet typed.
func (r *Reader) after() int64 { return minLevel * int64(len(r.stack)) }

// offset returns the position in the NAR of the next unconsumed byte.
func (r *Reader) offset() int64 { return r.nread - int64(r.w-r.r) }

func (r *Reader) pathString() string {
	if len(r.path) == 0 {
		return "/"
	}
	return string(r.path)
}

// describe formats what, a description of the token being read with one
// %q verb for the current path, for an error message. Descriptions are
// formatted only when an error occurs, so reading allocates nothing.
func (r *Reader) describe(what string) string { return fmt.Sprintf(what, r.pathString()) }

// fail records and returns an error about invalid data at offset off.
func (r *Reader) fail(off int64, format string, args ...any) error {
	r.err = fmt.Errorf("%w at offset %d: "+format, append([]any{ErrInvalid, off}, args...)...)
	return r.err
}

// readError records and returns an error for a failed read of the source
// while reading what (see describe), which started at offset off.
func (r *Reader) readError(off int64, what string, err error) error {
	if r.err != nil { // a failed write in Copy mode
		return r.err
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return r.fail(off, "truncated in %s at offset %d: %w", r.describe(what), r.nread, io.ErrUnexpectedEOF)
	}
	r.err = fmt.Errorf("reading nar at offset %d (%s): %w", r.nread, r.describe(what), err)
	return r.err
}

// fill makes at least n bytes available in buf[r:w], reading at most limit
// bytes beyond buf[r] from the source (limit >= n). It returns the source's
// error unchanged.
func (r *Reader) fill(n int, limit int64) error {
	avail := r.w - r.r
	if avail >= n {
		return nil
	}
	if len(r.buf)-r.r < n || len(r.buf)-r.w < minRoom {
		if err := r.compact(); err != nil {
			return err
		}
	} else if r.tee != nil && r.w-r.t >= teeLag {
		// The read may block: pass on what has arrived, so a reader of
		// the tee's output lags the source by at most teeLag bytes.
		if err := r.flushTee(); err != nil {
			return err
		}
	}
	max := len(r.buf) - r.w
	if l := limit - int64(avail); l < int64(max) {
		max = int(l)
	}
	m, err := io.ReadAtLeast(r.src, r.buf[r.w:r.w+max], n-avail)
	r.w += m
	r.nread += int64(m)
	return err
}

// compact moves the unconsumed bytes to the start of the buffer, first
// passing everything read so far to the tee in Copy mode.
func (r *Reader) compact() error {
	if r.tee != nil {
		if err := r.flushTee(); err != nil {
			return err
		}
	}
	n := copy(r.buf, r.buf[r.r:r.w])
	r.r, r.w, r.t = 0, n, n
	return nil
}

func (r *Reader) flushTee() error {
	if r.t == r.w {
		return nil
	}
	n, err := r.tee.Write(r.buf[r.t:r.w])
	r.nout += int64(n)
	short := n < r.w-r.t
	r.t = r.w
	if err == nil && short {
		err = io.ErrShortWrite
	}
	if err != nil {
		r.err = fmt.Errorf("writing nar: %w", err)
		return r.err
	}
	return nil
}

// token reads one wire string of at most max bytes and returns it; the
// slice is valid until the next read. what describes the token for errors
// (see describe); minTok and minAfter bound the read-ahead (see above).
func (r *Reader) token(max int, minTok int, minAfter int64, what string) ([]byte, error) {
	start := r.offset()
	if err := r.fill(8, int64(minTok)+minAfter); err != nil {
		return nil, r.readError(start, what, err)
	}
	n := binary.LittleEndian.Uint64(r.buf[r.r:])
	if n > uint64(max) {
		return nil, r.fail(start, "%s is %d bytes long, more than %d", r.describe(what), n, max)
	}
	size := 8 + int(n) + padding(n)
	if err := r.fill(size, int64(size)+minAfter); err != nil {
		return nil, r.readError(start, what, err)
	}
	tok := r.buf[r.r+8 : r.r+8+int(n)]
	for _, c := range r.buf[r.r+8+int(n) : r.r+size] {
		if c != 0 {
			return nil, r.fail(start, "non-zero padding after %s", r.describe(what))
		}
	}
	r.r += size
	return tok, nil
}

// expect reads a token that must be the keyword lit; what describes it
// (see describe).
func (r *Reader) expect(lit string, minAfter int64, what string) error {
	start := r.offset()
	tok, err := r.token(maxKeyword, minEmpty+len(lit)+padding(uint64(len(lit))), minAfter, what)
	if err != nil {
		return err
	}
	if string(tok) != lit {
		return r.fail(start, "expected %s, got %q", r.describe(what), tok)
	}
	return nil
}

// next advances to the next node's header.
func (r *Reader) next() error {
	if r.err != nil {
		return r.err
	}
	for {
		switch r.state {
		case stMagic:
			start := r.offset()
			tok, err := r.token(maxKeyword, minEmpty+16, minNode, "magic%.0s") // %.0s drops the path
			if err != nil {
				return err
			}
			if string(tok) != magic {
				return r.fail(start, "bad magic %q, want %q", tok, magic)
			}
			r.state = stNode
		case stNode:
			return r.node()
		case stContents:
			if err := r.skipContents(); err != nil {
				return err
			}
		case stNodeEnd:
			if err := r.expect(")", r.after(), `")" closing %q`); err != nil {
				return err
			}
			if err := r.endNode(); err != nil {
				return err
			}
		case stDir:
			if err := r.dirEntry(); err != nil {
				return err
			}
		case stDone:
			return io.EOF
		}
	}
}

// node reads a node's header up to its contents, target or entries.
func (r *Reader) node() error {
	after := r.after()
	if err := r.expect("(", 3*minToken+after, `"(" opening %q`); err != nil {
		return err
	}
	if err := r.expect("type", 2*minToken+after, `"type" of %q`); err != nil {
		return err
	}
	start := r.offset()
	tok, err := r.token(maxKeyword, minToken, minToken+after, "node type of %q")
	if err != nil {
		return err
	}
	switch string(tok) {
	case "regular":
		return r.regular(after)
	case "symlink":
		return r.symlink(after)
	case "directory":
		if len(r.stack) >= MaxDepth {
			return r.fail(start, "directory %q is nested more than %d deep", r.pathString(), MaxDepth)
		}
		r.typ = TypeDirectory
		n := len(r.stack)
		if n < cap(r.stack) {
			r.stack = r.stack[:n+1]
			r.stack[n].prev = r.stack[n].prev[:0]
		} else {
			r.stack = append(r.stack, frame{})
		}
		r.stack[n].pathLen = len(r.path)
		r.stack[n].hasPrev = false
		r.state = stDir
		return nil
	}
	return r.fail(start, "unknown node type %q of %q", tok, r.pathString())
}

func (r *Reader) regular(after int64) error {
	r.typ, r.exec = TypeRegular, false
	start := r.offset()
	tok, err := r.token(maxKeyword, minToken, minEmpty+minToken+after, "keyword in regular file %q")
	if err != nil {
		return err
	}
	switch string(tok) {
	case "executable":
		start := r.offset()
		val, err := r.token(maxKeyword, minEmpty, 2*minToken+minEmpty+after, "executable marker of %q")
		if err != nil {
			return err
		}
		if len(val) != 0 {
			return r.fail(start, "executable marker of %q has non-empty value %q", r.pathString(), val)
		}
		r.exec = true
		if err := r.expect("contents", minEmpty+minToken+after, `"contents" of regular file %q`); err != nil {
			return err
		}
	case "contents":
	default:
		return r.fail(start, "expected \"executable\" or \"contents\" in regular file %q, got %q", r.pathString(), tok)
	}
	start = r.offset()
	if err := r.fill(8, 8+minToken+after); err != nil {
		return r.readError(start, "contents length of %q", err)
	}
	n := binary.LittleEndian.Uint64(r.buf[r.r:])
	if n > math.MaxInt64 {
		return r.fail(start, "contents length %d of %q is too large", n, r.pathString())
	}
	r.r += 8
	r.size, r.left = int64(n), int64(n)
	r.state = stContents
	return nil
}

func (r *Reader) symlink(after int64) error {
	r.typ = TypeSymlink
	if err := r.expect("target", 2*minToken+after, `"target" of symlink %q`); err != nil {
		return err
	}
	start := r.offset()
	tok, err := r.token(MaxTargetLen, minToken, minToken+after, "target of symlink %q")
	if err != nil {
		return err
	}
	if p := targetProblem(tok); p != "" {
		return r.fail(start, "target of symlink %q %s", r.pathString(), p)
	}
	if !r.noHeader {
		r.target = string(tok)
	}
	r.state = stNodeEnd
	return nil
}

// skipContents consumes the rest of the current file and its padding.
func (r *Reader) skipContents() error {
	for r.left > 0 {
		b, err := r.chunk()
		if err != nil {
			return err
		}
		r.r += len(b)
		r.left -= int64(len(b))
	}
	start := r.offset()
	pad := padding(uint64(r.size))
	if err := r.fill(pad, int64(pad)+minToken+r.after()); err != nil {
		return r.readError(start, "padding of %q", err)
	}
	for _, c := range r.buf[r.r : r.r+pad] {
		if c != 0 {
			return r.fail(start, "non-zero padding after contents of %q", r.pathString())
		}
	}
	r.r += pad
	r.state = stNodeEnd
	return nil
}

// dirEntry reads "entry" up to the entry's node, or the ")" closing the
// current directory.
func (r *Reader) dirEntry() error {
	d := len(r.stack)
	top := &r.stack[d-1]
	start := r.offset()
	tok, err := r.token(maxKeyword, minToken, minLevel*int64(d-1), "keyword in directory %q")
	if err != nil {
		return err
	}
	switch string(tok) {
	case ")":
		r.stack = r.stack[:d-1]
		return r.endNode()
	case "entry":
	default:
		return r.fail(start, "expected \"entry\" or \")\" in directory %q, got %q", r.pathString(), tok)
	}
	after := minLevel * int64(d) // after the entry's node
	if err := r.expect("(", 3*minToken+minNode+after, `"(" opening an entry of directory %q`); err != nil {
		return err
	}
	if err := r.expect("name", 2*minToken+minNode+after, `"name" in an entry of directory %q`); err != nil {
		return err
	}
	start = r.offset()
	name, err := r.token(MaxNameLen, minToken, minToken+minNode+after, "entry name in directory %q")
	if err != nil {
		return err
	}
	if p := nameProblem(name); p != "" {
		return r.fail(start, "entry name %q in directory %q %s", name, r.pathString(), p)
	}
	if top.hasPrev {
		switch c := bytes.Compare(name, top.prev); {
		case c == 0:
			return r.fail(start, "duplicate entry %q in directory %q", name, r.pathString())
		case c < 0:
			return r.fail(start, "entries of directory %q are not sorted: %q comes after %q", r.pathString(), name, top.prev)
		}
	}
	top.prev = append(top.prev[:0], name...)
	top.hasPrev = true
	r.path = append(append(r.path[:top.pathLen], '/'), name...)
	if err := r.expect("node", minNode+after, `"node" in entry %q`); err != nil {
		return err
	}
	r.state = stNode
	return nil
}

// endNode handles the end of a node whose ")" has been read (and whose
// frame, for a directory, has been popped): the NAR ends after the root,
// otherwise the entry's ")" follows.
func (r *Reader) endNode() error {
	d := len(r.stack)
	if d == 0 {
		r.state = stDone
		return nil
	}
	if err := r.expect(")", minLevel*int64(d)-minToken, `")" closing entry %q`); err != nil {
		return err
	}
	r.path = r.path[:r.stack[d-1].pathLen]
	r.state = stDir
	return nil
}

var copyPool = sync.Pool{New: func() any { return &Reader{buf: make([]byte, bufSize)} }}

// Copy reads exactly one NAR from src, validating it fully, and writes its
// bytes to dst unchanged. It returns the number of bytes written, which on
// success is the length of the NAR. Copy never reads past the end of the
// NAR, so src can be a protocol stream. On error dst may have received part
// of the NAR.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	r := copyPool.Get().(*Reader)
	defer copyPool.Put(r)
	buf, stack, path := r.buf, r.stack[:0], r.path[:0]
	*r = Reader{src: src, buf: buf, stack: stack, path: path, tee: dst, noHeader: true}
	defer func() { r.src, r.tee = nil, nil }()

	for {
		err := r.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return r.nout, err
		}
	}
	if err := r.flushTee(); err != nil {
		return r.nout, err
	}
	return r.nout, nil
}
