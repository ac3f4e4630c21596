package daemonproto

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// cursor decodes a recorded stream field by field, so that each reply's
// exact bytes can be cut out of it.
type cursor struct {
	b   []byte
	pos int
	// stats holds where each BuildResult's timesBuilt word starts in the
	// last reply, counted from the reply's start (1.29 on).
	stats []int
}

func (c *cursor) u64() uint64 {
	if c.pos+8 > len(c.b) {
		panic(fmt.Sprintf("stream ends at %d", len(c.b)))
	}
	v := binary.LittleEndian.Uint64(c.b[c.pos:])
	c.pos += 8
	return v
}

func (c *cursor) str() string {
	n := int(c.u64())
	s := string(c.b[c.pos : c.pos+n])
	c.pos += (n + 7) &^ 7
	return s
}

func (c *cursor) strs() []string {
	n := int(c.u64())
	out := make([]string, n)
	for i := range out {
		out[i] = c.str()
	}
	return out
}

func (c *cursor) nar() {
	n, err := nar.Copy(io.Discard, bytes.NewReader(c.b[c.pos:]))
	if err != nil {
		panic(err)
	}
	c.pos += int(n)
}

// frames skips log frames up to the operation's end, returning the
// terminating frame and the build log lines seen.
func (c *cursor) frames(ver uint64) (uint64, []string) {
	var lines []string
	for {
		switch msg := c.u64(); msg {
		case stderrLast:
			return msg, lines
		case stderrError:
			if minor(ver) >= 26 {
				c.str()
				c.u64()
				c.str()
				lines = append(lines, "error: "+c.str())
				c.u64()
				for n := c.u64(); n > 0; n-- {
					c.u64()
					c.str()
				}
			} else {
				lines = append(lines, "error: "+c.str())
				c.u64()
			}
			return msg, lines
		case stderrNext:
			c.str()
		case stderrStartActivity:
			c.u64()
			c.u64()
			c.u64()
			c.str()
			c.fields()
			c.u64()
		case stderrStopActivity:
			c.u64()
		case stderrResult:
			c.u64()
			typ := c.u64()
			f := c.fields()
			if typ == resBuildLogLine && len(f) > 0 {
				lines = append(lines, f[0])
			}
		default:
			panic(fmt.Sprintf("unknown frame 0x%x at %d", msg, c.pos-8))
		}
	}
}

func (c *cursor) fields() []string {
	var out []string
	for n := c.u64(); n > 0; n-- {
		if c.u64() == fieldTypeInt {
			c.u64()
		} else {
			out = append(out, c.str())
		}
	}
	return out
}

func (c *cursor) buildResult(ver uint64) {
	c.u64()
	c.str()
	if minor(ver) >= 29 {
		c.stats = append(c.stats, c.pos)
		c.u64()
		c.u64()
		c.u64()
		c.u64()
	}
	if minor(ver) >= 37 {
		for i := 0; i < 2; i++ {
			if c.u64() == 1 {
				c.u64()
			}
		}
	}
	if minor(ver) >= 28 {
		for n := c.u64(); n > 0; n-- {
			c.str()
			c.str()
		}
	}
}

// reply cuts out the reply of op that follows STDERR_LAST.
func (c *cursor) reply(op Op, ver uint64) []byte {
	start := c.pos
	c.stats = c.stats[:0]
	defer func() {
		for i := range c.stats {
			c.stats[i] -= start
		}
	}()
	switch op {
	case OpQueryValidPaths:
		c.strs()
	case OpAddMultipleToStore, OpAddToStoreNar, OpSetOptions:
	case OpBuildDerivation:
		c.buildResult(ver)
	case OpQueryPathInfo:
		if c.u64() == 1 {
			c.str()
			c.str()
			c.strs()
			c.u64()
			c.u64()
			c.u64()
			c.strs()
			c.str()
		}
	case OpNarFromPath:
		c.nar()
	case OpBuildPathsWithResults:
		for n := c.u64(); n > 0; n-- {
			c.str()
			c.buildResult(ver)
		}
	case OpQueryMissing:
		c.strs()
		c.strs()
		c.strs()
		c.u64()
		c.u64()
	default:
		panic("no reply decoder for " + op.String())
	}
	return c.b[start:c.pos]
}

// sameModuloTimes compares replies word by word; words may differ only
// where both are plausible Unix times (build and registration times).
func sameModuloTimes(got, want []byte) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d bytes, stock sent %d", len(got), len(want))
	}
	isTime := func(w uint64) bool { return w > 1_600_000_000 && w < 4_000_000_000 }
	for off := 0; off+8 <= len(got); off += 8 {
		g := binary.LittleEndian.Uint64(got[off:])
		w := binary.LittleEndian.Uint64(want[off:])
		if g != w && !(isTime(g) && isTime(w)) {
			return fmt.Errorf("differs at byte %d: got %q, stock sent %q", off, got[off:off+8], want[off:off+8])
		}
	}
	return nil
}

