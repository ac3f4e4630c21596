package blob_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
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
	// Written in odd sizes.
	data := make([]byte, 3<<20+123)
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

	// The same blob again: the first copy stays.
	final := filepath.Join(root, "bl", "blobkey01")
	before, _ := os.Stat(final)
	w, _ = d.Create(ctx)
	w.Write(data)
	if err := w.Commit("blobkey01"); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.Stat(final); before == nil || after == nil || !os.SameFile(before, after) {
		t.Fatal("deduplicated commit replaced the blob")
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

// A file of the wrong size under a key, as a crash can leave, is replaced
// by the next commit under that key, not adopted.
func TestDirCommitReplacesDamagedBlob(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	d, err := blob.NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "bl"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bl", "blobkey01"), []byte("torn"), 0o444); err != nil {
		t.Fatal(err)
	}
	w, err := d.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("the whole blob"))
	if err := w.Commit("blobkey01"); err != nil {
		t.Fatal(err)
	}
	r, err := d.Open(ctx, "blobkey01")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	r.Close()
	if string(got) != "the whole blob" {
		t.Fatalf("blob holds %q after the commit, want the new copy", got)
	}
}

func TestDirKeys(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	d, err := blob.NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"blobkey02", "blobkey01", "otherkey1"} {
		w, _ := d.Create(ctx)
		w.Write([]byte(key))
		if err := w.Commit(key); err != nil {
			t.Fatal(err)
		}
	}
	w, _ := d.Create(ctx) // an upload in progress is not listed
	defer w.Abort()
	keys, err := d.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	if want := []string{"blobkey01", "blobkey02", "otherkey1"}; !slices.Equal(keys, want) {
		t.Fatalf("keys %v, want %v", keys, want)
	}
}
