package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Prefetching. When the farm knows which machine its builds will run on
// (the built-in worker of a one-machine farm), a large input need not
// wait for its build: the executor copies it to the machine while the
// client is still uploading it to the farm, so the two copies overlap
// instead of following each other. A build that needs the path waits for
// a copy in flight rather than starting a second one.

// maxPrefetches bounds the copies in flight; more uploads at once are
// left to their builds.
const maxPrefetches = 2

// prefetchTimeout bounds one copy.
const prefetchTimeout = time.Hour

// errSkipped says a prefetch was not needed or not possible.
var errSkipped = errors.New("skipped")

// Prefetch starts copying a path that is being added to the farm store to
// this executor's machine, reading nar as it arrives; it returns at once
// and closes nar when done. The copy is skipped when the machine has the
// path or lacks one of its references, or when maxPrefetches copies are
// in flight. If the upload fails, nar ends with an error and the
// machine's Nix, short of bytes, registers nothing.
func (e *Executor) Prefetch(info *store.PathInfo, nar io.ReadCloser) {
	e.pfMu.Lock()
	if e.prefetching == nil {
		e.prefetching = map[storepath.Path]chan struct{}{}
	}
	if _, ok := e.prefetching[info.Path]; ok || len(e.prefetching) >= maxPrefetches {
		e.pfMu.Unlock()
		nar.Close()
		return
	}
	done := make(chan struct{})
	e.prefetching[info.Path] = done
	e.pfMu.Unlock()

	go func() {
		defer func() {
			nar.Close()
			e.pfMu.Lock()
			delete(e.prefetching, info.Path)
			e.pfMu.Unlock()
			close(done)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), prefetchTimeout)
		defer cancel()
		start := time.Now()
		err := e.prefetch(ctx, info, nar)
		switch {
		case errors.Is(err, errSkipped):
			e.log.Debug("prefetch skipped", "path", info.Path, "why", err)
		case err != nil:
			e.log.Debug("prefetch failed", "path", info.Path, "err", err)
		default:
			e.log.Debug("prefetched", "path", info.Path, "bytes", info.NarSize, "took", time.Since(start))
		}
	}()
}

func (e *Executor) prefetch(ctx context.Context, info *store.PathInfo, nar io.Reader) (err error) {
	stream, err := e.transport.Open(ctx, build.Options{})
	if err != nil {
		return err
	}
	stderr := newLineForwarder(io.Discard)
	drained := make(chan struct{})
	go func() {
		if stream.Stderr != nil {
			stderr.copyFrom(stream.Stderr)
		}
		close(drained)
	}()
	defer func() {
		stream.Stdin.Close() // a copy cut short leaves Nix short of bytes: it registers nothing
		<-drained
		if werr := stream.Wait(); werr != nil && err == nil {
			err = werr
		}
		if err != nil && !errors.Is(err, errSkipped) {
			if tail := stderr.tail(); tail != "" {
				err = fmt.Errorf("%w (nix-store said: %s)", err, tail)
			}
		}
	}()
	client, err := serveproto.NewClient(stream.Stdout, stream.Stdin)
	if err != nil {
		return fmt.Errorf("talking to nix-store --serve: %w", err)
	}
	want := append([]storepath.Path{info.Path}, info.References...)
	valid, err := client.QueryValidPaths(want, false, false)
	if err != nil {
		return err
	}
	if slices.Contains(valid, info.Path) {
		return fmt.Errorf("%w: the machine has %s", errSkipped, info.Path)
	}
	for _, r := range info.References {
		if r != info.Path && !slices.Contains(valid, r) {
			return fmt.Errorf("%w: the machine lacks reference %s", errSkipped, r)
		}
	}
	if info.NarSize == 0 {
		return fmt.Errorf("%w: no NAR size", errSkipped)
	}
	if info.RegistrationTime.IsZero() {
		info.RegistrationTime = time.Now()
	}
	// The last byte goes only once the farm has verified and registered
	// the upload, so the machine never registers what the farm refused.
	held := io.MultiReader(io.LimitReader(nar, int64(info.NarSize)-1), &lastByte{r: nar})
	return client.AddToStoreNar(info, held)
}

// lastByte reads the final byte of a followed NAR and then its end, which
// comes only once the upload is verified; an upload that failed gives its
// error instead.
type lastByte struct {
	r    io.Reader
	done bool
}

func (l *lastByte) Read(p []byte) (int, error) {
	if l.done || len(p) == 0 {
		return 0, io.EOF
	}
	var b [1]byte
	if _, err := io.ReadFull(l.r, b[:]); err != nil {
		return 0, fmt.Errorf("the upload ended early: %w", err)
	}
	if n, err := l.r.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		if err == nil || errors.Is(err, io.EOF) {
			err = errors.New("more bytes than declared")
		}
		return 0, fmt.Errorf("the upload was not accepted: %w", err)
	}
	l.done = true
	p[0] = b[0]
	return 1, nil
}

// Check starts nix-store --serve on the machine and completes the
// handshake, which also creates the machine's store if it is new.
func (e *Executor) Check(ctx context.Context) error {
	stream, err := e.transport.Open(ctx, build.Options{})
	if err != nil {
		return err
	}
	stderr := newLineForwarder(io.Discard)
	drained := make(chan struct{})
	go func() {
		if stream.Stderr != nil {
			stderr.copyFrom(stream.Stderr)
		}
		close(drained)
	}()
	_, err = serveproto.NewClient(stream.Stdout, stream.Stdin)
	stream.Stdin.Close()
	<-drained
	if werr := stream.Wait(); err == nil {
		err = werr
	}
	if err != nil {
		if tail := stderr.tail(); tail != "" {
			err = fmt.Errorf("%w (nix-store said: %s)", err, tail)
		}
		return fmt.Errorf("worker %s: %w", e.name, err)
	}
	return nil
}

// awaitPrefetches waits for the copies in flight of any of paths.
func (e *Executor) awaitPrefetches(ctx context.Context, paths []storepath.Path) error {
	e.pfMu.Lock()
	var waits []chan struct{}
	for _, p := range paths {
		if done, ok := e.prefetching[p]; ok {
			waits = append(waits, done)
		}
	}
	e.pfMu.Unlock()
	for _, done := range waits {
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
