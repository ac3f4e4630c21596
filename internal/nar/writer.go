package nar

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// wdir is a directory the Writer has opened and not yet closed.
type wdir struct {
	path    string // "" for the root
	last    string // name of the last entry written
	hasLast bool
}

// Writer writes a canonical NAR. Call WriteHeader for each node in NAR
// order (parents before children, the entries of a directory in strictly
// increasing byte order of name), Write for the contents of regular files
// (exactly Header.Size bytes each), and Close at the end.
//
// Headers that are invalid or out of order are refused with an error
// wrapping ErrHeader and nothing written, so the caller may go on with a
// correct header. Errors of the underlying writer are sticky.
type Writer struct {
	w       *bufio.Writer
	err     error // sticky write error
	started bool  // the root header has been written
	closed  bool
	stack   []wdir
	file    bool // a regular file is open
	nested  bool // the open file is a directory entry
	path    string
	size    int64
	left    int64
	scratch [8]byte
}

// NewWriter returns a Writer that writes a NAR to w. Output is buffered;
// Close flushes it but does not close w.
func NewWriter(w io.Writer) *Writer {
	bw, ok := w.(*bufio.Writer)
	if !ok {
		bw = bufio.NewWriterSize(w, 64<<10)
	}
	return &Writer{w: bw}
}

// WriteHeader starts a new node. The first header must be the root, "/";
// later ones must be entries of a directory written before and not yet
// left, in strictly increasing byte order of name within each directory.
// The previous regular file must be complete.
func (w *Writer) WriteHeader(h *Header) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("nar writer is closed")
	}
	if err := checkHeader(h); err != nil {
		return err
	}
	if w.file && w.left > 0 {
		return fmt.Errorf("%w: cannot start %q: %d of the %d bytes of %q are not written", ErrHeader, h.Path, w.left, w.size, w.path)
	}
	parent, name := -1, ""
	if !w.started {
		if h.Path != "/" {
			return fmt.Errorf("%w: first node is %q, must be the root \"/\"", ErrHeader, h.Path)
		}
	} else {
		if len(w.stack) == 0 {
			return fmt.Errorf("%w: cannot add %q: the root is not a directory", ErrHeader, h.Path)
		}
		var err error
		if parent, name, err = w.place(h.Path); err != nil {
			return err
		}
	}

	w.finishFile()
	if parent >= 0 {
		w.closeDirs(parent + 1)
		d := &w.stack[parent]
		d.last, d.hasLast = name, true
		w.w.WriteString(seqEntry)
		w.writeString(name)
		w.w.WriteString(seqNode)
	}
	nested := w.started
	if !w.started {
		w.w.WriteString(seqMagic)
		w.started = true
	}
	switch h.Type {
	case TypeRegular:
		if h.Executable {
			w.w.WriteString(seqExecutable)
		} else {
			w.w.WriteString(seqRegular)
		}
		binary.LittleEndian.PutUint64(w.scratch[:], uint64(h.Size))
		w.w.Write(w.scratch[:])
		w.file, w.nested = true, nested
		w.path, w.size, w.left = h.Path, h.Size, h.Size
	case TypeSymlink:
		w.w.WriteString(seqSymlink)
		w.writeString(h.LinkTarget)
		w.w.WriteString(seqClose)
		if nested {
			w.w.WriteString(seqClose)
		}
	case TypeDirectory:
		w.w.WriteString(seqDirectory)
		p := h.Path
		if p == "/" {
			p = ""
		}
		w.stack = append(w.stack, wdir{path: p})
	}
	return w.checkErr()
}

// place finds the open directory that p is an entry of and checks the
// entry's name and order. It returns the directory's index in the stack.
func (w *Writer) place(p string) (int, string, error) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return -1, "", fmt.Errorf("%w: path %q does not start with '/'", ErrHeader, p)
	}
	dir, name := p[:i], p[i+1:]
	if prob := nameProblem(name); prob != "" {
		return -1, "", fmt.Errorf("%w: path %q: name %q %s", ErrHeader, p, name, prob)
	}
	for j := len(w.stack) - 1; j >= 0; j-- {
		d := &w.stack[j]
		if d.path != dir {
			continue
		}
		if d.hasLast {
			switch {
			case name == d.last:
				return -1, "", fmt.Errorf("%w: duplicate entry %q", ErrHeader, p)
			case name < d.last:
				return -1, "", fmt.Errorf("%w: %q is out of order: entries of %q must be in increasing byte order and %q was already written", ErrHeader, p, displayPath(dir), d.last)
			}
		}
		return j, name, nil
	}
	return -1, "", fmt.Errorf("%w: %q is not in a directory that is still open (parents must come before children, in order)", ErrHeader, p)
}

