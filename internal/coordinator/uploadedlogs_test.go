package coordinator_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// openLog reads what OpenLog (the binary cache's /log/) gives account.
func openLog(t *testing.T, c *coordinator.Coordinator, who string, drv storepath.Path) (string, error) {
	t.Helper()
	rc, err := c.OpenLog(context.Background(), who, drv)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return string(b), err
}

// An uploaded log (nix store copy-log) is kept compressed, per account:
// its uploader reads it back through OpenLog, another account does not
// see it and its own upload of the same derivation overwrites nothing.
func TestUploadedLogs(t *testing.T) {
	st, database, dir := testutil.Store(t)
	c, err := coordinator.New(st, testutil.Scheduler(t, &fakeBuilder{st: st, fail: map[string]bool{}}), database, filepath.Join(dir, "logs"), coordinator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	drv := storepath.Path("/nix/store/" + strings.Repeat("d", 32) + "-up.drv")
	if err := c.AddBuildLog(ctx, drv, "alice", []byte("alice's line\n")); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "logs", "uploaded", "alice", drv.Base()))
	if err != nil || !bytes.HasPrefix(raw, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
		t.Errorf("uploaded log file %x (%v): not zstd", raw, err)
	}
	if got, err := openLog(t, c, "alice", drv); err != nil || got != "alice's line\n" {
		t.Errorf("alice reads %q, %v", got, err)
	}
	if got, err := openLog(t, c, "bob", drv); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("bob reads alice's upload: %q, %v", got, err)
	}
	// Bob's upload of the same derivation is his; alice's stays hers.
	if err := c.AddBuildLog(ctx, drv, "bob", []byte("bob's line\n")); err != nil {
		t.Fatal(err)
	}
	if got, _ := openLog(t, c, "alice", drv); got != "alice's line\n" {
		t.Errorf("after bob's upload alice reads %q", got)
	}
	if got, _ := openLog(t, c, "bob", drv); got != "bob's line\n" {
		t.Errorf("bob reads %q", got)
	}
	// Alice's second upload replaces her first.
	if err := c.AddBuildLog(ctx, drv, "alice", []byte("again\n")); err != nil {
		t.Fatal(err)
	}
	if got, _ := openLog(t, c, "alice", drv); got != "again\n" {
		t.Errorf("alice's second upload reads %q", got)
	}
	// Hostile input: not a derivation, an account name that is a path.
	if err := c.AddBuildLog(ctx, storepath.Path("/nix/store/"+strings.Repeat("o", 32)+"-out"), "alice", []byte("x")); err == nil {
		t.Error("a log for a path that is no derivation was kept")
	}
	for _, who := range []string{"", "..", "../alice", "a/b", ".hidden"} {
		if err := c.AddBuildLog(ctx, drv, who, []byte("x")); err == nil {
			t.Errorf("account %q could upload", who)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "logs", "uploaded"))
	for _, e := range entries {
		if e.Name() != "alice" && e.Name() != "bob" {
			t.Errorf("logs/uploaded has %s", e.Name())
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "logs", "uploaded", "*", ".upload-*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// An upload is cut at the account's log limit, like a build's log.
func TestUploadedLogCapped(t *testing.T) {
	st, database, dir := testutil.Store(t)
	limit := func(who string, w io.Writer) io.Writer { return account.NewLogLimit(w, 100) }
	c, err := coordinator.New(st, testutil.Scheduler(t, &fakeBuilder{st: st, fail: map[string]bool{}}), database, filepath.Join(dir, "logs"),
		coordinator.Options{LimitLog: limit})
	if err != nil {
		t.Fatal(err)
	}
	drv := storepath.Path("/nix/store/" + strings.Repeat("c", 32) + "-big.drv")
	if err := c.AddBuildLog(context.Background(), drv, "alice", bytes.Repeat([]byte("0123456789\n"), 1000)); err != nil {
		t.Fatal(err)
	}
	got, err := openLog(t, c, "alice", drv)
	if err != nil || len(got) > 200 || !strings.Contains(got, "log truncated") {
		t.Errorf("a 11 kB upload under a 100 B limit reads back as %d bytes (%v):\n%s", len(got), err, got)
	}
}

// A log the farm built wins over the account's upload of the same
// derivation.
func TestBuiltLogWinsOverUpload(t *testing.T) {
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
	drvPath := f.addDrv(t, "precedence", []string{"out"}, nil)
	for _, who := range []string{"alice", "bob"} {
		if err := c.AddBuildLog(ctx, drvPath, who, []byte("a client's story\n")); err != nil {
			t.Fatal(err)
		}
	}
	d, _ := store.ReadDerivation(ctx, f.st, drvPath)
	res, err := c.BuildDerivation(ctx, &build.Request{DrvPath: drvPath, Drv: d.Basic("precedence", nil), Account: "alice", Log: io.Discard})
	if err != nil || !res.Status.Success() {
		t.Fatalf("%v %+v", err, res)
	}
	c.Wait()
	if got, err := openLog(t, c, "alice", drvPath); err != nil || got != "building precedence\n" {
		t.Errorf("alice reads %q (%v), not the farm's log", got, err)
	}
	// Bob has no farm build of it: his own upload, never alice's log.
	if got, err := openLog(t, c, "bob", drvPath); err != nil || got != "a client's story\n" {
		t.Errorf("bob reads %q (%v)", got, err)
	}
}

// An account's uploads are bounded in number and in bytes on disk, so
// that uploads of logs for made-up derivations cannot fill the farm's
// disk; replacing its own upload at the cap still works, and another
// account is not held by it.
func TestUploadedLogsBounded(t *testing.T) {
	defer coordinator.SetUploadCaps(3, 1<<20)()
	st, database, dir := testutil.Store(t)
	c, err := coordinator.New(st, testutil.Scheduler(t, &fakeBuilder{st: st, fail: map[string]bool{}}), database, filepath.Join(dir, "logs"), coordinator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	drv := func(i int) storepath.Path {
		return storepath.Path(fmt.Sprintf("/nix/store/%s-made-up-%d.drv", strings.Repeat(string(rune('a'+i)), 32), i))
	}
	for i := 0; i < 3; i++ {
		if err := c.AddBuildLog(ctx, drv(i), "alice", []byte("line\n")); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.AddBuildLog(ctx, drv(3), "alice", []byte("line\n")); err == nil || !strings.Contains(err.Error(), "3 uploaded logs") || !publicerr.Is(err) {
		t.Errorf("a 4th upload under a cap of 3: %v", err)
	}
	if _, err := openLog(t, c, "alice", drv(3)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the refused upload is kept: %v", err)
	}
	if err := c.AddBuildLog(ctx, drv(1), "alice", []byte("replaced\n")); err != nil {
		t.Errorf("replacing an upload at the cap: %v", err)
	}
	if err := c.AddBuildLog(ctx, drv(3), "bob", []byte("line\n")); err != nil {
		t.Errorf("bob held by alice's cap: %v", err)
	}
	// Bytes: incompressible uploads past the account's byte cap.
	random := make([]byte, 600<<10)
	rand.Read(random)
	if err := c.AddBuildLog(ctx, drv(4), "bob", random); err != nil {
		t.Fatal(err)
	}
	if err := c.AddBuildLog(ctx, drv(5), "bob", random); err == nil || !strings.Contains(err.Error(), "bytes") {
		t.Errorf("uploads past the byte cap: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "logs", "uploaded", "*", ".upload-*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
