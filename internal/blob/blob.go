// Package blob keeps immutable, content-addressed blobs (the farm store's
// NARs). A blob becomes visible only once it is complete and committed
// under its key, so readers never see a partial blob. Making it durable is
// a separate step, Sync, so that the disk's latency stays off the path of
// an upload: the store syncs behind, and checks what was not synced yet
// after a crash.
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
	// Sync makes committed blobs durable: once it returns, they survive
	// a crash of the machine.
	Sync(ctx context.Context, keys []string) error
	// Remove deletes a blob, such as one found damaged after a crash.
	Remove(ctx context.Context, key string) error
	// Keys lists the keys of all committed blobs.
	Keys(ctx context.Context) ([]string, error)
}

// Writer receives the bytes of one new blob.
type Writer interface {
	io.Writer
	// Commit makes the blob visible under key; Store.Sync makes it
	// durable. If a blob of the same size exists already under key, the
	// new copy is dropped (content addressing makes them identical); one
	// of another size, left damaged by a crash, is replaced.
	Commit(key string) error
	// Abort discards the blob. It is safe to call after Commit.
	Abort()
}

// Spooled is a Writer whose bytes can be read, as they are written, from
// a file: the spool file stays readable through a descriptor opened
// before Commit.
type Spooled interface {
	SpoolPath() string
}

// Dir stores blobs as files under a directory: <dir>/<key[:2]>/<key>, with
// uploads in progress under <dir>/tmp.
type Dir struct {
	root string
	// NoSync skips fsync, for tests and benchmarks that measure other costs.
	NoSync bool
}

var _ Store = (*Dir)(nil)

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
	if err != nil {
		return nil, fmt.Errorf("opening blob: %w", err)
	}
	return f, nil
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

// Keys implements Store.
func (d *Dir) Keys(ctx context.Context) ([]string, error) {
	subdirs, err := os.ReadDir(d.root)
	if err != nil {
		return nil, fmt.Errorf("listing blobs: %w", err)
	}
	var keys []string
	for _, sub := range subdirs {
		if !sub.IsDir() || sub.Name() == "tmp" {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		files, err := os.ReadDir(filepath.Join(d.root, sub.Name()))
		if err != nil {
			return nil, fmt.Errorf("listing blobs: %w", err)
		}
		for _, f := range files {
			if key := f.Name(); validKey(key) == nil && key[:2] == sub.Name() {
				keys = append(keys, key)
			}
		}
	}
	return keys, nil
}

type dirWriter struct {
	d       *Dir
	f       *os.File
	done    bool
	written int64
}

func (w *dirWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.written += int64(n)
	return n, err
}

// SpoolPath implements Spooled.
func (w *dirWriter) SpoolPath() string { return w.f.Name() }

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
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("closing blob %s: %w", key, err)
	}
	final := w.d.path(key)
	if fi, err := os.Stat(final); err == nil && fi.Size() == w.written {
		return nil // deduplicated: the same content is already stored
	}
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := os.Chmod(tmp, 0o444); err != nil {
		return fmt.Errorf("committing blob %s: %w", key, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("committing blob %s: %w", key, err)
	}
	return nil
}

// Sync implements Store: it flushes each blob, then each directory that
// names one.
func (d *Dir) Sync(ctx context.Context, keys []string) error {
	if d.NoSync {
		return nil
	}
	dirs := map[string]bool{}
	for _, key := range keys {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := validKey(key); err != nil {
			return err
		}
		p := d.path(key)
		if err := syncPath(p); err != nil {
			return err
		}
		dirs[filepath.Dir(p)] = true
	}
	for dir := range dirs {
		if err := syncPath(dir); err != nil {
			return err
		}
	}
	return nil
}

// Remove implements Store.
func (d *Dir) Remove(ctx context.Context, key string) error {
	if err := validKey(key); err != nil {
		return err
	}
	err := os.Remove(d.path(key))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing blob %s: %w", key, err)
	}
	return nil
}

func (w *dirWriter) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.f.Close()
	os.Remove(w.f.Name())
}

func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", p, err)
	}
	return nil
}
