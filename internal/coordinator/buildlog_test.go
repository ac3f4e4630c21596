package coordinator_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/buildlog"
	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

func readLog(path string) (string, error) {
	r, err := buildlog.Open(path)
	if err != nil {
		return "", err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	return string(b), err
}

// A build's log is kept compressed (zstd); OpenLog, what the binary
// cache's /log/ serves, returns its text.
func TestLogCompressed(t *testing.T) {
	st, database, dir := testutil.Store(t)
	fb := &fakeBuilder{st: st, fail: map[string]bool{}}
	c, err := coordinator.New(st, testutil.Scheduler(t, fb), database, filepath.Join(dir, "logs"), coordinator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	src := storepath.Path("/nix/store/" + strings.Repeat("s", 32) + "-source")
	addFile(t, st, src, "source", nil)
	f := &farm{st: st, db: database, builder: fb, coord: c, src: src}
	ctx := context.Background()
	drvPath := f.addDrv(t, "compressed", []string{"out"}, nil)
	d, _ := store.ReadDerivation(ctx, f.st, drvPath)
	res, err := c.BuildDerivation(ctx, &build.Request{DrvPath: drvPath, Drv: d.Basic("compressed", nil), Account: "alice", Log: io.Discard})
	if err != nil || !res.Status.Success() {
		t.Fatalf("%v %+v", err, res)
	}
	c.Wait()
	var id int64
	if err := database.QueryRow(`SELECT id FROM builds WHERE drv_path = ?`, string(drvPath)).Scan(&id); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "logs", strconv.FormatInt(id, 10)+".log"))
	if err != nil || !bytes.HasPrefix(raw, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
		t.Errorf("log file %x (%v): not zstd", raw, err)
	}
	rc, err := c.OpenLog(ctx, "alice", drvPath)
	if err != nil {
		t.Fatal(err)
	}
	text, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(text) != "building compressed\n" {
		t.Errorf("OpenLog: %q, %v", text, err)
	}
	// Another account has no log of it.
	if _, err := c.OpenLog(ctx, "bob", drvPath); err == nil {
		t.Error("bob opened alice's log")
	}
}