// greeting is what a server says in the handshake, from its version on.
type greeting struct {
	version    uint64
	features   []string // 1.38 on
	nixVersion string   // 1.33 on
	trusted    uint64   // 1.35 on: 0 unknown, 1 trusted, 2 not
}

// handshake reads a server's side of the handshake at the negotiated
// version ver, up to the end of its startup log frames.
func (c *cursor) handshake(ver uint64) (greeting, error) {
	var h greeting
	if m := c.u64(); m != Magic2 {
		return h, fmt.Errorf("magic 0x%x", m)
	}
	h.version = c.u64()
	if minor(ver) >= 38 {
		h.features = c.strs()
	}
	if minor(ver) >= 33 {
		h.nixVersion = c.str()
	}
	if minor(ver) >= 35 {
		h.trusted = c.u64()
	}
	if term, _ := c.frames(ver); term != stderrLast {
		return h, fmt.Errorf("handshake ended with 0x%x", term)
	}
	return h, nil
}

// TestGoldenSessions replays sessions recorded between stock Nix clients
// and a stock `nix-daemon --stdio` of the same version (one directory per
// client under testdata/sessions), in order, against nixfarm with the real
// local worker. The handshake must offer what stock offers, apart from the
// server's own protocol and Nix versions. For every operation the reply
// must end the same way (LAST or ERROR) and carry the same bytes, times
// aside; log frames may differ, but the build's log lines must arrive as
// build-log-line results.
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
	for _, s := range testutil.GoldenSessions(t, st, client) {
		name := filepath.Base(s)
		in := testutil.ReadGz(t, filepath.Join(s, "in.gz"))
		stock := testutil.ReadGz(t, filepath.Join(s, "out.gz"))
		var ops []Op
		srv := &Server{Store: st, Builds: coord, TempDir: dir, onOp: func(op Op) { ops = append(ops, op) }}
		var out bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := srv.Serve(ctx, bytes.NewReader(in), &out, &Session{Account: testutil.Account})
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}

		// The client's version word follows its magic; both servers
		// answer at the lower of theirs and the client's.
		clientVer := binary.LittleEndian.Uint64(in[8:])
		ver := min(clientVer, Version)
		ours, theirs := &cursor{b: out.Bytes()}, &cursor{b: stock}
		hOurs, err := ours.handshake(ver)
		if err != nil {
			t.Fatalf("%s: nixfarm's handshake: %v", name, err)
		}
		hStock, err := theirs.handshake(ver)
		if err != nil {
			t.Fatalf("%s: stock's handshake: %v", name, err)
		}
		if stockVer := min(clientVer, hStock.version); stockVer != ver {
			t.Fatalf("%s: the client offered %s, stock answered at %s, nixfarm at %s: the recording cannot be replayed",
				name, versionString(clientVer), versionString(stockVer), versionString(ver))
		}
		// The server's own version and its Nix version may differ; the
		// rest of what it offers must not.
		if !slices.Equal(hOurs.features, hStock.features) || hOurs.trusted != hStock.trusted {
			t.Errorf("%s: nixfarm offered features %q, trusted %d; stock %q, trusted %d",
				name, hOurs.features, hOurs.trusted, hStock.features, hStock.trusted)
		}

		var logLines []string
		for i, op := range ops {
			termOurs, lines := ours.frames(ver)
			termStock, stockLines := theirs.frames(ver)
			logLines = append(logLines, lines...)
			if termOurs != termStock {
				t.Fatalf("%s: op %d (%s): nixfarm ended with 0x%x %v, stock with 0x%x %v", name, i, op, termOurs, lines, termStock, stockLines)
			}
			if termOurs != stderrLast {
				continue
			}
			got, want := ours.reply(op, ver), theirs.reply(op, ver)
			got = testutil.UnsetBuildStats(got, want, ours.stats, theirs.stats)
			if err := sameModuloTimes(got, want); err != nil {
				t.Errorf("%s: op %d (%s): %v", name, i, op, err)
			}
		}
		if ours.pos != len(ours.b) || theirs.pos != len(theirs.b) {
			t.Errorf("%s: unread output: nixfarm %d of %d bytes, stock %d of %d", name, ours.pos, len(ours.b), theirs.pos, len(theirs.b))
		}
		if name == "01-build" && !strings.Contains(strings.Join(logLines, "\n"), "building golden\nsecond line") {
			t.Errorf("%s: build log lines %q", name, logLines)
		}
	}
}