func displayPath(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

// checkHeader checks a header on its own.
func checkHeader(h *Header) error {
	if h == nil {
		return fmt.Errorf("%w: nil header", ErrHeader)
	}
	switch h.Type {
	case TypeRegular:
		if h.Size < 0 {
			return fmt.Errorf("%w: regular file %q has negative size %d", ErrHeader, h.Path, h.Size)
		}
		if h.LinkTarget != "" {
			return fmt.Errorf("%w: regular file %q has a link target", ErrHeader, h.Path)
		}
	case TypeSymlink:
		if p := targetProblem(h.LinkTarget); p != "" {
			return fmt.Errorf("%w: target of symlink %q %s", ErrHeader, h.Path, p)
		}
		if h.Executable || h.Size != 0 {
			return fmt.Errorf("%w: symlink %q has an executable flag or size", ErrHeader, h.Path)
		}
	case TypeDirectory:
		if h.Executable || h.Size != 0 || h.LinkTarget != "" {
			return fmt.Errorf("%w: directory %q has an executable flag, size or link target", ErrHeader, h.Path)
		}
	default:
		return fmt.Errorf("%w: %q has invalid type %d", ErrHeader, h.Path, uint8(h.Type))
	}
	return nil
}

// Write writes contents of the current regular file. Writing more than the
// rest of Header.Size writes what fits and returns ErrWriteTooLong.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if !w.file {
		return 0, errors.New("nar: write outside a regular file")
	}
	var tooLong bool
	if int64(len(p)) > w.left {
		p, tooLong = p[:w.left], true
	}
	n, err := w.w.Write(p)
	w.left -= int64(n)
	if err != nil {
		w.err = fmt.Errorf("writing nar: %w", err)
		return n, w.err
	}
	if tooLong {
		return n, fmt.Errorf("%w: %q has %d bytes", ErrWriteTooLong, w.path, w.size)
	}
	return n, nil
}

// Close finishes the NAR, closing every open directory, and flushes it. The
// last regular file must be complete. Close does not close the underlying
// writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return nil
	}
	if !w.started {
		return errors.New("nar: no root node written")
	}
	if w.file && w.left > 0 {
		return fmt.Errorf("nar: %d of the %d bytes of %q are not written", w.left, w.size, w.path)
	}
	w.finishFile()
	w.closeDirs(0)
	if err := w.checkErr(); err != nil {
		return err
	}
	if err := w.w.Flush(); err != nil {
		w.err = fmt.Errorf("writing nar: %w", err)
		return w.err
	}
	w.closed = true
	return nil
}

// finishFile ends the open regular file, if any.
func (w *Writer) finishFile() {
	if !w.file {
		return
	}
	var zero [8]byte
	w.w.Write(zero[:padding(uint64(w.size))])
	w.w.WriteString(seqClose)
	if w.nested {
		w.w.WriteString(seqClose)
	}
	w.file = false
}

// closeDirs closes the open directories from the top of the stack down to
// index n.
func (w *Writer) closeDirs(n int) {
	for len(w.stack) > n {
		w.w.WriteString(seqClose) // the directory
		if len(w.stack) > 1 {
			w.w.WriteString(seqClose) // its entry
		}
		w.stack = w.stack[:len(w.stack)-1]
	}
}

// writeString writes a variable token.
func (w *Writer) writeString(s string) {
	binary.LittleEndian.PutUint64(w.scratch[:], uint64(len(s)))
	w.w.Write(w.scratch[:])
	w.w.WriteString(s)
	var zero [8]byte
	w.w.Write(zero[:padding(uint64(len(s)))])
}

// checkErr makes a write error of the bufio.Writer sticky.
func (w *Writer) checkErr() error {
	// bufio.Writer keeps its first error and returns it from Flush and
	// every later write; an empty write reports it without side effects.
	if _, err := w.w.Write(nil); err != nil {
		w.err = fmt.Errorf("writing nar: %w", err)
		return w.err
	}
	return nil
}
