package daemonproto_test

import (
	"bytes"
	"database/sql"
	"io"
	"path/filepath"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/daemonproto"
	"github.com/nixfarm/nixfarm/internal/metrics"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// recordBytes reads the bytes a build record holds, by its derivation.
func recordBytes(t *testing.T, database *sql.DB, drvPath storepath.Path) (up, down int64) {
	t.Helper()
	if err := database.QueryRow(`SELECT bytes_uploaded, bytes_downloaded FROM builds WHERE drv_path = ? ORDER BY id DESC LIMIT 1`,
		string(drvPath)).Scan(&up, &down); err != nil {
		t.Fatalf("record of %s: %v", drvPath, err)
	}
	return up, down
}

// The NARs a session uploads before a build request count in that
// request's record, and the output NARs it downloads after it too; what
// it fetches that is no output of its requests does not. The metrics
// count the same.
func TestBuildBytes(t *testing.T) {
	st, database, dir := testutil.Store(t)
	fb := &fakeBuilder{st: st}
	m := metrics.New(nil)
	coord, err := coordinator.New(st, testutil.Scheduler(t, fb), database, filepath.Join(dir, "logs"), coordinator.Options{Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	f := &farm{st: st, builder: fb, srv: &daemonproto.Server{Store: st, Builds: coord, TempDir: dir, Traffic: coord}}
	c, closeFn := f.connect(t, 0x122)

	// BuildDerivation after AddMultipleToStore.
	n1, i1 := textNar("first input")
	n2, i2 := textNar("second input, longer")
	if err := c.AddMultipleToStore([]*store.PathInfo{i1, i2}, []io.Reader{bytes.NewReader(n1), bytes.NewReader(n2)}); err != nil {
		t.Fatal(err)
	}
	drvPath, drv, _ := basic(t, "counted")
	if res, err := c.BuildDerivation(drvPath, drv); err != nil || res.Status != build.Built {
		t.Fatalf("build: %+v %v", res, err)
	}
	var out bytes.Buffer
	outNar, err := c.NarFromPath(drv.OutputPaths()["out"], &out)
	if err != nil || outNar == 0 {
		t.Fatal(err)
	}
	if _, err := c.NarFromPath(i1.Path, io.Discard); err != nil { // an input, not an output
		t.Fatal(err)
	}
	if up, down := recordBytes(t, database, drvPath); up != int64(len(n1)+len(n2)) || down != outNar {
		t.Errorf("record: uploaded %d, downloaded %d; want %d and %d", up, down, len(n1)+len(n2), outNar)
	}

	// A request of two derivations splits what came before it; an upload
	// the farm has already counts again: it moved.
	_, _, a := basic(t, "split-a")
	_, _, b := basic(t, "split-b")
	textA, textB := string(a.Bytes()), string(b.Bytes())
	aPath, err := c.AddTextToStore("split-a.drv", textA, nil)
	if err != nil {
		t.Fatal(err)
	}
	bPath, err := c.AddTextToStore("split-b.drv", textB, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddToStoreNar(i1, bytes.NewReader(n1)); err != nil {
		t.Fatal(err)
	}
	total := int64(len(textA) + len(textB) + len(n1))
	results, err := c.BuildPathsWithResults([]build.DerivedPath{{Path: aPath, Built: true}, {Path: bPath, Built: true}})
	if err != nil || len(results) != 2 || results[0].Status != build.Built || results[1].Status != build.Built {
		t.Fatalf("BuildPathsWithResults %+v %v", results, err)
	}
	upA, _ := recordBytes(t, database, aPath)
	upB, _ := recordBytes(t, database, bPath)
	if upA+upB != total || upA-upB > 1 || upB > upA {
		t.Errorf("split: %d and %d, want %d in halves", upA, upB, total)
	}
	closeFn()
	coord.Wait()

	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, fam := range fams {
		if n := fam.GetName(); n == "nixfarm_build_bytes_uploaded_total" || n == "nixfarm_build_bytes_downloaded_total" {
			got[n] = fam.GetMetric()[0].GetCounter().GetValue()
		}
	}
	if got["nixfarm_build_bytes_uploaded_total"] != float64(int64(len(n1)+len(n2))+total) || got["nixfarm_build_bytes_downloaded_total"] != float64(outNar) {
		t.Errorf("metrics %v", got)
	}
}
