// Package blob keeps immutable, content-addressed blobs (the farm store's
// NARs). A blob becomes visible only once it is complete, synced to disk
// and committed under its key, so readers never see a partial blob.
package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ErrNotFound is returned when no blob has the requested key.
var ErrNotFound = errors.New("blob not found")

// Store is a content-addressed blob store.
type Store interface {
	// Create starts a new blob. Write its bytes, then Commit it under its
	// key, or Abort it.
	Create(ctx context.Context) (Writer, error)
	// Open returns the blob stored under key, or ErrNotFound.
	Open(ctx context.Context, key string) (io.ReadCloser, error)
	// Exists reports whether a blob is stored under key.
	Exists(ctx context.Context, key string) (bool, error)
}

// Writer receives the bytes of one new blob.
type Writer interface {
	io.Writer
	// Commit makes the blob durable and visible under key. If a blob with
	// that key exists already, the new copy is dropped (content
	// addressing makes them identical).
	Commit(key string) error
	// Abort discards the blob. It is safe to call after Commit.
	Abort()
}

// Dir stores blobs as files under a directory: <dir>/<key[:2]>/<key>, with
// uploads in progress under <dir>/tmp.
type Dir struct {
	root string
	// NoSync skips fsync, for tests and benchmarks that measure other costs.
	NoSync bool
}

// NewDir opens (creating if needed) a blob directory and clears uploads
// left over from a crash.
func NewDir(root string) (*Dir, error) {
	tmp := filepath.Join(root, "tmp")
	if err := os.RemoveAll(tmp); err != nil {
		return nil, fmt.Errorf("clearing %s: %w", tmp, err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("creating blob directory: %w", err)
	}
	return &Dir{root: root}, nil
}

func validKey(key string) error {
	if len(key) < 8 || strings.ContainsAny(key, "/\\.\x00") {
		return fmt.Errorf("invalid blob key %q", key)
	}
	return nil
}

func (d *Dir) path(key string) string { return filepath.Join(d.root, key[:2], key) }

// Create implements Store.
func (d *Dir) Create(ctx context.Context) (Writer, error) {
	f, err := os.CreateTemp(filepath.Join(d.root, "tmp"), "upload-*")
	if err != nil {
		return nil, fmt.Errorf("creating blob: %w", err)
	}
	return &dirWriter{d: d, f: f}, nil
}

// Open implements Store.
func (d *Dir) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := validKey(key); err != nil {
		return nil, err
	}
	f, err := os.Open(d.path(key))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return f, err
}

// Exists implements Store.
func (d *Dir) Exists(ctx context.Context, key string) (bool, error) {
	if err := validKey(key); err != nil {
		return false, err
	}
	_, err := os.Stat(d.path(key))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

type dirWriter struct {
	d    *Dir
	f    *os.File
	done bool
}

func (w *dirWriter) Write(p []byte) (int, error) { return w.f.Write(p) }

func (w *dirWriter) Commit(key string) error {
	if w.done {
		return errors.New("blob already committed or aborted")
	}
	w.done = true
	tmp := w.f.Name()
	defer os.Remove(tmp) // no-op once renamed
	if err := validKey(key); err != nil {
		w.f.Close()
		return err
	}
	if !w.d.NoSync {
		if err := w.f.Sync(); err != nil {
			w.f.Close()
			return fmt.Errorf("syncing blob %s: %w", key, err)
		}
	}
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("closing blob %s: %w", key, err)
	}
	final := w.d.path(key)
	if _, err := os.Stat(final); err == nil {
		return nil // deduplicated: the same content is already stored
	}
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := os.Chmod(tmp, 0o444); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("committing blob %s: %w", key, err)
	}
	if w.d.NoSync {
		return nil
	}
	return syncDir(dir)
}

func (w *dirWriter) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.f.Close()
	os.Remove(w.f.Name())
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}
