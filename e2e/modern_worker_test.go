package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// An agent whose Nix is the newest client's (2.34, in its chroot) builds
// for the farm. Nix 2.34's nix-store --serve answers a build it has just
// done with timesBuilt 0; the farm still reports that the derivation was
// built once.
func TestModernNixWorker(t *testing.T) {
	modern := nixVersions[len(nixVersions)-1]
	f := startCoordinator(t)
	// The agent's nix-store is 2.34's, run inside a root of that client
	// (sandboxing is impossible in a chroot, so it builds without one, in
	// the root's own /nix/store).
	host := newClientOf(t, modern)
	wrapper := filepath.Join(t.TempDir(), "nix-store")
	script := fmt.Sprintf("#!/bin/sh\nexec nsenter --target %s --mount --root --wd -- nix-store \"$@\"\n", host.pid)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, f, "modern", "--nix-store", wrapper, "--store", "local", "--max-jobs", "1")
	f.waitWorkers("modern")

	c := newClient(t)
	file := c.expr("modern", `mk { name = "modern-worker"; args = ["-c" "echo built by a newer Nix; echo modern > $out"]; }`)
	drvPath := c.instantiate(file)[0]
	c.nix(f, "copy", "--store", c.store, "--derivation", "--to", f.storeURI(), drvPath)
	d, err := derivation.Parse([]byte(c.read(drvPath)))
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimSuffix(storepath.Path(drvPath).Name(), ".drv")

	s := openServe(t, f, "nix-store --serve --write")
	res, err := s.client.BuildDerivation(storepath.Path(drvPath), d.Basic(name, d.InputSrcs), build.Options{})
	if err != nil {
		a.mu.Lock()
		t.Fatalf("BuildDerivation: %v\nstderr: %s\nfarm:\n%s\nagent:\n%s", err, s.stderr, f.logs(), a.out.String())
	}
	if res.Status != build.Built || res.TimesBuilt != 1 {
		t.Errorf("result: status %v, timesBuilt %d; want Built, 1", res.Status, res.TimesBuilt)
	}
	if !strings.Contains(s.stderr.String(), "built by a newer Nix") {
		t.Errorf("the build log did not reach the client: %q", s.stderr.String())
	}
	if err := s.close(); err != nil {
		t.Errorf("session: %v", err)
	}
	// The build's record is committed behind the answer.
	for deadline := time.Now().Add(10 * time.Second); f.countBuiltLike("modern-worker") == 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if got := f.workerOf("modern-worker"); got != "modern" {
		t.Errorf("built by %s", got)
	}
	if got := strings.TrimSpace(host.read(d.Outputs["out"].Path)); got != "modern" {
		t.Errorf("the worker's output holds %q", got)
	}
}
