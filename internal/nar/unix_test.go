//go:build unix

package nar_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nixfarm/nixfarm/internal/nar"
)

// TestRestoreIgnoresUmask restores under restrictive and permissive umasks:
// like nix-store --restore (which resets the umask to 022), Restore always
// gives 0755 directories and executables and 0644 files. Not parallel: the
// umask belongs to the process.
func TestRestoreIgnoresUmask(t *testing.T) {
	fixture := readFixture(t, "tree")
	for _, umask := range []int{0o077, 0o000, 0o027} {
		old := syscall.Umask(umask)
		target := filepath.Join(t.TempDir(), "out")
		err := nar.Restore(bytes.NewReader(fixture), target)
		syscall.Umask(old)
		if err != nil {
			t.Fatal(err)
		}
		checkRestoredModes(t, target)
	}
}

func TestDumpPathErrors(t *testing.T) {
	tmp := t.TempDir()
	fifo := filepath.Join(tmp, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	err := nar.DumpPath(io.Discard, tmp)
	if err == nil || !strings.Contains(err.Error(), "unsupported file type named pipe") || !strings.Contains(err.Error(), fifo) {
		t.Errorf("DumpPath of a tree with a FIFO: %v", err)
	}
	err = nar.DumpPath(io.Discard, filepath.Join(tmp, "missing"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("DumpPath of a missing path: %v, want fs.ErrNotExist", err)
	}
}
