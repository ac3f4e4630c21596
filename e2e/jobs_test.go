package e2e

import (
	"sort"
	"strings"
	"testing"
)

// With --local-jobs 1, four builds sent at once all succeed, one at a
// time: the others wait their turn and none fails for it.
func TestLocalJobsLimit(t *testing.T) {
	f := startFarm(t, "--local-jobs", "1")
	c := newClient(t)
	file := c.expr("jobs", `map (i: mk { name = "job-${toString i}"; args = ["-c" "sleep 0.3; echo ${toString i} > $out"]; }) [ 1 2 3 4 ]`)
	outs := c.mustBuild(f, "ssh", file)
	if len(outs) != 4 {
		t.Fatalf("outputs %v", outs)
	}
	for _, o := range outs {
		c.verify(o)
	}
	rows, err := f.db().Query(`SELECT started_at, stopped_at FROM builds WHERE status = 0 ORDER BY started_at`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	type span struct{ start, stop int64 }
	var spans []span
	for rows.Next() {
		var s span
		rows.Scan(&s.start, &s.stop)
		spans = append(spans, s)
	}
	if len(spans) != 4 {
		t.Fatalf("%d builds recorded, want 4", len(spans))
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
	for i := 1; i < len(spans); i++ {
		if spans[i].start < spans[i-1].stop {
			t.Errorf("builds overlapped with --local-jobs 1: %v", spans)
		}
	}
}

// Without the built-in worker and no other worker, a build fails at once
// with a message that says why, instead of hanging.
func TestNoWorkerFailsClearly(t *testing.T) { forClientsAndSchemes(t, testNoWorkerFailsClearly) }

func testNoWorkerFailsClearly(t *testing.T, v *nixVersion, scheme string) {
	f := startFarm(t, "--local-worker=false", "--unbuildable-grace", "1s")
	c := newClientOf(t, v)
	file := c.expr("noworker", `mk { name = "noworker"; args = ["-c" "echo > $out"]; }`)
	r := c.build(f, scheme, file)
	if r.err == nil {
		t.Fatal("built without a worker")
	}
	for _, want := range []string{"nixfarm has no worker that can build", "'x86_64-linux' machine", "no workers at all", "Ask the farm's operator to start one"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("client output lacks %q:\n%s", want, r.stderr)
		}
	}
}

// The client's max-silent-time reaches the build over ssh:// and a silent
// build is stopped with Nix's own message. (Over ssh-ng:// no Nix client
// sends its settings: its ssh-ng store skips SetOptions.)
func TestMaxSilentTime(t *testing.T) { forClients(t, testMaxSilentTime) }

func testMaxSilentTime(t *testing.T, v *nixVersion) {
	f := startFarm(t)
	c := newClientOf(t, v)
	file := c.expr("silent", `mk { name = "silent"; args = ["-c" "echo about to hang; sleep 30; echo > $out"]; }`)
	r := c.build(f, "ssh", file, "--option", "max-silent-time", "1")
	if r.err == nil {
		t.Fatal("a silent build succeeded")
	}
	if !strings.Contains(r.stderr, "timed out after 1 seconds of silence") {
		t.Errorf("client output lacks the timeout:\n%s", r.stderr)
	}
	var status int
	if err := f.db().QueryRow(`SELECT status FROM builds ORDER BY id DESC LIMIT 1`).Scan(&status); err != nil || status != 8 {
		t.Errorf("recorded status %d (%v), want 8 (TimedOut)", status, err)
	}
}
