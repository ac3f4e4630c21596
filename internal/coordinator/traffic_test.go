package coordinator_test

import (
	"context"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/store"
)

// A result names the record that answers it, built or cached, and
// AddBytes adds to that record, before or after the build's end is
// recorded.
func TestResultRecordAndAddBytes(t *testing.T) {
	f := newFarm(t)
	ctx := context.Background()
	p := f.addDrv(t, "counted", []string{"out"}, nil)
	d, err := store.ReadDerivation(ctx, f.st, p)
	if err != nil {
		t.Fatal(err)
	}
	req := &build.Request{DrvPath: p, Drv: d.Basic("counted", nil), Account: "alice"}
	built, err := f.coord.BuildDerivation(ctx, req)
	if err != nil || built.Status != build.Built || built.Record == 0 {
		t.Fatalf("build: %+v %v", built, err)
	}
	if err := f.coord.AddBytes(ctx, built.Record, 100, 0); err != nil {
		t.Fatal(err)
	}
	cached, err := f.coord.BuildDerivation(ctx, req)
	if err != nil || cached.Status != build.AlreadyValid || cached.Record == 0 || cached.Record == built.Record {
		t.Fatalf("cached: %+v %v", cached, err)
	}
	f.coord.Wait()
	for _, add := range [][2]int64{{20, 7}, {0, 5}, {-1, 3}} { // a negative count adds nothing
		if err := f.coord.AddBytes(ctx, built.Record, add[0], add[1]); err != nil {
			t.Fatal(err)
		}
	}
	var up, down int64
	if err := f.db.QueryRow(`SELECT bytes_uploaded, bytes_downloaded FROM builds WHERE id = ?`, built.Record).Scan(&up, &down); err != nil {
		t.Fatal(err)
	}
	if up != 120 || down != 12 {
		t.Errorf("record %d holds %d up, %d down; want 120 and 12", built.Record, up, down)
	}
	if err := f.db.QueryRow(`SELECT bytes_uploaded + bytes_downloaded FROM builds WHERE id = ?`, cached.Record).Scan(&up); err != nil || up != 0 {
		t.Errorf("the cached answer's record holds %d bytes (%v)", up, err)
	}
}
