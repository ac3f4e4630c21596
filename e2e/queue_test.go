package e2e

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// With one worker slot (--local-jobs 1), a build sent while another runs
// waits, and its client reads why, in its own terminal: its position,
// the reason (the only worker is busy) and, once the first build ends,
// the worker that took it. Over ssh-ng:// and ssh:// with Nix 2.8's
// nix-build; over ssh-ng:// with 2.8's and 2.34's nix build in a
// terminal (the progress line), 2.34's nix-build, and 2.34's nix build
// in remote-store mode (--store ssh-ng://, where the farm realises the
// .drv).
func TestQueueFeedback(t *testing.T) {
	f := startFarm(t, "--local-jobs", "1")
	first := newClient(t)
	for i, tc := range []struct {
		v      *nixVersion
		scheme string
		prog   string
	}{
		{nixVersions[0], "ssh-ng", "nix-build"},
		{nixVersions[0], "ssh", "nix-build"},
		{nixVersions[0], "ssh-ng", "nix build"},
		{nixVersions[2], "ssh-ng", "nix build"},
		{nixVersions[2], "ssh-ng", "nix-build"},
		{nixVersions[2], "ssh-ng", "nix build --store"},
	} {
		t.Run(fmt.Sprintf("%s/%s/%s", tc.v.name, tc.scheme, tc.prog), func(t *testing.T) {
			// The first build holds the only slot for about 4 s.
			slow := first.expr(fmt.Sprint("slow", i), fmt.Sprintf(`mk { name = "slow-%d"; args = ["-c" "sleep 4; echo done > $out"]; }`, i))
			slowDone := make(chan result, 1)
			go func() { slowDone <- first.build(f, "ssh-ng", slow) }()
			waitRunning(t, f, 1)

			second := newClientOf(t, tc.v)
			file := second.expr(fmt.Sprint("waiter", i), fmt.Sprintf(`mk { name = "waiter-%d"; args = ["-c" "echo waited > $out"]; }`, i))
			var r result
			if tc.prog == "nix build" {
				// In a terminal, as people run it: its progress line
				// shows the queue (without one, nix build prints
				// messages only, so only the worker's line).
				cmd := fmt.Sprintf("TERM=xterm nix --store local --option substituters '' --max-jobs 0 --builders '%s' build --no-link -f %s", f.builders(tc.scheme), file)
				r = second.exec(f, "script", "-q", "-e", "-c", cmd, "/dev/null")
				r.stderr = ansi.ReplaceAllString(strings.ReplaceAll(r.raw, "\r", "\n"), "")
			} else if tc.prog == "nix build --store" {
				// Remote-store mode: the farm realises the .drv.
				cmd := fmt.Sprintf("TERM=xterm nix build --store '%s' --eval-store local --no-link -f %s", f.storeURIFor(tc.scheme), file)
				r = second.exec(f, "script", "-q", "-e", "-c", cmd, "/dev/null")
				r.stderr = ansi.ReplaceAllString(strings.ReplaceAll(r.raw, "\r", "\n"), "")
			} else {
				r = second.build(f, tc.scheme, file)
			}
			if r.err != nil {
				t.Fatalf("the waiting build failed: %v\n%s\nfarm:\n%s", r.err, r.stderr, f.logs())
			}
			if s := <-slowDone; s.err != nil {
				t.Fatalf("the first build failed: %v\n%s", s.err, s.stderr)
			}
			t.Logf("%s %s over %s, its stderr:\n%s", tc.v.name, tc.prog, tc.scheme, r.stderr)
			queued := regexp.MustCompile(`nixfarm: queued at position 1 for x86_64-linux: the only x86_64-linux worker, local, is busy; estimated start (unknown|in \d+ s)`)
			if !queued.MatchString(r.stderr) {
				t.Errorf("the client's output does not say where its build waits and why (want %s)", queued)
			}
			started := regexp.MustCompile(`nixfarm: building on worker local \(waited \d+ s\)`)
			if !started.MatchString(r.stderr) {
				t.Errorf("the client's output does not name the worker that took its build (want %s)", started)
			}
			if q, s := queued.FindStringIndex(r.stderr), started.FindStringIndex(r.stderr); q != nil && s != nil && s[0] < q[0] {
				t.Errorf("the worker was named before the queue position")
			}
		})
	}
}

// waitRunning waits until the farm's workers run n builds.
func waitRunning(t *testing.T, f *farm, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		_, body := get(t, f.apiURL+"/api/v1/workers", "")
		var v struct {
			Workers []struct {
				Running []json.RawMessage `json:"running"`
			} `json:"workers"`
		}
		json.Unmarshal([]byte(body), &v)
		running := 0
		for _, w := range v.Workers {
			running += len(w.Running)
		}
		if running >= n {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the farm never ran %d builds\n%s", n, f.logs())
}

// ansi matches the terminal escapes of Nix's progress bar.
var ansi = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)
