package serveproto_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// sameModuloTimes compares two serve-protocol streams word by word (every
// field is 8-byte aligned). Words may differ only where both are plausible
// Unix times, the start and stop times of a build.
func sameModuloTimes(t *testing.T, name string, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d bytes, stock nix-store --serve sent %d", name, len(got), len(want))
	}
	isTime := func(w uint64) bool { return w > 1_600_000_000 && w < 4_000_000_000 }
	for off := 0; off+8 <= min(len(got), len(want)); off += 8 {
		g := binary.LittleEndian.Uint64(got[off:])
		w := binary.LittleEndian.Uint64(want[off:])
		if g != w && !(isTime(g) && isTime(w)) {
			t.Errorf("%s: differs at byte %d: got %q, stock sent %q", name, off, got[off:off+8], want[off:off+8])
			return
		}
	}
}

// TestGoldenSessions replays sessions recorded between a stock Nix 2.8
// client and a stock `nix-store --serve --write`, in order, against
// nixfarm's server with the local worker. Every byte nixfarm sends back
// must equal what stock Nix sent, build times aside.
func TestGoldenSessions(t *testing.T) {
	testutil.RequireTools(t, "nix-store")
	st, database, dir := testutil.Store(t)
	executor := worker.NewExecutor("local", st, &worker.Local{StoreURI: filepath.Join(dir, "worker-store")}, nil)
	coord, err := coordinator.New(st, testutil.Scheduler(t, executor), database, filepath.Join(dir, "logs"), coordinator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := &serveproto.Server{Store: st, Builds: coord, TempDir: dir}

	sessions, err := filepath.Glob("testdata/sessions/[0-9]*")
	if err != nil || len(sessions) == 0 {
		t.Fatalf("no sessions: %v", err)
	}
	sort.Strings(sessions)
	for _, s := range sessions {
		in := testutil.ReadGz(t, filepath.Join(s, "in.gz"))
		want := testutil.ReadGz(t, filepath.Join(s, "out.gz"))
		wantErr := testutil.ReadGz(t, filepath.Join(s, "err.gz"))
		var out, stderr bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := srv.Serve(ctx, bytes.NewReader(in), &out, &serveproto.Session{Account: "golden", Write: true, Stderr: &stderr})
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		sameModuloTimes(t, filepath.Base(s), out.Bytes(), want)
		if !bytes.Equal(stderr.Bytes(), wantErr) {
			t.Errorf("%s: stderr %q, stock wrote %q", filepath.Base(s), stderr.Bytes(), wantErr)
		}
	}
}
