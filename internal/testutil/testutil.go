// Package testutil holds helpers shared by nixfarm's tests: tool checks
// that skip loudly (and fail under CI) and a farm store in a temporary
// directory.
package testutil

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"database/sql"
	"github.com/nixfarm/nixfarm/internal/blob"
	"github.com/nixfarm/nixfarm/internal/db"
	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/store"
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
	return store.NewLocal(d, blobs), d, dir
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
