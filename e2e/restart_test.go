package e2e

import (
	"os"
	"strings"
	"testing"
)

// After a restart on the same state dir, a derivation built before is
// answered from the farm store: the builder does not run again. To prove
// it, the worker's Nix store is deleted before the restart, so the only
// copy of the output is the farm store's.
func TestRestartAnswersFromFarmStore(t *testing.T) {
	for _, scheme := range []string{"ssh", "ssh-ng"} {
		t.Run(scheme, func(t *testing.T) { testRestart(t, scheme) })
	}
}

func testRestart(t *testing.T, scheme string) {
	f := startFarm(t)
	c1 := newClient(t)
	file := c1.expr("restart", `mk { name = "restart"; args = ["-c" "echo built once > $out"]; }`)
	drvs := c1.instantiate(file)
	first := c1.mustBuild(f, scheme, file)
	if got := f.builtCount(drvs[0]); got != 1 {
		t.Fatalf("builds of %s after the first request: %d, want 1", drvs[0], got)
	}

	f.stop()
	if err := os.RemoveAll(f.workerStore); err != nil {
		t.Fatal(err)
	}
	f.start()

	c2 := newClient(t) // an empty client store: it must fetch the output
	file2 := c2.expr("restart", `mk { name = "restart"; args = ["-c" "echo built once > $out"]; }`)
	second := c2.mustBuild(f, scheme, file2)
	if second[0] != first[0] {
		t.Fatalf("output path changed: %s vs %s", second[0], first[0])
	}
	if got := c2.read(second[0]); got != "built once\n" {
		t.Errorf("contents %q", got)
	}
	c2.verify(second[0])
	if got := f.builtCount(drvs[0]); got != 1 {
		t.Errorf("builds of %s after the restart: %d, want still 1", drvs[0], got)
	}
	if _, err := os.Stat(f.workerStore + "/nix/store/" + strings.TrimPrefix(first[0], "/nix/store/")); err == nil {
		t.Errorf("the worker store was used again")
	}
	var status int
	if err := f.db().QueryRow(`SELECT status FROM builds WHERE drv_path = ? ORDER BY id DESC LIMIT 1`, drvs[0]).Scan(&status); err != nil {
		t.Fatal(err)
	}
	if status != 2 { // AlreadyValid
		t.Errorf("second request recorded with status %d, want 2 (AlreadyValid)", status)
	}
}
