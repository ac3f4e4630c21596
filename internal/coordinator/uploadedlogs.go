package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/nixfarm/nixfarm/internal/buildlog"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Uploaded logs: what clients send with `nix store copy-log` (the daemon
// protocol's AddBuildLog; the serve protocol has no such operation).
//
// Each is kept per account, at logs/uploaded/<account>/<drv base name>,
// compressed like the logs of farm builds (package buildlog) and cut at
// the account's log limit (max-log-size) like them; an account keeps at
// most maxUploadedLogs of them, in maxUploadedLogBytes (uploads need not
// name a derivation the farm has, so nothing else bounds them). An
// account's upload replaces only its own earlier upload of the same
// derivation: it never overwrites or shadows another account's, nor a
// log the farm built.
//
// OpenLog, what the binary cache's /log/ serves, follows the cache's rule
// for logs (an account reads the logs of its own builds only) and prefers
// what the farm saw to what a client says: the account's latest farm
// build of the derivation that logged anything, else its own upload.
// Nix's daemon protocol has no operation to read a log (`nix log --store
// ssh-ng://` is unsupported by Nix), so /log/ is the way back.
//
// Uploads of earlier versions, plain files directly under logs/uploaded/
// with no account, are left as they are and not served.

// uploadedDir is where account's uploaded logs are kept, or an error if
// its name could make a path outside logs/uploaded/ (account names are
// checked when accounts are made; this is a second fence).
func (c *Coordinator) uploadedDir(account string) (string, error) {
	if account == "" || strings.HasPrefix(account, ".") || strings.ContainsAny(account, `/\`) || !filepath.IsLocal(account) {
		return "", fmt.Errorf("no uploaded logs for account %q", account)
	}
	return filepath.Join(c.logDir, "uploaded", account), nil
}

// AddBuildLog keeps a build log that account uploads for drvPath
// (nix store copy-log), replacing its own earlier upload. The file
// appears whole or not at all.
func (c *Coordinator) AddBuildLog(ctx context.Context, drvPath storepath.Path, account string, log []byte) error {
	if !drvPath.IsDerivation() {
		return fmt.Errorf("a build log is kept for a derivation (.drv), not %s", drvPath)
	}
	dir, err := c.uploadedDir(account)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("saving the build log of %s: %w", drvPath, err)
	}
	tmp, err := os.CreateTemp(dir, ".upload-*")
	if err != nil {
		return fmt.Errorf("saving the build log of %s: %w", drvPath, err)
	}
	tmpPath := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpPath) // after the rename, there is nothing to remove
	w, err := buildlog.Create(tmpPath)
	if err != nil {
		return fmt.Errorf("saving the build log of %s: %w", drvPath, err)
	}
	var dst io.Writer = w
	if c.opts.LimitLog != nil {
		dst = c.opts.LimitLog(account, w)
	}
	dst.Write(log) // a limited writer never fails; w's error comes at Close
	if err := w.Close(); err != nil {
		return fmt.Errorf("saving the build log of %s: %w", drvPath, err)
	}
	// The caps are checked and the file put in place under one lock, so
	// that uploads racing each other cannot pass them together.
	uploadMu.Lock()
	defer uploadMu.Unlock()
	if err := checkUploadCaps(dir, drvPath.Base(), tmpPath); err != nil {
		return fmt.Errorf("the build log of %s is not kept: %w", drvPath, err)
	}
	if err := os.Rename(tmpPath, filepath.Join(dir, drvPath.Base())); err != nil {
		return fmt.Errorf("saving the build log of %s: %w", drvPath, err)
	}
	c.log.Info("build log uploaded", "drv", drvPath, "account", account, "bytes", len(log))
	return nil
}

// OpenLog opens account's log of drvPath, decompressed: its latest farm
// build's that logged anything, else its own upload; or returns
// store.ErrNotFound.
func (c *Coordinator) OpenLog(ctx context.Context, account string, drvPath storepath.Path) (io.ReadCloser, error) {
	rc, err := c.openBuiltLog(ctx, account, drvPath)
	if !errors.Is(err, store.ErrNotFound) {
		return rc, err
	}
	dir, derr := c.uploadedDir(account)
	if derr != nil {
		return nil, err
	}
	up, uerr := buildlog.Open(filepath.Join(dir, drvPath.Base()))
	if errors.Is(uerr, os.ErrNotExist) {
		return nil, err
	}
	if uerr != nil {
		return nil, fmt.Errorf("opening the uploaded build log of %s: %w", drvPath, uerr)
	}
	return up, nil
}

// Caps on one account's uploaded logs, as kept (compressed): an upload
// that would pass either is refused (its replacement of the account's
// own upload of the same derivation counts as a replacement).
var (
	maxUploadedLogs           = 1000
	maxUploadedLogBytes int64 = 1 << 30
)

// uploadMu is held while an upload's caps are checked and it is put in
// place.
var uploadMu sync.Mutex

// checkUploadCaps says whether the upload at tmpPath may be kept in dir
// (an account's) as base: the account's other uploads and it stay within
// maxUploadedLogs and maxUploadedLogBytes.
func checkUploadCaps(dir, base, tmpPath string) error {
	st, err := os.Stat(tmpPath)
	if err != nil {
		return err
	}
	count, size := 1, st.Size()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") || e.Name() == base || !e.Type().IsRegular() {
			continue // temporary files, the upload it replaces
		}
		info, err := e.Info()
		if err != nil {
			continue // gone meanwhile
		}
		count++
		size += info.Size()
	}
	if count > maxUploadedLogs {
		return publicerr.New("the account keeps %d uploaded logs already, the most it may", count-1)
	}
	if size > maxUploadedLogBytes {
		return publicerr.New("the account's uploaded logs would take %d bytes, more than the %d it may keep", size, maxUploadedLogBytes)
	}
	return nil
}
