// Command extract pulls the BasicDerivation out of every BuildDerivation
// request in a recorded client-to-server byte stream of Nix's serve
// protocol (command 8) or worker protocol (operation 36), and writes it to
// <outdir>/<drv base name>.basic. gen.sh runs it on the streams recorded
// by its wrapper scripts.
//
// It walks the stream with its own minimal decoder, independent of the
// package under test, and fails unless every request in the stream is one
// it knows and the stream ends exactly after the last one.
//
// Usage: go run ./extract serve|worker <outdir> <stream>...
package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

type stream struct {
	data []byte
	pos  int
}

func (s *stream) u64() uint64 {
	if s.pos+8 > len(s.data) {
		panic(fmt.Sprintf("truncated u64 at byte %d", s.pos))
	}
	v := binary.LittleEndian.Uint64(s.data[s.pos:])
	s.pos += 8
	return v
}

func (s *stream) str() string {
	n := s.u64()
	if n > uint64(len(s.data)-s.pos) {
		panic(fmt.Sprintf("string of %d bytes at byte %d runs past the end", n, s.pos))
	}
	v := string(s.data[s.pos : s.pos+int(n)])
	s.pos += int(n) + int((8-n%8)%8)
	return v
}

func (s *stream) strs() []string {
	n := s.u64()
	out := make([]string, 0, n)
	for i := uint64(0); i < n; i++ {
		out = append(out, s.str())
	}
	return out
}

// basic skips one BasicDerivation, laid out as Nix's readDerivation reads
// it, and returns its raw bytes.
func (s *stream) basic() []byte {
	start := s.pos
	for n := s.u64(); n > 0; n-- {
		s.str() // name
		s.str() // path
		s.str() // hashAlgo
		s.str() // hash
	}
	s.strs() // inputSrcs
	s.str()  // platform
	s.str()  // builder
	s.strs() // args
	for n := s.u64(); n > 0; n-- {
		s.str()
		s.str()
	}
	return s.data[start:s.pos]
}

func main() {
	if len(os.Args) < 4 || (os.Args[1] != "serve" && os.Args[1] != "worker") {
		fmt.Fprintln(os.Stderr, "usage: extract serve|worker <outdir> <stream>...")
		os.Exit(2)
	}
	for _, file := range os.Args[3:] {
		data, err := os.ReadFile(file)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		s := &stream{data: data}
		if os.Args[1] == "serve" {
			s.serve(os.Args[2])
		} else {
			s.worker(os.Args[2])
		}
	}
}

func write(outdir, drvPath string, basic []byte) {
	name := filepath.Join(outdir, strings.TrimPrefix(drvPath, "/nix/store/")+".basic")
	if err := os.WriteFile(name, basic, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("%s: %d bytes\n", name, len(basic))
}

// serve walks a serve protocol stream (client version 0x207).
func (s *stream) serve(outdir string) {
	if magic, version := s.u64(), s.u64(); magic != 0x390c9deb || version != 0x207 {
		panic(fmt.Sprintf("serve handshake %#x %#x", magic, version))
	}
	for s.pos < len(s.data) {
		switch cmd := s.u64(); cmd {
		case 1: // QueryValidPaths
			s.u64()
			s.u64()
			s.strs()
		case 2: // QueryPathInfos
			s.strs()
		case 3: // DumpStorePath
			s.str()
		case 9: // AddToStoreNar
			s.str()
			s.str()
			s.str()
			s.strs()
			s.u64()
			narSize := s.u64()
			s.u64()
			s.strs()
			s.str()
			s.pos += int(narSize)
		case 8: // BuildDerivation
			drvPath := s.str()
			basic := s.basic()
			opts := []uint64{s.u64(), s.u64(), s.u64(), s.u64(), s.u64(), s.u64()}
			fmt.Printf("%s: options %v\n", drvPath, opts)
			write(outdir, drvPath, basic)
		default:
			panic(fmt.Sprintf("unknown serve command %d at byte %d", cmd, s.pos-8))
		}
	}
	if s.pos != len(s.data) {
		panic("stream overrun")
	}
}

// worker walks a worker protocol stream (client version 1.34).
func (s *stream) worker(outdir string) {
	if magic, version := s.u64(), s.u64(); magic != 0x6e697863 || version != 0x122 {
		panic(fmt.Sprintf("worker handshake %#x %#x", magic, version))
	}
	s.u64() // cpu affinity
	s.u64() // reserveSpace
	for s.pos < len(s.data) {
		switch op := s.u64(); op {
		case 1, 26, 38: // IsValidPath, QueryPathInfo, NarFromPath
			s.str()
		case 31: // QueryValidPaths
			s.strs()
			s.u64()
		case 44: // AddMultipleToStore: flags, then a framed stream
			s.u64()
			s.u64()
			for {
				n := s.u64()
				if n == 0 {
					break
				}
				s.pos += int(n)
			}
		case 36: // BuildDerivation
			drvPath := s.str()
			basic := s.basic()
			mode := s.u64()
			fmt.Printf("%s: build mode %d\n", drvPath, mode)
			write(outdir, drvPath, basic)
		default:
			panic(fmt.Sprintf("unknown worker operation %d at byte %d", op, s.pos-8))
		}
	}
	if s.pos != len(s.data) {
		panic("stream overrun")
	}
}
