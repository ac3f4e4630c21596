package blob_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/nixfarm/nixfarm/internal/blob"
)

func TestDirCommitAbortDedup(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	d, err := blob.NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	// Larger than a few writeback chunks, written in odd sizes.
	data := make([]byte, 21<<20+123)
	rand.NewChaCha8([32]byte{1}).Read(data)
	w, err := d.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 1<<20+7)
		if _, err := w.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	if ok, _ := d.Exists(ctx, "blobkey01"); ok {
		t.Fatal("blob visible before its commit")
	}
	if err := w.Commit("blobkey01"); err != nil {
		t.Fatal(err)
	}
	r, err := d.Open(ctx, "blobkey01")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	r.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes that differ from the %d written", len(got), len(data))
	}

	// The same key again: the first copy stays.
	w, _ = d.Create(ctx)
	w.Write([]byte("other"))
	if err := w.Commit("blobkey01"); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(root, "bl", "blobkey01")); fi == nil || fi.Size() != int64(len(data)) {
		t.Fatalf("deduplicated commit replaced the blob: %v", fi)
	}

	// An aborted blob leaves nothing behind.
	w, _ = d.Create(ctx)
	w.Write([]byte("half"))
	w.Abort()
	if left, _ := os.ReadDir(filepath.Join(root, "tmp")); len(left) != 0 {
		t.Fatalf("aborted and committed uploads left %d files", len(left))
	}
	if _, err := d.Open(ctx, "missing01"); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("missing blob: %v", err)
	}
	if _, err := d.Open(ctx, "../etc/passwd"); err == nil {
		t.Fatal("a key with a path in it was accepted")
	}
}
