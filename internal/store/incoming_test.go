package store_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// bigNar is the NAR of a file large enough to arrive in several pieces.
func bigNar(t *testing.T) []byte {
	return fileNar(t, strings.Repeat("0123456789abcdef", 64<<10))
}

// An expected path is served while it is added: its info at once, its NAR
// as the bytes arrive, its end only once the NAR is verified.
func TestExpectedPathIsServedWhileAdded(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	n := bigNar(t)
	p := path("streamed", 's')
	info := &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)), Ultimate: true, Account: "alice"}
	done := s.Expect([]*store.PathInfo{info})
	defer done()

	got, err := s.QueryPathInfo(ctx, p)
	if err != nil || got.NarSize != info.NarSize || !got.Ultimate {
		t.Fatalf("declared info: %+v, %v", got, err)
	}
	if valid, _ := s.ValidPaths(ctx, []storepath.Path{p}); len(valid) != 0 {
		t.Fatal("an expected path counts as valid before it is added")
	}
	rc, _, err := s.NarFromPath(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()

	// Feed the NAR in pieces; the reader sees the first piece before the
	// rest is written.
	pr, pw := io.Pipe()
	added := make(chan error, 1)
	go func() { added <- s.AddToStore(ctx, info, pr) }()
	half := len(n) / 2
	if _, err := pw.Write(n[:half]); err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 4096)
	if _, err := io.ReadFull(rc, first); err != nil {
		t.Fatalf("reading the first bytes while the rest is missing: %v", err)
	}
	if !bytes.Equal(first, n[:4096]) {
		t.Fatal("first bytes differ")
	}
	go func() { pw.Write(n[half:]); pw.Close() }()
	rest, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(first, rest...), n) {
		t.Fatalf("streamed NAR differs: %d bytes, want %d", 4096+len(rest), len(n))
	}
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	if valid, _ := s.ValidPaths(ctx, []storepath.Path{p}); len(valid) != 1 {
		t.Fatal("path not registered after the add")
	}
	// A reader that comes later reads the registered NAR.
	rc2, _, err := s.NarFromPath(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := io.ReadAll(rc2)
	rc2.Close()
	if !bytes.Equal(again, n) {
		t.Fatal("registered NAR differs")
	}
}

// A reader of an expected path whose NAR turns out wrong gets an error,
// not the end of the NAR, and nothing is registered.
func TestExpectedPathThatFailsEndsReadersWithAnError(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	n := bigNar(t)
	p := path("lying", 'l')
	wrong := nixhash.SHA256Of([]byte("something else"))
	info := &store.PathInfo{Path: p, NarHash: wrong, NarSize: uint64(len(n))}
	done := s.Expect([]*store.PathInfo{info})
	defer done()
	rc, _, err := s.NarFromPath(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	read := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(rc)
		read <- err
	}()
	if err := s.AddToStore(ctx, info, bytes.NewReader(n)); !errors.Is(err, store.ErrHashMismatch) {
		t.Fatalf("add: %v, want a hash mismatch", err)
	}
	select {
	case err := <-read:
		if !errors.Is(err, store.ErrHashMismatch) {
			t.Fatalf("reader ended with %v, want the hash mismatch", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reader still waiting after the add failed")
	}
	if _, err := s.QueryPathInfo(ctx, p); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after the failed add: %v, want not found", err)
	}
}

// An expectation given up without an add ends its readers.
func TestExpectationGivenUp(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	n := bigNar(t)
	p := path("never", 'n')
	done := s.Expect([]*store.PathInfo{{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}})
	rc, _, err := s.NarFromPath(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	read := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(rc)
		read <- err
	}()
	done()
	if err := <-read; err == nil {
		t.Fatal("reader of a path never added got a whole NAR")
	}
	if _, err := s.QueryPathInfo(ctx, p); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after giving up: %v, want not found", err)
	}
	// A reader whose context ends stops waiting.
	done = s.Expect([]*store.PathInfo{{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}})
	defer done()
	cctx, cancel := context.WithCancel(ctx)
	rc, _, err = s.NarFromPath(cctx, p)
	if err != nil {
		t.Fatal(err)
	}
	go cancel()
	if _, err := io.ReadAll(rc); !errors.Is(err, context.Canceled) {
		t.Fatalf("reader after cancel: %v", err)
	}
}

// While an expected path is added, every lookup finds it, through its
// expectation or its registration: there is no moment between the two.
func TestExpectedPathNeverMissingDuringAdd(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	for i := 0; i < 100; i++ {
		n := fileNar(t, fmt.Sprint("small output ", i))
		p := storepath.Path(fmt.Sprintf("%s/%032d-out", storepath.Dir, i))
		info := &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}
		done := s.Expect([]*store.PathInfo{info})
		added := make(chan error, 1)
		go func() { added <- s.AddToStore(ctx, info, bytes.NewReader(n)) }()
		for finished := false; !finished; {
			select {
			case err := <-added:
				if err != nil {
					t.Fatal(err)
				}
				finished = true
			default:
			}
			if _, err := s.QueryPathInfo(ctx, p); err != nil {
				t.Fatalf("path %d during its add: QueryPathInfo: %v", i, err)
			}
			rc, _, err := s.NarFromPath(ctx, p)
			if err != nil {
				t.Fatalf("path %d during its add: NarFromPath: %v", i, err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, n) {
				t.Fatalf("path %d during its add: read %d bytes, %v", i, len(got), err)
			}
		}
		done()
	}
}

