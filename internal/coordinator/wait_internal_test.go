package coordinator

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// A build that has ended answers with its final result, though an
// attempt announced its outputs before: the client must not hear of a
// success when the build failed.
func TestWaitPrefersFinalResult(t *testing.T) {
	st, _, _ := testutil.Store(t)
	out := storepath.Path("/nix/store/" + strings.Repeat("o", 32) + "-out")
	n := testutil.FileNar("out")
	if err := st.AddToStore(context.Background(), &store.PathInfo{Path: out, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}, bytes.NewReader(n)); err != nil {
		t.Fatal(err)
	}
	c := &Coordinator{store: st}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i := 0; i < 50; i++ {
		f := &inflight{done: make(chan struct{}), announced: make(chan struct{}), waiters: 1,
			earlyRes: &build.Result{Status: build.Built, Outputs: map[string]storepath.Path{"out": out}},
			res:      &build.Result{Status: build.MiscFailure, ErrorMsg: "copying the outputs failed"}}
		close(f.announced)
		close(f.done)
		res, err := c.wait(context.Background(), f, true, log)
		if err != nil || res.Status != build.MiscFailure {
			t.Fatalf("attempt %d: %v %+v", i, err, res)
		}
	}
}
