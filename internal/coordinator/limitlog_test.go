package coordinator_test

import (
	"context"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// Options.LimitLog cuts the log of the builds it starts, for the account
// the build is for: the log file and the client's copy alike.
func TestLimitLog(t *testing.T) {
	st, database, dir := testutil.Store(t)
	fb := &fakeBuilder{st: st, fail: map[string]bool{}}
	var accounts []string
	c, err := coordinator.New(st, testutil.Scheduler(t, fb), database, filepath.Join(dir, "logs"),
		coordinator.Options{LimitLog: func(acct string, w io.Writer) io.Writer {
			accounts = append(accounts, acct)
			return account.NewLogLimit(w, 4)
		}})
	if err != nil {
		t.Fatal(err)
	}
	src := storepath.Path("/nix/store/" + strings.Repeat("s", 32) + "-source")
	addFile(t, st, src, "source", nil)
	f := &farm{st: st, db: database, builder: fb, coord: c, src: src}
	ctx := context.Background()
	drvPath := f.addDrv(t, "limited", []string{"out"}, nil)
	d, _ := store.ReadDerivation(ctx, f.st, drvPath)
	var client strings.Builder
	res, err := c.BuildDerivation(ctx, &build.Request{DrvPath: drvPath, Drv: d.Basic("limited", nil), Account: "alice", Log: &client})
	if err != nil || !res.Status.Success() {
		t.Fatalf("%v %+v", err, res)
	}
	const want = "nixfarm: log truncated at 4 B (the account's log limit, max-log-size)\n"
	var id int64
	if err := database.QueryRow(`SELECT id FROM builds WHERE drv_path = ?`, string(drvPath)).Scan(&id); err != nil {
		t.Fatal(err)
	}
	c.Wait()
	file, err := readLog(filepath.Join(dir, "logs", strconv.FormatInt(id, 10)+".log"))
	if err != nil || file != want || client.String() != want {
		t.Errorf("log file %q (%v), client's log %q; want %q", file, err, client.String(), want)
	}
	if len(accounts) != 1 || accounts[0] != "alice" {
		t.Errorf("LimitLog called for %v", accounts)
	}
}