// holdWriteLock takes the database's write lock until the returned
// function (or the end of the test) releases it.
func holdWriteLock(t *testing.T, database *sql.DB) (release func()) {
	t.Helper()
	tx, err := database.BeginTx(context.Background(), nil) // BEGIN IMMEDIATE
	if err != nil {
		t.Fatal(err)
	}
	release = func() { tx.Rollback() }
	t.Cleanup(release)
	return release
}

// waitForBlob waits until the blob of a NAR is committed.
func waitForBlob(t *testing.T, dir string, h nixhash.Hash) {
	t.Helper()
	key := h.Nix32()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "nar", key[:2], key)); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the NAR was not committed")
		}
	}
}

// Of two adds of one expected path, only the first streams to readers:
// a reader never mixes the two, and never takes part of a NAR for all of it.
func TestConcurrentAddsOfAnExpectedPath(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	n := bigNar(t)
	p := path("twice", 't')
	info := &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}
	done := s.Expect([]*store.PathInfo{info})
	defer done()
	rc, _, err := s.NarFromPath(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()

	// A first add streams half the NAR to the reader...
	pr, pw := io.Pipe()
	first := make(chan error, 1)
	firstInfo := *info
	go func() { first <- s.AddToStore(ctx, &firstInfo, pr) }()
	if _, err := pw.Write(n[:len(n)/2]); err != nil {
		t.Fatal(err)
	}
	start := make([]byte, 4096)
	if _, err := io.ReadFull(rc, start); err != nil {
		t.Fatal(err)
	}
	// ...while a second one adds the whole NAR...
	secondInfo := *info
	if err := s.AddToStore(ctx, &secondInfo, bytes.NewReader(n)); err != nil {
		t.Fatal(err)
	}
	// ...and then the first one fails.
	pw.CloseWithError(errors.New("connection lost"))
	if err := <-first; err == nil {
		t.Fatal("the first add succeeded without its NAR")
	}
	rest, err := io.ReadAll(rc)
	if err == nil && !bytes.Equal(append(start, rest...), n) {
		t.Fatalf("reader got %d bytes that differ from the NAR's %d, and no error", len(start)+len(rest), len(n))
	}
	if valid, _ := s.ValidPaths(ctx, []storepath.Path{p}); len(valid) != 1 {
		t.Fatal("the second add did not register the path")
	}
}

// While a path's registration waits for the database, its readers wait
// for it too, but each within its own context.
func TestReaderOfAPathBeingRegisteredCanGiveUp(t *testing.T) {
	ctx := context.Background()
	s, database, dir := testutil.Store(t)
	n := bigNar(t)
	p := path("waiting", 'w')
	info := &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}
	done := s.Expect([]*store.PathInfo{info})
	defer done()
	release := holdWriteLock(t, database)
	added := make(chan error, 1)
	go func() { added <- s.AddToStore(ctx, info, bytes.NewReader(n)) }()
	waitForBlob(t, dir, nixhash.SHA256Of(n))

	rctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	rc, _, err := s.NarFromPath(rctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	read := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(rc)
		read <- err
	}()
	select {
	case err := <-read:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("reader ended with %v, want its deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a reader is stuck past its deadline while the path's registration waits")
	}
	release()
	if err := <-added; err != nil {
		t.Fatal(err)
	}
}

// A reader of a NAR whose path then fails to register gets an error, not
// the end of the NAR.
func TestFailedRegistrationEndsReadersWithAnError(t *testing.T) {
	ctx := context.Background()
	s, database, dir := testutil.Store(t)
	add(t, s, path("first", 'f'), "first")
	n := bigNar(t)
	p := path("second", 'f') // the same hash part: registering it fails
	info := &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}
	done := s.Expect([]*store.PathInfo{info})
	defer done()
	release := holdWriteLock(t, database)
	added := make(chan error, 1)
	go func() { added <- s.AddToStore(ctx, info, bytes.NewReader(n)) }()
	waitForBlob(t, dir, nixhash.SHA256Of(n))

	rc, _, err := s.NarFromPath(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	read := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(rc)
		read <- err
	}()
	release()
	if err := <-added; err == nil {
		t.Fatal("registered a path whose hash part is taken")
	}
	select {
	case err := <-read:
		if err == nil {
			t.Fatal("reader got the whole NAR of a path that failed to register")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reader still waiting after the add failed")
	}
}

// An expectation given up without an add does not hide a path that is
// registered all the same.
func TestExpectationGivenUpForARegisteredPath(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	p := path("there", 't')
	info := add(t, s, p, "there already")
	done := s.Expect([]*store.PathInfo{info})
	rc, _, err := s.NarFromPath(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	done()
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, fileNar(t, "there already")) {
		t.Fatalf("read %d bytes, %v; want the registered NAR", len(got), err)
	}
}
