package daemonproto_test

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/narinfo"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// fakeUpstream offers one path to alice only, and adds it to her view
// when asked to substitute it.
type fakeUpstream struct {
	st       store.Store // alice's view
	offered  storepath.Path
	mu       sync.Mutex
	accounts []string
}

func (u *fakeUpstream) Substitutable(ctx context.Context, account string, paths []storepath.Path) (map[storepath.Path]*narinfo.NarInfo, error) {
	out := map[storepath.Path]*narinfo.NarInfo{}
	for _, p := range paths {
		if p == u.offered && account == "alice" {
			out[p] = &narinfo.NarInfo{StorePath: p, Deriver: storepath.Path("/nix/store/" + strings.Repeat("d", 32) + "-x.drv"), FileSize: 10, NarSize: 100}
		}
	}
	return out, nil
}

func (u *fakeUpstream) Substitute(ctx context.Context, account string, paths []storepath.Path, progress build.Progress) error {
	u.mu.Lock()
	u.accounts = append(u.accounts, account)
	u.mu.Unlock()
	for _, p := range paths {
		if p == u.offered && account == "alice" {
			done := progress.Copying(p, "http://upstream.test")
			n := testutil.FileNar("from upstream")
			err := u.st.AddToStore(ctx, &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}, bytes.NewReader(n))
			done(err)
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// The substitution operations answer from the farm's upstream caches for
// the session's account: QuerySubstitutablePathInfos, and QueryValidPaths
// with its substitute flag, which fetches rather than have the client
// upload.
func TestUpstreamOperations(t *testing.T) {
	f := newFarm(t)
	offered := storepath.Path("/nix/store/" + strings.Repeat("w", 32) + "-upstream")
	other := storepath.Path("/nix/store/" + strings.Repeat("n", 32) + "-nowhere")
	up := &fakeUpstream{st: f.st.Store, offered: offered}
	f.srv.Upstream = up
	c, closeFn := f.connect(t, 0x126)
	defer closeFn()

	infos, err := c.QuerySubstitutablePathInfos([]storepath.Path{offered, other})
	if err != nil || len(infos) != 1 || infos[offered] == nil || infos[offered].NarSize != 100 || infos[offered].FileSize != 10 ||
		infos[offered].Deriver == "" {
		t.Fatalf("QuerySubstitutablePathInfos: %v %+v", err, infos)
	}
	// (QueryMissing asks the coordinator, whose upstream caches
	// coordinator's TestMissingReportsSubstitutes covers.)
	if m, err := c.QueryMissingAll([]build.DerivedPath{{Path: other}}); err != nil || len(m.Unknown) != 1 {
		t.Fatalf("QueryMissing: %v %+v", err, m)
	}
	// Without the substitute flag nothing is fetched.
	if valid, err := c.QueryValidPaths([]storepath.Path{offered}, false); err != nil || len(valid) != 0 {
		t.Fatalf("QueryValidPaths without substitute: %v %v", valid, err)
	}
	valid, err := c.QueryValidPaths([]storepath.Path{offered, other}, true)
	if err != nil || len(valid) != 1 || valid[0] != offered {
		t.Fatalf("QueryValidPaths with substitute: %v %v", valid, err)
	}
	if len(up.accounts) != 1 || up.accounts[0] != "alice" {
		t.Errorf("substituted for %v, want alice once", up.accounts)
	}
}
