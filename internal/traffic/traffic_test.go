package traffic_test

import (
	"context"
	"reflect"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/traffic"
)

type call struct{ record, up, down int64 }

type recorder []call

func (r *recorder) AddBytes(ctx context.Context, record int64, up, down int64) error {
	*r = append(*r, call{record, up, down})
	return nil
}

// What came before a request of several derivations is split among its
// records, each counted once, the remainder to the first; the pending
// count starts again at each request.
func TestSplit(t *testing.T) {
	var rec recorder
	s := traffic.New(&rec, nil)
	ctx := context.Background()
	out := storepath.Path("/nix/store/00000000000000000000000000000000-x")
	s.Uploaded(10)
	s.Uploaded(1)
	s.Requested(ctx, &build.Result{Record: 3, Outputs: map[string]storepath.Path{"out": out}}, &build.Result{Record: 4}, &build.Result{Record: 3}, &build.Result{})
	s.Requested(ctx, &build.Result{Record: 5})
	s.Downloaded(ctx, out, 9)
	s.Downloaded(ctx, "/nix/store/11111111111111111111111111111111-y", 9)
	want := recorder{{3, 6, 0}, {4, 5, 0}, {3, 0, 9}}
	if !reflect.DeepEqual(rec, want) {
		t.Errorf("added %v, want %v", rec, want)
	}
	// Without a recorder, or a session, nothing happens.
	var none *traffic.Session
	none.Uploaded(1)
	none.Requested(ctx, &build.Result{Record: 1})
	traffic.New(nil, nil).Downloaded(ctx, out, 1)
}
