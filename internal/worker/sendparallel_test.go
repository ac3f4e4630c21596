package worker_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// countingTransport counts the sessions it starts.
type countingTransport struct {
	worker.Transport
	opened atomic.Int32
}

func (c *countingTransport) Open(ctx context.Context, opts build.Options) (*worker.Stream, error) {
	c.opened.Add(1)
	return c.Transport.Open(ctx, opts)
}

// A large input closure, a chain whose every link refers to the one
// before, goes over several sessions at once, each path after its
// references, and the build sees all of it.
func TestLargeClosureCopiedInParallel(t *testing.T) {
	testutil.RequireTools(t, "nix-store")
	st, _, dir := testutil.Store(t)
	ctx := context.Background()
	bb := testutil.AddBusybox(t, st, "busybox")
	var chain []storepath.Path
	for i := range 12 {
		p := storepath.Path(fmt.Sprintf("/nix/store/%032d-link-%d", i, i))
		p = storepath.Path(strings.ReplaceAll(string(p), "0", "a"))
		var refs []storepath.Path
		contents := strings.Repeat(fmt.Sprintf("link %d ", i), (2<<20)/8)
		if len(chain) > 0 {
			refs = []storepath.Path{chain[len(chain)-1]}
			contents += string(chain[len(chain)-1])
		}
		n := testutil.FileNar(contents)
		if err := st.AddToStore(ctx, &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)), References: refs}, bytes.NewReader(n)); err != nil {
			t.Fatal(err)
		}
		chain = append(chain, p)
	}
	tr := &countingTransport{Transport: &worker.Local{StoreURI: filepath.Join(dir, "worker")}}
	w := worker.NewExecutor("local", st, tr, nil)
	top := chain[len(chain)-1]
	drvPath, drv := basic(t, bb, "uses-chain", "head -c 40 "+string(top)+" > $out")
	drv.InputSrcs = append(drv.InputSrcs, string(top))
	res, err := w.Build(ctx, &build.Request{DrvPath: drvPath, Drv: drv, Account: testutil.Account})
	if err != nil || res.Status != build.Built {
		t.Fatalf("build: %v %+v", err, res)
	}
	if n := tr.opened.Load(); n < 2 {
		t.Errorf("%d sessions started, want more than one for a 24 MiB closure", n)
	}
}
