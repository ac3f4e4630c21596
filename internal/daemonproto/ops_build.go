package daemonproto

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// BuildLog implements build.Logs: each build's log is an activity of its
// own, so `nix build -L` shows it and the client can keep it for `nix log`.
func (c *conn) BuildLog(drvPath storepath.Path) io.WriteCloser {
	return c.out.openBuildLog(string(drvPath))
}

var _ build.Progress = (*conn)(nil)

// Copying implements build.Progress: a path fetched from an upstream
// cache is Nix's own copy-path activity, which the client prints as
// "copying path '…' from '…'..." (a plain message before 1.20).
func (c *conn) Copying(p storepath.Path, from string) func(error) {
	text := fmt.Sprintf("copying path '%s' from '%s'", p, from)
	if minor(c.ver) < 20 {
		c.out.next(text + "...\n")
		return func(error) {}
	}
	id, err := c.out.startActivity(actCopyPath, text, []field{{str: string(p)}, {str: from}, {str: "nixfarm"}})
	if err != nil {
		return func(error) {}
	}
	return func(error) { c.out.stopActivity(id) }
}

// Warning implements build.Progress.
func (c *conn) Warning(msg string) { c.out.next("warning: " + msg + "\n") }

// readBuildMode reads a build mode; only normal builds are supported.
func (c *conn) readBuildMode() error {
	mode, err := c.readUint("build mode")
	if err != nil {
		return err
	}
	switch mode {
	case 0:
		return nil
	case 1:
		return publicerr.New("repairing builds (--repair) is not supported by nixfarm")
	case 2:
		return publicerr.New("checking builds (--check) is not supported by nixfarm yet")
	}
	return publicerr.New("unknown build mode %d", mode)
}

func (c *conn) buildDerivation(ctx context.Context) error {
	drvPath, err := c.readPath("derivation path")
	if err != nil {
		return fatal(err) // the derivation that follows cannot be named
	}
	if !drvPath.IsDerivation() {
		return fatal(fmt.Errorf("%w: %s does not end in .drv", ErrProtocol, drvPath))
	}
	drv, err := derivation.ReadBasic(c.r, strings.TrimSuffix(drvPath.Name(), ".drv"))
	if err != nil {
		return fatal(fmt.Errorf("%w: derivation %s: %w", ErrProtocol, drvPath, err))
	}
	if err := c.readBuildMode(); err != nil {
		return err
	}
	log := c.out.openBuildLog(string(drvPath))
	res, err := c.s.Builds.BuildDerivation(ctx, &build.Request{
		DrvPath: drvPath, Drv: drv, Options: c.opts, Account: c.sess.Account, Log: log, Progress: c, OnQueue: log.Queue,
	})
	log.Close()
	if err != nil {
		// The build could not run at all: a failed result carries the
		// reason to the client, which prints it.
		res = &build.Result{Status: build.MiscFailure, ErrorMsg: fmt.Sprintf("nixfarm could not build %s: %s", drvPath,
			publicerr.Message(ctx, c.log, err, "build could not run", "drv", drvPath))}
	}
	c.tr.Requested(ctx, res)
	return c.done(func(w *wire.Writer) { writeBuildResult(w, c.ver, res) })
}

func (c *conn) realise(ctx context.Context) ([]build.DerivedPath, []*build.Result, error) {
	paths, err := c.readDerivedPaths()
	if f := (*fatalError)(nil); errors.As(err, &f) {
		return nil, nil, err
	}
	modeErr := error(nil)
	if minor(c.ver) >= 15 {
		modeErr = c.readBuildMode()
		if f := (*fatalError)(nil); errors.As(modeErr, &f) {
			return nil, nil, modeErr
		}
	}
	if err != nil {
		return nil, nil, err
	}
	if modeErr != nil {
		return nil, nil, modeErr
	}
	results, err := c.s.Builds.Realise(ctx, paths, c.opts, c.sess.Account, c)
	c.tr.Requested(ctx, results...)
	return paths, results, err
}

func (c *conn) buildPaths(ctx context.Context) error {
	paths, results, err := c.realise(ctx)
	if err != nil {
		return err
	}
	var failed []string
	for i, res := range results {
		if !res.Status.Success() {
			failed = append(failed, fmt.Sprintf("build of '%s' failed: %s", paths[i], res.ErrorMsg))
		}
	}
	if len(failed) > 0 {
		return publicerr.New("%s", strings.Join(failed, "\n"))
	}
	return c.ok(ctx)
}

func (c *conn) buildPathsWithResults(ctx context.Context) error {
	paths, results, err := c.realise(ctx)
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) {
		w.Uint64(uint64(len(results)))
		for i, res := range results {
			w.String(paths[i].String())
			writeBuildResult(w, c.ver, res)
		}
	})
}
