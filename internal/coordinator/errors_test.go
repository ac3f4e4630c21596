package coordinator_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// failingScheduler ends every build with err.
type failingScheduler struct{ err error }

func (s failingScheduler) Submit(ctx context.Context, req *build.Request, done func(*build.Result, error)) {
	go done(nil, s.err)
}

// TestBuildErrorHidden: a build that could not run for an internal reason
// fails with an id in its message; the log has the id and the detail.
func TestBuildErrorHidden(t *testing.T) {
	st, database, dir := testutil.Store(t)
	var log testutil.LogBuffer
	internal := fmt.Errorf("spooling to /var/lib/nixfarm/tmp/x: %w", errors.New("SQL logic error: disk full"))
	c, err := coordinator.New(st, failingScheduler{internal}, database, filepath.Join(dir, "logs"),
		coordinator.Options{Log: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	f := &farm{st: st, db: database, coord: c, src: storepath.Path("/nix/store/" + strings.Repeat("s", 32) + "-source")}
	addFile(t, st, f.src, "source", nil)
	drvPath := f.addDrv(t, "hidden", []string{"out"}, nil)
	d, _ := store.ReadDerivation(context.Background(), st, drvPath)
	res, err := c.BuildDerivation(context.Background(), &build.Request{DrvPath: drvPath, Drv: d.Basic("hidden", nil), Account: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`^internal error \(id ([0-9a-f]{8})\); the farm's log has the details$`).FindStringSubmatch(res.ErrorMsg)
	if res.Status.Success() || m == nil {
		t.Fatalf("the client is told %+v", res)
	}
	if !regexp.MustCompile(`error_id=` + m[1] + `.*SQL logic error: disk full`).MatchString(log.String()) {
		t.Errorf("no log line with error_id=%s and the error:\n%s", m[1], log.String())
	}
}
