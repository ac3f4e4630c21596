package substituter

import (
	"compress/bzip2"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/xi2/xz"

	"github.com/nixfarm/nixfarm/internal/narinfo"
)

// checkNarURL refuses a NAR URL that is not a plain relative path inside
// the cache.
func checkNarURL(u string) error {
	switch {
	case u == "":
		return errors.New("empty NAR URL")
	case strings.HasPrefix(u, "/"):
		return fmt.Errorf("NAR URL %q is absolute", u)
	case strings.Contains(u, ".."):
		return fmt.Errorf("NAR URL %q contains \"..\"", u)
	}
	for _, r := range u {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._~+=/", r)
		if !ok {
			if r == ':' {
				return fmt.Errorf("NAR URL %q has a scheme or a colon", u)
			}
			return fmt.Errorf("NAR URL %q contains %q", u, r)
		}
	}
	return nil
}

// checkCompression refuses a compression this package cannot undo.
func checkCompression(c string) error {
	switch c {
	case "none", "xz", "zstd", "bzip2":
		return nil
	}
	return fmt.Errorf("unsupported compression %q (want none, xz, zstd or bzip2)", c)
}

// errOversize is a NAR that decompresses to more than its NarSize.
var errOversize = errors.New("NAR is larger than its NarSize")

// narStream turns a cache's file into the NAR it holds: it reads at most
// the compressed size allowed, decompresses, fails at once past NarSize,
// and before handing over the NAR's last bytes checks that the file ends
// there, that its size is FileSize and its hash FileHash (when given).
type narStream struct {
	ni       *narinfo.NarInfo
	file     *countReader // the compressed file, bounded
	dec      io.Reader    // decompressed
	closeDec func()
	left     uint64 // NAR bytes still expected
}

// xzDictMax is the largest xz dictionary a NAR may need: xz -9's.
const xzDictMax = 64 << 20

func newNarStream(file io.Reader, ni *narinfo.NarInfo) (*narStream, error) {
	limit := ni.FileSize
	if limit == 0 {
		// No size given: no compression of NarSize bytes is larger.
		limit = ni.NarSize + ni.NarSize/8 + 1<<20
		if limit < ni.NarSize {
			limit = math.MaxUint64 // overflowed
		}
	}
	cr := &countReader{r: file, left: limit, limit: limit, given: ni.FileSize != 0}
	if !ni.FileHash.IsZero() {
		cr.h = ni.FileHash.Algo.New()
	}
	ns := &narStream{ni: ni, file: cr, left: ni.NarSize, closeDec: func() {}}
	switch ni.Compression {
	case "none":
		ns.dec = cr
	case "xz":
		// github.com/xi2/xz (XZ Embedded) refuses a dictionary over
		// xzDictMax, which the stream itself declares: ulikunitz/xz
		// allocates whatever a block header asks for (up to 4 GiB), and
		// a NAR's compressed file is not covered by its signature.
		r, err := xz.NewReader(cr, xzDictMax)
		if err != nil {
			return nil, refusal("xz: %w", err)
		}
		ns.dec = r
	case "zstd":
		d, err := zstd.NewReader(cr, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		ns.dec, ns.closeDec = d, d.Close
	case "bzip2":
		ns.dec = bzip2.NewReader(cr)
	default:
		return nil, checkCompression(ni.Compression)
	}
	return ns, nil
}

func (ns *narStream) Close() { ns.closeDec() }

func (ns *narStream) Read(p []byte) (int, error) {
	if ns.left == 0 {
		return 0, io.EOF
	}
	if uint64(len(p)) > ns.left {
		p = p[:ns.left]
	}
	n, err := ns.dec.Read(p)
	ns.left -= uint64(n)
	if err == io.EOF && ns.left > 0 {
		return n, refusal("%w: NAR ends after %d bytes, NarSize is %d", io.ErrUnexpectedEOF, ns.ni.NarSize-ns.left, ns.ni.NarSize)
	}
	if err != nil && err != io.EOF {
		return n, refusal("%s: %w", ns.ni.Compression, err)
	}
	if ns.left == 0 {
		if err := ns.finish(); err != nil {
			return 0, err // the NAR's last bytes are held back
		}
	}
	return n, nil
}

// finish checks, once NarSize bytes have come, that the decompressed
// stream and the file end there and that the file is what was declared.
func (ns *narStream) finish() error {
	var one [1]byte
	for {
		n, err := ns.dec.Read(one[:])
		if n > 0 {
			return refusal("%w (%d bytes)", errOversize, ns.ni.NarSize)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", ns.ni.Compression, err)
		}
	}
	// The decompressor may stop before the end of the file's last frame.
	if _, err := io.Copy(io.Discard, ns.file); err != nil {
		return err
	}
	return ns.file.check(ns.ni)
}

// countReader reads at most limit bytes of a cache's file, hashing them.
type countReader struct {
	r     io.Reader
	left  uint64
	limit uint64
	given bool // limit is the declared FileSize
	h     hash.Hash
	n     uint64
}

func (c *countReader) Read(p []byte) (int, error) {
	if c.left == 0 {
		// One byte more than allowed would be an error: see if it is there.
		var one [1]byte
		n, err := io.ReadFull(c.r, one[:])
		if n > 0 {
			if c.given {
				return 0, refusal("file is larger than its FileSize %d", c.limit)
			}
			return 0, refusal("file is larger than %d bytes, too large for its NarSize", c.limit)
		}
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			return 0, io.EOF
		}
		return 0, err
	}
	if uint64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= uint64(n)
	c.n += uint64(n)
	if c.h != nil {
		c.h.Write(p[:n])
	}
	return n, err
}

// check compares what was read with FileSize and FileHash.
func (c *countReader) check(ni *narinfo.NarInfo) error {
	if ni.FileSize != 0 && c.n != ni.FileSize {
		return refusal("file size mismatch: FileSize is %d, got %d bytes", ni.FileSize, c.n)
	}
	if c.h != nil {
		got := c.h.Sum(nil)
		want := ni.FileHash.Digest
		if string(got) != string(want) {
			return refusal("file hash mismatch: FileHash is %s", ni.FileHash)
		}
	}
	return nil
}
