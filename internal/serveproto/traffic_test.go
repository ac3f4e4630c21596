package serveproto_test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// added is one call of traffic.Recorder.AddBytes.
type added struct{ record, up, down int64 }

type fakeTraffic struct {
	mu    sync.Mutex
	calls []added
}

func (f *fakeTraffic) AddBytes(ctx context.Context, record int64, up, down int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, added{record, up, down})
	return nil
}

// The NAR a session uploads before BuildDerivation counts in the record
// that answers it, and the NAR of its output fetched after it too; the
// NAR of a path that is no output of the session's requests does not,
// nor does an upload before a request no record answers.
func TestBuildBytes(t *testing.T) {
	st, _, _ := testutil.Store(t)
	ctx := context.Background()
	na, nb := fileNar("an input"), fileNar("the output, built")
	a, _ := storepath.MakeFixedOutput("a", true, nixhash.SHA256Of(na), nil, false)
	ia := &store.PathInfo{Path: a, NarHash: nixhash.SHA256Of(na), NarSize: uint64(len(na)), CA: "fixed:r:sha256:" + nixhash.SHA256Of(na).Nix32()}
	out := storepath.Path("/nix/store/" + strings.Repeat("a", 32) + "-hello")
	if err := st.AddToStore(ctx, &store.PathInfo{Path: out, NarHash: nixhash.SHA256Of(nb), NarSize: uint64(len(nb)), Account: testutil.Account}, bytes.NewReader(nb)); err != nil {
		t.Fatal(err)
	}
	fb := &fakeBuilds{result: &build.Result{Status: build.Built, Record: 7, Outputs: map[string]storepath.Path{"out": out}}}
	tr := &fakeTraffic{}
	c, closeFn := pipeClient(t, &serveproto.Server{Store: st, Builds: fb, Traffic: tr})
	if err := c.AddToStoreNar(ia, bytes.NewReader(na)); err != nil {
		t.Fatal(err)
	}
	if res, err := c.BuildDerivation(storepath.Path(drvPath), testBasic(), build.Options{}); err != nil || res.Status != build.Built {
		t.Fatalf("build %+v %v", res, err)
	}
	for _, p := range []storepath.Path{out, a} {
		if _, err := c.DumpStorePath(p, io.Discard); err != nil {
			t.Fatal(err)
		}
	}
	// Uploaded again (it moved, though the farm had it), then a request
	// that no record answers, then one that has nothing new.
	if err := c.AddToStoreNar(ia, bytes.NewReader(na)); err != nil {
		t.Fatal(err)
	}
	fb.result = &build.Result{Status: build.MiscFailure, ErrorMsg: "could not run"}
	c.BuildPaths([]build.DerivedPath{{Path: storepath.Path(drvPath), Built: true}}, build.Options{})
	fb.result = &build.Result{Status: build.Built, Record: 8, Outputs: map[string]storepath.Path{"out": out}}
	c.BuildDerivation(storepath.Path(drvPath), testBasic(), build.Options{})
	if _, err := c.DumpStorePath(out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := closeFn(); err != nil {
		t.Fatal(err)
	}
	want := []added{{7, int64(len(na)), 0}, {7, 0, int64(len(nb))}, {8, 0, int64(len(nb))}}
	if len(tr.calls) != len(want) {
		t.Fatalf("added %v, want %v", tr.calls, want)
	}
	for i := range want {
		if tr.calls[i] != want[i] {
			t.Errorf("added %v, want %v", tr.calls, want)
		}
	}
}
