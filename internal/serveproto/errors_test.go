package serveproto_test

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// TestBuildErrorsHidden: a build that could not run for an internal reason
// fails with an id in its message, for cmdBuildDerivation and
// cmdBuildPaths alike, and the log has the id with the detail.
func TestBuildErrorsHidden(t *testing.T) {
	st, _, _ := testutil.Store(t)
	var log testutil.LogBuffer
	fb := &fakeBuilds{err: fmt.Errorf("opening /var/lib/nixfarm/logs/1.log: %w", errors.New("SQL logic error: disk I/O error"))}
	c, closeFn := pipeClient(t, &serveproto.Server{Store: st, Builds: fb, Log: slog.New(slog.NewTextHandler(&log, nil))})
	defer closeFn()
	drvPath := storepath.Path("/nix/store/" + strings.Repeat("d", 32) + "-x.drv")
	res, err := c.BuildDerivation(drvPath, testBasic(), build.Options{})
	if err != nil {
		t.Fatal(err)
	}
	res2, err := c.BuildPaths([]build.DerivedPath{{Path: drvPath, Built: true}}, build.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*build.Result{res, res2} {
		m := regexp.MustCompile(`internal error \(id ([0-9a-f]{8})\); the farm's log has the details`).FindStringSubmatch(r.ErrorMsg)
		if r.Status.Success() || m == nil || strings.Contains(r.ErrorMsg, "/var/lib/nixfarm") || strings.Contains(r.ErrorMsg, "SQL") {
			t.Fatalf("the client was told %+v", r)
		}
		if !regexp.MustCompile(`error_id=` + m[1] + `.*SQL logic error: disk I/O error`).MatchString(log.String()) {
			t.Errorf("no log line with error_id=%s and the error:\n%s", m[1], log.String())
		}
	}
}
