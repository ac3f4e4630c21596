package nar_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/nixfarm/nixfarm/internal/nar"
)

const bigFileSize = 64 << 20

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rng := rand.NewChaCha8([32]byte{1})
	rng.Read(b)
	return b
}

// bigFileNAR is a NAR of one 64 MiB executable file.
func bigFileNAR(b *testing.B) []byte {
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Executable: true, Size: bigFileSize}); err != nil {
		b.Fatal(err)
	}
	if _, err := w.Write(randomBytes(bigFileSize)); err != nil {
		b.Fatal(err)
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

// smallFilesNAR is a NAR of dirs directories of files files of 200 bytes.
func smallFilesNAR(b *testing.B, dirs, files int) []byte {
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	contents := randomBytes(200)
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	must(w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory}))
	for d := range dirs {
		dir := fmt.Sprintf("/dir%03d", d)
		must(w.WriteHeader(&nar.Header{Path: dir, Type: nar.TypeDirectory}))
		for f := range files {
			must(w.WriteHeader(&nar.Header{Path: fmt.Sprintf("%s/file%03d.txt", dir, f), Type: nar.TypeRegular, Size: int64(len(contents))}))
			_, err := w.Write(contents)
			must(err)
		}
	}
	must(w.Close())
	return buf.Bytes()
}

func BenchmarkCopy(b *testing.B) {
	big, small := bigFileNAR(b), smallFilesNAR(b, 100, 100)
	for _, bc := range []struct {
		name string
		data []byte
		dst  func() io.Writer
	}{
		{"64MiB-file", big, func() io.Writer { return io.Discard }},
		{"64MiB-file-sha256", big, func() io.Writer { return sha256.New() }},
		{"10k-small-files", small, func() io.Writer { return io.Discard }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.data)))
			b.ReportAllocs()
			src := bytes.NewReader(bc.data)
			for b.Loop() {
				src.Reset(bc.data)
				n, err := nar.Copy(bc.dst(), src)
				if err != nil || n != int64(len(bc.data)) {
					b.Fatal(n, err)
				}
			}
		})
	}
}

func BenchmarkReader(b *testing.B) {
	for _, bc := range []struct {
		name string
		data []byte
	}{
		{"64MiB-file", bigFileNAR(b)},
		{"10k-small-files", smallFilesNAR(b, 100, 100)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.data)))
			b.ReportAllocs()
			src := bytes.NewReader(bc.data)
			for b.Loop() {
				src.Reset(bc.data)
				r := nar.NewReader(src)
				for {
					_, err := r.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					if _, err := io.Copy(io.Discard, r); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

func BenchmarkDumpPath(b *testing.B) {
	tmp := b.TempDir()
	bigDir := filepath.Join(tmp, "big")
	if err := os.WriteFile(bigDir, randomBytes(bigFileSize), 0o755); err != nil {
		b.Fatal(err)
	}
	smallDir := filepath.Join(tmp, "small")
	contents := randomBytes(200)
	for d := range 100 {
		dir := filepath.Join(smallDir, fmt.Sprintf("dir%03d", d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for f := range 100 {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("file%03d.txt", f)), contents, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, bc := range []struct{ name, path string }{
		{"64MiB-file", bigDir},
		{"10k-small-files", smallDir},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var cw countingWriter
			if err := nar.DumpPath(&cw, bc.path); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(cw.n)
			b.ReportAllocs()
			for b.Loop() {
				if err := nar.DumpPath(io.Discard, bc.path); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRestore restores 1000 small files; it measures the file system
// more than the package (nix-store --restore is no faster).
func BenchmarkRestore(b *testing.B) {
	data := smallFilesNAR(b, 10, 100)
	b.SetBytes(int64(len(data)))
	tmp := b.TempDir()
	i := 0
	for b.Loop() {
		target := filepath.Join(tmp, fmt.Sprint(i))
		i++
		if err := nar.Restore(bytes.NewReader(data), target); err != nil {
			b.Fatal(err)
		}
	}
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
