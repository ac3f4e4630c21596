package buildlog

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// OpenAt opens the log at path for reading from offset, a position in
// the decompressed log, and returns where reading starts: offset, or the
// end of what exists if the log is shorter. A plain log seeks there. A
// compressed one skips whole frames before offset by the content size
// their header states, reading only frame and block headers, not
// decompressing them; a frame that states no size (zstd omits it for
// frames under 256 bytes) is decompressed to learn it. The frame that
// holds offset is decompressed and its part before offset dropped. So
// reading from offset costs about what reading the log from there does,
// whatever its length before.
func OpenAt(path string, offset int64) (io.ReadCloser, int64, error) {
	if offset < 0 {
		return nil, 0, errors.New("build log: negative offset")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	r, start, err := openAt(f, offset)
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return r, start, nil
}

func openAt(f *os.File, offset int64) (io.ReadCloser, int64, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	size := st.Size()
	var head [4]byte
	if n, _ := f.ReadAt(head[:], 0); n < len(magic) || [4]byte(magic) != head {
		start := min(offset, size)
		if _, err := f.Seek(start, io.SeekStart); err != nil {
			return nil, 0, err
		}
		return f, start, nil
	}
	var pos, at int64 // compressed, decompressed
	var frame []byte
	for at < offset {
		n, content, err := frameAt(f, pos, size)
		if err != nil {
			return nil, 0, err
		}
		if n == 0 {
			break // the last frame is still being written
		}
		if content < 0 {
			// No size in the header: a small frame, decompressed.
			frame = append(frame[:0], make([]byte, n)...)
			if _, err := f.ReadAt(frame, pos); err != nil {
				return nil, 0, fmt.Errorf("build log: reading a frame: %w", err)
			}
			out, err := decoder.DecodeAll(frame, nil)
			if err != nil {
				return nil, 0, fmt.Errorf("build log: damaged frame: %w", err)
			}
			content = int64(len(out))
		}
		if at+content > offset {
			break // offset is inside this frame
		}
		pos += n
		at += content
	}
	if _, err := f.Seek(pos, io.SeekStart); err != nil {
		return nil, 0, err
	}
	r := &reader{src: f, closer: f}
	skipped, err := io.CopyN(io.Discard, r, offset-at)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, err
	}
	return r, at + skipped, nil
}

// frameAt reads the header of the zstd frame at pos of f (size bytes
// long) and the headers of its blocks, and returns the frame's length and
// the content size its header states (-1: none); length 0 if the frame
// is not all written yet.
func frameAt(f io.ReaderAt, pos, size int64) (n, content int64, err error) {
	var h [14]byte // magic, descriptor, window, dictionary id, content size
	k, err := f.ReadAt(h[:], pos)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, 0, err
	}
	b := h[:k]
	if len(b) < 5 {
		if _, err := frameLen(b); err != nil {
			return 0, 0, err
		}
		return 0, 0, nil
	}
	if [4]byte(b[:4]) != [4]byte(magic) {
		return 0, 0, errors.New("build log: not a zstd frame")
	}
	fhd := b[4]
	if fhd&0x08 != 0 {
		return 0, 0, errors.New("build log: zstd frame header with the reserved bit set")
	}
	p := 5
	single := fhd&0x20 != 0
	if !single {
		p++
	}
	p += [4]int{0, 1, 2, 4}[fhd&3]
	fcs := [4]int{0, 2, 4, 8}[fhd>>6]
	if fcs == 0 && single {
		fcs = 1
	}
	if p+fcs > len(b) {
		return 0, 0, nil
	}
	content = -1
	if fcs > 0 {
		var v uint64
		for i := fcs - 1; i >= 0; i-- {
			v = v<<8 | uint64(b[p+i])
		}
		if fcs == 2 {
			v += 256
		}
		if v > MaxFrame {
			return 0, 0, fmt.Errorf("build log: zstd frame larger than %d bytes", MaxFrame)
		}
		content = int64(v)
	}
	end := pos + int64(p+fcs)
	var bh [3]byte
	for {
		if end+3 > size {
			return 0, 0, nil
		}
		if _, err := f.ReadAt(bh[:], end); err != nil {
			return 0, 0, err
		}
		hdr := int64(bh[0]) | int64(bh[1])<<8 | int64(bh[2])<<16
		end += 3
		last, typ, bsize := hdr&1 != 0, (hdr>>1)&3, hdr>>3
		switch typ {
		case 1:
			end++
		case 3:
			return 0, 0, errors.New("build log: zstd block of the reserved type")
		default:
			end += bsize
		}
		if end-pos > MaxFrame {
			return 0, 0, fmt.Errorf("build log: zstd frame larger than %d bytes", MaxFrame)
		}
		if last {
			break
		}
	}
	if fhd&0x04 != 0 {
		end += 4
	}
	if end > size {
		return 0, 0, nil
	}
	return end - pos, content, nil
}
