package binarycache

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// A compressor writes the compressed NAR of p, whose info is info, to dst,
// verifying the NAR against info as it reads it.
type compressor func(ctx context.Context, view store.Store, p storepath.Path, info *store.PathInfo, f format, dst io.Writer) error

func compress(ctx context.Context, view store.Store, p storepath.Path, info *store.PathInfo, f format, dst io.Writer) error {
	rc, _, err := view.NarFromPath(ctx, p)
	if err != nil {
		return err
	}
	defer rc.Close()
	var zw io.WriteCloser
	switch f {
	case zstdFormat:
		zw, err = zstd.NewWriter(dst, zstd.WithEncoderLevel(zstd.SpeedDefault),
			zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)))
	case xzFormat:
		zw, err = xz.NewWriter(dst)
	default:
		err = fmt.Errorf("no compressor for format %d", f)
	}
	if err != nil {
		return fmt.Errorf("starting compression: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(zw, io.TeeReader(rc, h))
	if err != nil {
		zw.Close()
		return fmt.Errorf("compressing the NAR of %s: %w", p, err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("compressing the NAR of %s: %w", p, err)
	}
	if uint64(n) != info.NarSize {
		return fmt.Errorf("%w: NAR of %s has %d bytes, not %d", store.ErrSizeMismatch, p, n, info.NarSize)
	}
	if got := nixhash.FromDigest(nixhash.SHA256, h); !got.Equal(info.NarHash) {
		return fmt.Errorf("%w: NAR of %s has %s, not %s", store.ErrHashMismatch, p, got, info.NarHash)
	}
	return nil
}

// copies keeps the compressed copies of NARs in a directory, named
// <narhash>.nar.zst or .nar.xz. A copy is written to a temporary file,
// synced and renamed into place, so a name only ever holds a whole copy;
// it is made once however many requests ask for it at the same time.
// Past maxBytes, the least recently served copies are removed.
type copies struct {
	dir      string
	maxBytes int64
	log      *slog.Logger
	sem      chan struct{} // bounds the compressions under way

	mu      sync.Mutex
	entries map[string]*entry
	flights map[string]*flight
	total   int64
	clock   int64 // ticks at each use, for least recently used
	made    int   // copies made, for tests
}

type entry struct {
	size int64
	used int64
}

type flight struct {
	done chan struct{}
	err  error
}

const tmpPrefix = "tmp-"

// copyName reports whether name is a copy's file name.
func copyName(name string) bool {
	for _, f := range []format{zstdFormat, xzFormat} {
		if h, ok := strings.CutSuffix(name, formats[f].ext); ok && isNix32(h, narHashLen) {
			return true
		}
	}
	return false
}

func openCopies(dir string, maxBytes int64, log *slog.Logger) (*copies, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the directory of compressed NARs: %w", err)
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("listing compressed NARs: %w", err)
	}
	c := &copies{dir: dir, maxBytes: maxBytes, log: log, entries: map[string]*entry{}, flights: map[string]*flight{},
		sem: make(chan struct{}, max(1, runtime.GOMAXPROCS(0)))}
	type found struct {
		name  string
		size  int64
		mtime int64
	}
	var all []found
	for _, de := range des {
		name := de.Name()
		if strings.HasPrefix(name, tmpPrefix) {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return nil, fmt.Errorf("removing a half-written copy: %w", err)
			}
			continue
		}
		if !de.Type().IsRegular() || !copyName(name) {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		all = append(all, found{name, fi.Size(), fi.ModTime().UnixNano()})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mtime < all[j].mtime })
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range all {
		c.clock++
		c.entries[f.name] = &entry{size: f.size, used: c.clock}
		c.total += f.size
	}
	c.evictLocked("")
	return c, nil
}

// get opens the copy named key, making it with build if it does not exist.
// Concurrent requests for a copy being made wait for it; build runs apart
// from any request, so one that gives up stops no other.
func (c *copies) get(ctx context.Context, key string, build func(ctx context.Context, dst io.Writer) error) (*os.File, error) {
	for attempt := 0; ; attempt++ {
		c.mu.Lock()
		if e, ok := c.entries[key]; ok {
			c.clock++
			e.used = c.clock
			c.mu.Unlock()
			f, err := os.Open(filepath.Join(c.dir, key))
			if err == nil {
				return f, nil
			}
			if !errors.Is(err, os.ErrNotExist) || attempt > 2 {
				return nil, fmt.Errorf("opening a compressed copy: %w", err)
			}
			// Removed behind our back: forget it and make it again.
			c.mu.Lock()
			if c.entries[key] == e {
				delete(c.entries, key)
				c.total -= e.size
			}
			c.mu.Unlock()
			continue
		}
		fl, ok := c.flights[key]
		if !ok {
			fl = &flight{done: make(chan struct{})}
			c.flights[key] = fl
			go c.make(context.WithoutCancel(ctx), key, fl, build)
		}
		c.mu.Unlock()
		select {
		case <-fl.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if fl.err != nil {
			return nil, fl.err
		}
		if attempt > 2 {
			return nil, errors.New("compressed copy removed as soon as it was made")
		}
	}
}

// make runs one flight: it writes the copy to a temporary file, syncs it,
// renames it into place and records it.
func (c *copies) make(ctx context.Context, key string, fl *flight, build func(ctx context.Context, dst io.Writer) error) {
	c.sem <- struct{}{}
	size, err := c.write(ctx, key, build)
	<-c.sem
	c.mu.Lock()
	delete(c.flights, key)
	if err == nil {
		c.made++
		c.clock++
		c.entries[key] = &entry{size: size, used: c.clock}
		c.total += size
		c.evictLocked(key)
	}
	fl.err = err
	c.mu.Unlock()
	close(fl.done)
}

func (c *copies) write(ctx context.Context, key string, build func(ctx context.Context, dst io.Writer) error) (int64, error) {
	f, err := os.CreateTemp(c.dir, tmpPrefix+"*")
	if err != nil {
		return 0, fmt.Errorf("creating a compressed copy: %w", err)
	}
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	bw := bufio.NewWriterSize(f, 256<<10)
	if err := build(ctx, bw); err != nil {
		return 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, fmt.Errorf("writing a compressed copy: %w", err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("syncing a compressed copy: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("writing a compressed copy: %w", err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("writing a compressed copy: %w", err)
	}
	if err := os.Rename(f.Name(), filepath.Join(c.dir, key)); err != nil {
		os.Remove(f.Name())
		done = true
		return 0, fmt.Errorf("placing a compressed copy: %w", err)
	}
	done = true
	return st.Size(), nil
}

// evictLocked removes the least recently served copies, never keep,
// until the directory is within its bound. A copy being served stays
// readable through its open descriptor.
func (c *copies) evictLocked(keep string) {
	for c.total > c.maxBytes {
		victim, oldest := "", int64(0)
		for k, e := range c.entries {
			if k != keep && (victim == "" || e.used < oldest) {
				victim, oldest = k, e.used
			}
		}
		if victim == "" {
			return
		}
		if err := os.Remove(filepath.Join(c.dir, victim)); err != nil && !errors.Is(err, os.ErrNotExist) {
			c.log.Warn("binary cache: removing a compressed copy", "copy", victim, "err", err)
		}
		c.total -= c.entries[victim].size
		delete(c.entries, victim)
	}
}

// stats returns how many copies were made and the bytes held, for tests.
func (c *copies) stats() (made int, total int64, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.made, c.total, len(c.entries)
}
