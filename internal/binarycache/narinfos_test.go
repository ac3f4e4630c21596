package binarycache_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nixfarm/nixfarm/internal/binarycache"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// countingView counts the lookups a narinfo costs. It hides the view's
// one-lookup query, so each narinfo rendered is one QueryPathInfo.
type countingView struct {
	store.Store
	infos *atomic.Int32
}

func (v countingView) QueryPathInfo(ctx context.Context, p storepath.Path) (*store.PathInfo, error) {
	v.infos.Add(1)
	return v.Store.QueryPathInfo(ctx, p)
}

// A narinfo asked for again, with nothing changed in the store, costs no
// lookup; a change anywhere (here a signature) is seen at once; and one
// account's rendering is never another's.
func TestNarInfosKept(t *testing.T) {
	var infos atomic.Int32
	f := newFixture(t, func(c *binarycache.Config) {
		view := c.View
		c.View = func(account string) store.Store { return countingView{view(account), &infos} }
	})
	info := add(t, f.alice, "kept", []byte("kept"))
	path := "/" + info.Path.HashPart() + ".narinfo"
	get := func(token string) (int, string) {
		resp, body := f.do(t, req{path: path, token: token})
		return resp.StatusCode, string(body)
	}
	if code, body := get(f.aliceTok); code != 200 || strings.Contains(body, "Sig:") {
		t.Fatalf("first: %d %q", code, body)
	}
	if code, _ := get(f.aliceTok); code != 200 || infos.Load() != 1 {
		t.Errorf("asked again: %d, %d lookups in all, want 1", code, infos.Load())
	}
	sig := "k-1:" + strings.Repeat("A", 86) + "=="
	if err := f.alice.AddSignatures(context.Background(), info.Path, []string{sig}); err != nil {
		t.Fatal(err)
	}
	if code, body := get(f.aliceTok); code != 200 || !strings.Contains(body, "Sig: "+sig) {
		t.Errorf("after a signature was added: %d %q", code, body)
	}
	// Bob does not get alice's rendering.
	if code, _ := get(f.bobTok); code != 404 {
		t.Errorf("bob: %d, want 404", code)
	}
}
