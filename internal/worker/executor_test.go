package worker_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// basic returns an input-addressed BasicDerivation running script with
// busybox, and its .drv path.
func basic(t *testing.T, bb storepath.Path, name, script string) (storepath.Path, *derivation.Basic) {
	t.Helper()
	d := &derivation.Derivation{
		Outputs:   map[string]derivation.Output{"out": {}},
		InputSrcs: []string{string(bb)},
		Platform:  "x86_64-linux",
		Builder:   string(bb) + "/bin/sh",
		Args:      []string{"-c", script},
		Env:       map[string]string{"PATH": string(bb) + "/bin"},
	}
	drvPath := testutil.Derivation(t, name, d, nil)
	return drvPath, d.Basic(name, nil)
}

func TestBuild(t *testing.T) {
	testutil.RequireTools(t, "nix-store")
	st, _, dir := testutil.Store(t)
	bb := testutil.AddBusybox(t, st, "busybox")
	w := worker.NewExecutor("local", st, &worker.Local{StoreURI: filepath.Join(dir, "worker")}, nil)
	ctx := context.Background()

	drvPath, drv := basic(t, bb, "worker-test", "echo building; echo "+string(bb)+" > $out")
	var log bytes.Buffer
	res, err := w.Build(ctx, &build.Request{DrvPath: drvPath, Drv: drv, Account: "alice", Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != build.Built || res.Worker != "local" || !res.StopTime.After(res.StartTime) {
		t.Errorf("result %+v", res)
	}
	if !strings.Contains(log.String(), "building") {
		t.Errorf("log %q", log.String())
	}
	out := res.Outputs["out"]
	info, err := st.QueryPathInfo(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Ultimate || info.Account != "alice" || info.Deriver != drvPath || len(info.References) != 1 || info.References[0] != bb {
		t.Errorf("output info %+v", info)
	}

	// A failing build is a result, not an error, and registers nothing.
	drvPath, drv = basic(t, bb, "worker-fail", "echo oops >&2; exit 3")
	log.Reset()
	res, err = w.Build(ctx, &build.Request{DrvPath: drvPath, Drv: drv, Account: "alice", Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status.Success() || !strings.Contains(res.ErrorMsg, "failed with exit code 3") || !strings.Contains(log.String(), "oops") {
		t.Errorf("failure: %+v, log %q", res, log.String())
	}
	if _, err := st.QueryPathInfo(ctx, drv.OutputPaths()["out"]); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("failed output registered: %v", err)
	}
}

func TestMissingNix(t *testing.T) {
	st, _, _ := testutil.Store(t)
	w := worker.NewExecutor("local", st, &worker.Local{NixStore: "/nonexistent/nix-store"}, nil)
	_, drv := basic(t, storepath.Path("/nix/store/"+strings.Repeat("b", 32)+"-bb"), "x", "true")
	_, err := w.Build(context.Background(), &build.Request{DrvPath: storepath.Path("/nix/store/" + strings.Repeat("d", 32) + "-x.drv"), Drv: drv})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/nix-store") {
		t.Errorf("error %v does not name the missing binary", err)
	}
}

// Check creates a new machine store and says when nix-store cannot run.
func TestCheck(t *testing.T) {
	testutil.RequireTools(t, "nix-store")
	st, _, dir := testutil.Store(t)
	storeDir := filepath.Join(dir, "fresh-worker-store")
	w := worker.NewExecutor("local", st, &worker.Local{StoreURI: storeDir}, nil)
	if err := w.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(storeDir, "nix", "var", "nix", "db", "db.sqlite")); err != nil {
		t.Errorf("the machine's store was not created: %v", err)
	}
	broken := worker.NewExecutor("local", st, &worker.Local{NixStore: "/nonexistent/nix-store"}, nil)
	if err := broken.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "/nonexistent/nix-store") {
		t.Errorf("error %v does not name the missing binary", err)
	}
}
