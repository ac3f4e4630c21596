package worker_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// addBusybox puts a directory holding /bin/busybox and bin/sh into the farm
// store as a source path, as `nix-store --add` would.
func addBusybox(t *testing.T, st store.Store) storepath.Path {
	t.Helper()
	testutil.RequireFile(t, "/bin/busybox")
	dir := filepath.Join(t.TempDir(), "busybox")
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755)
	os.Symlink("busybox", filepath.Join(dir, "bin", "sh"))
	var n bytes.Buffer
	if err := nar.DumpPath(&n, dir); err != nil {
		t.Fatal(err)
	}
	h := nixhash.SHA256Of(n.Bytes())
	p, err := storepath.MakeFixedOutput("busybox", true, h, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	info := &store.PathInfo{Path: p, NarHash: h, NarSize: uint64(n.Len()), CA: "fixed:r:sha256:" + h.Nix32()}
	if err := st.AddToStore(context.Background(), info, &n); err != nil {
		t.Fatal(err)
	}
	return p
}

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
	bb := addBusybox(t, st)
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

// caFile returns a content-addressed path holding contents as one file,
// with its info and NAR.
func caFile(t *testing.T, name, contents string) (*store.PathInfo, []byte) {
	t.Helper()
	n := testutil.FileNar(contents)
	h := nixhash.SHA256Of(n)
	p, err := storepath.MakeFixedOutput(name, true, h, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	return &store.PathInfo{Path: p, NarHash: h, NarSize: uint64(len(n)), CA: "fixed:r:sha256:" + h.Nix32()}, n
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func validOn(storeDir string, p storepath.Path) bool {
	return exec.Command("nix-store", "--store", storeDir, "--check-validity", string(p)).Run() == nil
}

// A large upload reaches the machine while it is uploaded, before any
// build asks for it; an upload the farm refuses never does.
func TestPrefetchUploads(t *testing.T) {
	testutil.RequireTools(t, "nix-store")
	st, _, dir := testutil.Store(t)
	workerStore := filepath.Join(dir, "worker")
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w := worker.NewExecutor("local", st, &worker.Local{StoreURI: workerStore}, log)
	st.OnUploadMin = 1 << 20
	st.OnUpload = w.Prefetch
	ctx := context.Background()
	// Create the worker's store first: Nix 2.8 fails ("database is busy")
	// when two processes create the same new store at once.
	validOn(workerStore, storepath.Path("/nix/store/"+strings.Repeat("0", 32)+"-none"))

	info, n := caFile(t, "big-input", strings.Repeat("prefetch me ", 400_000))
	if err := st.AddToStore(ctx, info, bytes.NewReader(n)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !validOn(workerStore, info.Path) {
		if time.Now().After(deadline) {
			t.Fatal("the upload never reached the worker's store")
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, err := exec.Command("nix-store", "--store", workerStore, "-q", "--hash", string(info.Path)).Output()
	if err != nil || strings.TrimSpace(string(out)) != info.NarHash.String() {
		t.Fatalf("worker has %s with hash %q (%v), want %s", info.Path, out, err, info.NarHash)
	}

	// A build needing it finds it there.
	bb := addBusybox(t, st)
	drvPath, drv := basic(t, bb, "uses-input", "wc -c < "+string(info.Path)+" > $out")
	drv.InputSrcs = append(drv.InputSrcs, string(info.Path))
	res, err := w.Build(ctx, &build.Request{DrvPath: drvPath, Drv: drv, Account: "alice", Log: io.Discard})
	if err != nil || res.Status != build.Built {
		t.Fatalf("build: %v %+v", err, res)
	}

	// The farm refuses an upload whose content address is wrong: the
	// worker, held back by one byte, registers nothing.
	liar, n2 := caFile(t, "liar", strings.Repeat("the truth ", 200_000))
	other, _ := caFile(t, "liar", strings.Repeat("something else ", 100_000))
	liar.Path = other.Path // the NAR hash is right, the path is not
	if err := st.AddToStore(ctx, liar, bytes.NewReader(n2)); err == nil {
		t.Fatal("the farm accepted a path that does not match its content")
	}
	time.Sleep(500 * time.Millisecond) // let a wrongful import finish, if one were under way
	if validOn(workerStore, liar.Path) {
		t.Fatal("the worker registered an upload the farm refused")
	}
}
