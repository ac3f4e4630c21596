package serveproto_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"path/filepath"
	"slices"
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

// TestGoldenSessions replays sessions recorded between stock Nix clients
// and a stock `nix-store --serve --write` of the same version (one
// directory per client under testdata/sessions), in order, against
// nixfarm's server with the local worker. Every byte nixfarm sends back
// must equal what stock Nix sent, apart from the server's own protocol
// version in the handshake and build times.
func TestGoldenSessions(t *testing.T) {
	testutil.RequireTools(t, "nix-store")
	clients, _ := filepath.Glob("testdata/sessions/nix-*")
	if len(clients) == 0 {
		t.Fatal("no sessions")
	}
	for _, client := range clients {
		t.Run(filepath.Base(client), func(t *testing.T) { replayGolden(t, client) })
	}
}

func replayGolden(t *testing.T, client string) {
	st, database, dir := testutil.Store(t)
	executor := worker.NewExecutor("local", st, &worker.Local{StoreURI: filepath.Join(dir, "worker-store")}, nil)
	sched := testutil.Scheduler(t, executor)
	coord, err := coordinator.New(st, sched, database, filepath.Join(dir, "logs"), coordinator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A build's record may be written after its client has the answer:
	// let it be before the database closes.
	t.Cleanup(func() { sched.Close(); coord.Wait() })
	srv := &serveproto.Server{Store: st, Builds: coord, TempDir: dir}
	for _, s := range testutil.GoldenSessions(t, st, client) {
		name := filepath.Base(s)
		in := testutil.ReadGz(t, filepath.Join(s, "in.gz"))
		want := testutil.ReadGz(t, filepath.Join(s, "out.gz"))
		wantErr := testutil.ReadGz(t, filepath.Join(s, "err.gz"))
		var out, stderr bytes.Buffer
		// Where each BuildDerivation reply's timesBuilt word is: replies
		// follow the 16-byte handshake, each ending where the next starts.
		var statsAt []int
		end := 16
		srv.OnReply(func(cmd uint64) {
			if cmd == serveproto.CmdBuildDerivation {
				n := int(binary.LittleEndian.Uint64(out.Bytes()[end+8:])) // the error message's length
				statsAt = append(statsAt, end+16+(n+7)&^7)
			}
			end = out.Len()
		})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := srv.Serve(ctx, bytes.NewReader(in), &out, &serveproto.Session{Account: testutil.Account, Write: true, Stderr: &stderr})
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := out.Bytes()
		if len(in) < 16 || len(got) < 16 || len(want) < 16 {
			t.Fatalf("%s: no handshake", name)
		}
		// The handshake is both magics and versions. Each server states
		// its own version, and both must settle on the same one with the
		// client; what follows is spoken at that version.
		clientVer := binary.LittleEndian.Uint64(in[8:])
		ours, stock := binary.LittleEndian.Uint64(got[8:]), binary.LittleEndian.Uint64(want[8:])
		if min(clientVer, ours) != min(clientVer, stock) {
			t.Fatalf("%s: the client offered 0x%x, stock answered 0x%x, nixfarm 0x%x: the recording cannot be replayed", name, clientVer, stock, ours)
		}
		got = slices.Concat(got[:8], want[8:16], got[16:])
		// Up to a difference that fails the test, stock's replies are
		// where nixfarm's are.
		got = testutil.UnsetBuildStats(got, want, statsAt, statsAt)
		sameModuloTimes(t, name, got, want)
		if !bytes.Equal(stderr.Bytes(), wantErr) {
			t.Errorf("%s: stderr %q, stock wrote %q", name, stderr.Bytes(), wantErr)
		}
	}
}
