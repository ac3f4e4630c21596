// Package testutil holds helpers shared by nixfarm's tests: tool checks
// that skip loudly (and fail under CI) and a farm store in a temporary
// directory.
package testutil

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"database/sql"

	"github.com/nixfarm/nixfarm/internal/blob"
	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/db"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// RequireTools skips the test with a loud message when a tool is missing,
// or fails it when CI=true: CI must run every test.
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing, and CI must run this test (.ci/run installs it)", tool)
			}
			t.Skipf("*** SKIPPING: %s is missing (apt-get install nix-bin busybox-static openssh-client)", tool)
		}
	}
}

// RequireFile is RequireTools for a file, such as /bin/busybox.
func RequireFile(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing, and CI must run this test (.ci/run installs it)", path)
		}
		t.Skipf("*** SKIPPING: %s is missing (apt-get install busybox-static)", path)
	}
}

// Store returns a farm store and its database in a temporary directory.
func Store(t testing.TB) (*store.Local, *sql.DB, string) {
	t.Helper()
	dir := t.TempDir()
	d, err := db.Open(context.Background(), filepath.Join(dir, "nixfarm.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	blobs, err := blob.NewDir(filepath.Join(dir, "nar"))
	if err != nil {
		t.Fatal(err)
	}
	blobs.NoSync = true
	st := store.NewLocal(d, blobs)
	t.Cleanup(func() { st.Flush(context.Background()) }) // before the database closes
	return st, d, dir
}

// FileNar returns the NAR of a single regular file holding contents.
func FileNar(contents string) []byte {
	var b bytes.Buffer
	w := nar.NewWriter(&b)
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(contents))}); err != nil {
		panic(err)
	}
	io.WriteString(w, contents)
	if err := w.Close(); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// ReadGz reads a gzipped fixture.
func ReadGz(t testing.TB, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// Derivation completes an input-addressed derivation named name: it sets
// the paths of the outputs listed in d.Outputs (and their environment
// variables) as Nix computes them, and returns the .drv path. resolve
// loads input derivations; it may be nil when there are none.
func Derivation(t testing.TB, name string, d *derivation.Derivation, resolve derivation.Resolver) storepath.Path {
	t.Helper()
	dummy := storepath.Dir + "/" + strings.Repeat("0", 32) + "-placeholder"
	if d.Env == nil {
		d.Env = map[string]string{}
	}
	if d.InputDrvs == nil {
		d.InputDrvs = map[string][]string{}
	}
	if d.InputSrcs == nil {
		d.InputSrcs = []string{}
	}
	for o := range d.Outputs {
		d.Outputs[o] = derivation.Output{Path: dummy} // blanked when hashing
		d.Env[o] = ""
	}
	outs, err := derivation.OutputPaths(name, d, resolve)
	if err != nil {
		t.Fatal(err)
	}
	for o, p := range outs {
		d.Outputs[o] = derivation.Output{Path: string(p)}
		d.Env[o] = string(p)
	}
	drvPath, err := derivation.PathOf(name, d)
	if err != nil {
		t.Fatal(err)
	}
	return drvPath
}

// Scheduler returns a scheduler with one worker, b, that builds for
// x86_64-linux, four builds at a time.
func Scheduler(t testing.TB, b build.Builder) *scheduler.Scheduler {
	t.Helper()
	s := scheduler.New(scheduler.Config{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	t.Cleanup(s.Close)
	caps := worker.Capabilities{Systems: []string{"x86_64-linux"}, MaxJobs: 4, SpeedFactor: 1}
	if err := s.AddWorker(scheduler.Worker{Name: "test", Kind: "local", Caps: caps, Builder: b}); err != nil {
		t.Fatal(err)
	}
	return s
}
