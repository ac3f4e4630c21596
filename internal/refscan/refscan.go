// Package refscan finds which store paths a byte stream refers to, the way
// Nix discovers the references of a build output (src/libstore/references.cc
// in Nix 2.8).
//
// The caller names candidate store paths by their hash parts, the 32 nix32
// characters after /nix/store/, and writes the data (normally the output's
// NAR) to a Scanner. A candidate is found if its hash part occurs anywhere in
// the stream, at any byte offset and across Write boundaries; nothing else
// about the surrounding bytes matters, so a hash preceded or followed by
// other nix32 characters still counts, exactly as in Nix.
//
// Like Nix, the scanner skips ahead quickly: it checks each 32-byte window
// from its end, and on meeting a byte outside the nix32 alphabet it moves
// past that byte, since no window containing it can match. Most binary data
// is therefore examined only about once every 32 bytes.
package refscan

import (
	"encoding/binary"
	"slices"
)

// HashLen is the length of a store path's hash part.
const HashLen = 32

// isNix32 marks the bytes of Nix's base32 alphabet.
var isNix32 = func() (t [256]bool) {
	for _, c := range []byte("0123456789abcdfghijklmnpqrsvwxyz") {
		t[c] = true
	}
	return t
}()

// filterBits is the size of the prefilter consulted before the candidate
// map; 2^16 bits is 8 KiB and stays in the L1 cache.
const filterBits = 16

// Scanner looks for candidate hash parts in the data written to it. It is
// an io.Writer whose Write never fails. A Scanner is not safe for concurrent
// use.
type Scanner struct {
	want   map[string]struct{} // candidates not yet seen
	found  []string
	filter [1 << filterBits / 64]uint64
	tail   [HashLen - 1]byte // the last bytes written, for matches that span writes
	nTail  int
}

// New returns a Scanner looking for the given hash parts. Entries that are
// not 32 nix32 characters can never be found; duplicates are ignored.
func New(hashes []string) *Scanner {
	s := &Scanner{want: make(map[string]struct{}, len(hashes))}
	for _, h := range hashes {
		if !valid(h) {
			continue
		}
		s.want[h] = struct{}{}
		k := filterKey([]byte(h))
		s.filter[k/64] |= 1 << (k % 64)
	}
	return s
}

func valid(h string) bool {
	if len(h) != HashLen {
		return false
	}
	for i := 0; i < len(h); i++ {
		if !isNix32[h[i]] {
			return false
		}
	}
	return true
}

// filterKey hashes the first eight bytes of a window to a prefilter bit.
func filterKey(w []byte) uint64 {
	return binary.LittleEndian.Uint64(w) * 0x9e3779b97f4a7c15 >> (64 - filterBits)
}

// Write scans p. It always returns len(p), nil.
func (s *Scanner) Write(p []byte) (int, error) {
	if len(s.want) == 0 || len(p) == 0 {
		return len(p), nil
	}
	// Windows that start in the previous writes' tail and end in p.
	if s.nTail > 0 {
		var buf [2 * (HashLen - 1)]byte
		n := copy(buf[:], s.tail[:s.nTail])
		n += copy(buf[n:], p[:min(len(p), HashLen-1)])
		s.search(buf[:n])
	}
	s.search(p)
	s.keepTail(p)
	return len(p), nil
}

// keepTail remembers the last HashLen-1 bytes of the stream.
func (s *Scanner) keepTail(p []byte) {
	if len(p) >= len(s.tail) {
		s.nTail = copy(s.tail[:], p[len(p)-len(s.tail):])
		return
	}
	if drop := s.nTail + len(p) - len(s.tail); drop > 0 {
		copy(s.tail[:], s.tail[drop:s.nTail])
		s.nTail -= drop
	}
	s.nTail += copy(s.tail[s.nTail:], p)
}

// search reports every candidate that occurs in b.
func (s *Scanner) search(b []byte) {
	// b[i:good] is known to hold only nix32 bytes (empty if good <= i).
	good := 0
	for i := 0; i+HashLen <= len(b); {
		// Check the window b[i:i+HashLen] from its end down to what is
		// already known, and jump past the first byte outside the alphabet.
		j := i + HashLen - 1
		lo := max(i, good)
		for j >= lo && isNix32[b[j]] {
			j--
		}
		if j >= lo {
			good = i + HashLen
			i = j + 1
			continue
		}
		// The window is all nix32: slide it one byte at a time for as long
		// as the byte entering it is nix32 too.
		for {
			s.check(b[i : i+HashLen])
			if i+HashLen >= len(b) || !isNix32[b[i+HashLen]] {
				i += HashLen + 1
				break
			}
			i++
		}
		if len(s.want) == 0 {
			return
		}
	}
}

func (s *Scanner) check(w []byte) {
	k := filterKey(w)
	if s.filter[k/64]&(1<<(k%64)) == 0 {
		return
	}
	if _, ok := s.want[string(w)]; ok {
		h := string(w)
		delete(s.want, h)
		s.found = append(s.found, h)
	}
}

// Found returns the sorted hash parts seen so far.
func (s *Scanner) Found() []string {
	out := slices.Clone(s.found)
	slices.Sort(out)
	return out
}
