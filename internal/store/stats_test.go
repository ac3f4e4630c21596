package store_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

func TestStats(t *testing.T) {
	st, _, _ := testutil.Store(t)
	ctx := context.Background()
	if paths, size, err := st.Local.Stats(ctx); err != nil || paths != 0 || size != 0 {
		t.Fatalf("empty store: %d paths, %d bytes, %v", paths, size, err)
	}
	var want int64
	for _, contents := range []string{"one", "two, longer"} {
		n := testutil.FileNar(contents)
		h := nixhash.SHA256Of(n)
		p, err := storepath.MakeFixedOutput("f", true, h, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.AddToStore(ctx, &store.PathInfo{Path: p, NarHash: h, NarSize: uint64(len(n)), CA: "fixed:r:sha256:" + h.Nix32()}, bytes.NewReader(n)); err != nil {
			t.Fatal(err)
		}
		want += int64(len(n))
	}
	if paths, size, err := st.Local.Stats(ctx); err != nil || paths != 2 || size != want {
		t.Errorf("%d paths, %d bytes, %v; want 2 and %d", paths, size, err, want)
	}
}
