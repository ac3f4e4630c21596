// Package nar reads and writes Nix archives (NARs), the canonical
// serialisation of a file system object that Nix hashes, signs and sends
// over its protocols.
//
// A NAR is a sequence of wire strings (a little-endian u64 length, the bytes,
// zero padding to a multiple of eight): the magic "nix-archive-1" followed by
// one node. A node is "(" "type" T … ")" where T is "regular" (optionally
// "executable" "", then "contents" and the contents as one string),
// "symlink" ("target" and the target) or "directory" (entries
// "entry" "(" "name" N "node" <node> ")" in strictly increasing byte order of
// N). There are no timestamps, owners or other mode bits.
//
// The API has the shape of archive/tar: Reader.Next returns one Header per
// node in NAR order and Reader.Read streams a regular file's contents;
// Writer.WriteHeader and Writer.Write produce a canonical NAR and refuse
// anything out of order. Copy validates and copies exactly one NAR, DumpPath
// serialises a path on disk like `nix-store --dump`, and Restore unpacks a
// NAR like `nix-store --restore`.
//
// The Reader is strict: it accepts exactly the canonical form that Nix
// writes, bounds every token (names, symlink targets, keywords) and the
// directory nesting depth, rejects non-zero padding, and never reads a byte
// past the end of the archive from its source, because NARs embedded in the
// serve and worker protocols are unframed and their end is found by parsing.
// It is a plain synchronous state machine: no goroutines, nothing to close.
//
// Nix 2.8's own parser is laxer, and a NAR it accepts may be refused here:
// it never enforces the order of directory entries (it forgets the previous
// name at each entry), cuts symlink targets at a NUL byte, ignores a symlink
// without "target", and takes "executable" and "contents" in any order or
// number. Accepting those would let different bytes stand for the same tree
// (and so have different hashes); no Nix writes them.
package nar

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/nixfarm/nixfarm/internal/publicerr"
)

// Bounds enforced by Reader and Writer.
const (
	// MaxNameLen bounds the length of a directory entry name, as NAME_MAX
	// does on Linux.
	MaxNameLen = 255
	// MaxTargetLen bounds the length of a symlink target, as PATH_MAX does
	// on Linux.
	MaxTargetLen = 4096
	// MaxDepth bounds how deeply directories may be nested: the root
	// directory is at depth 1.
	MaxDepth = 256
)

// Type is the type of a NAR node.
type Type uint8

// The node types of a NAR. The zero Type is invalid.
const (
	TypeRegular Type = iota + 1
	TypeDirectory
	TypeSymlink
)

// String returns the name NAR uses for the type ("regular", "directory",
// "symlink").
func (t Type) String() string {
	switch t {
	case TypeRegular:
		return "regular"
	case TypeDirectory:
		return "directory"
	case TypeSymlink:
		return "symlink"
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Header describes one node of a NAR.
type Header struct {
	Path       string // "/" for the root node, "/a/b" for nested entries
	Type       Type
	Executable bool   // regular files only
	Size       int64  // regular files: content length
	LinkTarget string // symlinks
}

// ErrInvalid is wrapped by every error a Reader (and so Copy and Restore)
// returns for malformed NAR data, including a NAR cut short; errors of the
// underlying reader are wrapped as they are instead.
var ErrInvalid = publicerr.Sentinel("invalid nar")

// ErrHeader is wrapped by the errors Writer.WriteHeader returns for a header
// that is invalid or out of NAR order.
var ErrHeader = publicerr.Sentinel("invalid nar header")

// ErrWriteTooLong is returned by Writer.Write when more bytes are written
// than the current file's Header.Size.
var ErrWriteTooLong = publicerr.Sentinel("nar: write exceeds file size")

const magic = "nix-archive-1"

// padding returns the number of zero bytes after a string of n bytes.
func padding(n uint64) int { return int(-n & 7) }

// encodeToken returns s as a wire string.
func encodeToken(s string) string {
	b := make([]byte, 8+len(s)+padding(uint64(len(s))))
	binary.LittleEndian.PutUint64(b, uint64(len(s)))
	copy(b[8:], s)
	return string(b)
}

// encodeTokens returns the concatenation of the wire strings for ss.
func encodeTokens(ss ...string) string {
	var b []byte
	for _, s := range ss {
		b = append(b, encodeToken(s)...)
	}
	return string(b)
}

// Pre-encoded token sequences used by the Writer.
var (
	seqMagic      = encodeToken(magic)
	seqClose      = encodeToken(")")
	seqRegular    = encodeTokens("(", "type", "regular", "contents")
	seqExecutable = encodeTokens("(", "type", "regular", "executable", "", "contents")
	seqSymlink    = encodeTokens("(", "type", "symlink", "target")
	seqDirectory  = encodeTokens("(", "type", "directory")
	seqEntry      = encodeTokens("entry", "(", "name")
	seqNode       = encodeToken("node")
)

// nameProblem says what is wrong with a directory entry name, or returns ""
// for a valid one.
func nameProblem[T ~string | ~[]byte](name T) string {
	switch {
	case len(name) == 0:
		return "is empty"
	case len(name) > MaxNameLen:
		return fmt.Sprintf("is %d bytes long, more than %d", len(name), MaxNameLen)
	case string(name) == "." || string(name) == "..":
		return "is not allowed"
	}
	for i := 0; i < len(name); i++ {
		switch name[i] {
		case '/':
			return "contains '/'"
		case 0:
			return "contains a NUL byte"
		}
	}
	return ""
}

// targetProblem says what is wrong with a symlink target, or returns "" for
// a valid one.
func targetProblem[T ~string | ~[]byte](target T) string {
	switch {
	case len(target) == 0:
		return "is empty"
	case len(target) > MaxTargetLen:
		return fmt.Sprintf("is %d bytes long, more than %d", len(target), MaxTargetLen)
	}
	for i := 0; i < len(target); i++ {
		if target[i] == 0 {
			return "contains a NUL byte"
		}
	}
	return ""
}

// bufSize is the size of the buffers used by Copy, DumpPath and Restore.
const bufSize = 1 << 20

var bufPool = sync.Pool{New: func() any {
	b := make([]byte, bufSize)
	return &b
}}
