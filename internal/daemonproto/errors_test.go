package daemonproto_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/daemonproto"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// brokenBuilds fails every build with err.
type brokenBuilds struct {
	daemonproto.Builds
	err error
}

func (b brokenBuilds) BuildDerivation(context.Context, *build.Request) (*build.Result, error) {
	return nil, b.err
}

var idRE = regexp.MustCompile(`internal error \(id ([0-9a-f]{8})\); the farm's log has the details`)

// checkHidden checks that the client was told only an id, and that the log
// has that id with the internal detail.
func checkHidden(t *testing.T, told string, log *testutil.LogBuffer, detail string) {
	t.Helper()
	m := idRE.FindStringSubmatch(told)
	if m == nil || strings.Contains(told, detail) || strings.Contains(told, "/var/lib/nixfarm") {
		t.Fatalf("the client was told %q", told)
	}
	if !regexp.MustCompile(`error_id=` + m[1] + `.*` + regexp.QuoteMeta(detail)).MatchString(log.String()) {
		t.Errorf("no log line with error_id=%s and %q:\n%s", m[1], detail, log.String())
	}
}

// TestInternalErrorsHidden: an operation's internal error (SQL, state
// directory paths) reaches the client as an id in the STDERR_ERROR frame,
// and a build that could not run as an id in its result, the detail in the
// log under that id; public errors keep their detail.
func TestInternalErrorsHidden(t *testing.T) {
	p := storepath.Path("/nix/store/" + strings.Repeat("a", 32) + "-x")
	internal := fmt.Errorf("querying %s in /var/lib/nixfarm/state.db: SQL logic error: no such table: paths (1)", p)

	t.Run("operation", func(t *testing.T) {
		f := newFarm(t)
		var log testutil.LogBuffer
		f.srv.Log = slog.New(slog.NewTextHandler(&log, nil))
		f.srv.Store = testutil.BrokenStore{Store: f.st, Err: internal}
		c, _ := f.connect(t, 0x126)
		_, err := c.QueryPathInfo(p)
		if err == nil {
			t.Fatal("QueryPathInfo succeeded")
		}
		checkHidden(t, err.Error(), &log, "SQL logic error: no such table")
	})

	t.Run("public operation error", func(t *testing.T) {
		f := newFarm(t)
		f.srv.Store = testutil.BrokenStore{Store: f.st, Err: fmt.Errorf("%w for %s: declared 5 bytes, got 6", store.ErrSizeMismatch, p)}
		c, _ := f.connect(t, 0x126)
		_, err := c.QueryPathInfo(p)
		if err == nil || !strings.Contains(err.Error(), "NAR size mismatch for "+string(p)+": declared 5 bytes, got 6") {
			t.Fatalf("the client was told %v", err)
		}
	})

	t.Run("build", func(t *testing.T) {
		f := newFarm(t)
		var log testutil.LogBuffer
		f.srv.Log = slog.New(slog.NewTextHandler(&log, nil))
		f.srv.Builds = brokenBuilds{f.srv.Builds, fmt.Errorf("recording build: %w", errors.New("SQL logic error: database is locked"))}
		c, _ := f.connect(t, 0x126)
		drvPath, drv, _ := basic(t, "hidden")
		res, err := c.BuildDerivation(drvPath, drv)
		if err != nil {
			t.Fatal(err)
		}
		if res.Status.Success() {
			t.Fatalf("built: %+v", res)
		}
		checkHidden(t, res.ErrorMsg, &log, "SQL logic error: database is locked")
	})
}
