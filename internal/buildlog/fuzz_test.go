package buildlog_test

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/nixfarm/nixfarm/internal/buildlog"
)

// FuzzOpen: whatever a log file holds, reading it neither panics nor
// decodes more than MaxFrame at a time.
func FuzzOpen(f *testing.F) {
	enc, _ := zstd.NewWriter(nil)
	f.Add([]byte("plain text\n"))
	f.Add(enc.EncodeAll([]byte("hello\n"), nil))
	f.Add(append(enc.EncodeAll([]byte("one\n"), nil), enc.EncodeAll([]byte("two\n"), nil)...))
	f.Add(enc.EncodeAll(make([]byte, 3<<20), nil))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "fuzz.log")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := buildlog.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		// RLE blocks make a little input a lot of log: read a bounded
		// amount, a frame at a time.
		io.Copy(io.Discard, io.LimitReader(r, 64<<20))
	})
}
