package scheduler_test

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/scheduler"
)

func TestQueueViewIsolation(t *testing.T) {
	est := 4.0
	classes := []scheduler.ClassQueue{{Class: "x86_64-linux", Builds: []scheduler.QueuedBuild{
		{DrvPath: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-alice-q.drv", Account: "alice", Position: 1, Reason: "busy", EstimatedStartSeconds: &est},
		{DrvPath: "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-bob-q.drv", Account: "bob", Position: 2, Reason: "busy"},
	}}}
	workers := []scheduler.WorkerInfo{{Name: "local", Running: []scheduler.RunningBuild{
		{DrvPath: "/nix/store/cccccccccccccccccccccccccccccccc-bob-r.drv", Account: "bob", Attempt: 1},
		{DrvPath: "/nix/store/dddddddddddddddddddddddddddddddd-alice-r.drv", Account: "alice", Attempt: 1},
	}}}
	v := scheduler.NewQueueView(classes, workers, "alice")
	var buf bytes.Buffer
	v.WriteText(&buf)
	if strings.Contains(buf.String()+v.Key(), "bob") || len(v.Builds) != 2 || v.OthersQueued != 1 || v.OthersRunning != 1 {
		t.Errorf("alice's view %+v:\n%s", v, buf.String())
	}
	if !regexp.MustCompile(`running +- +alice-r.drv +building on worker local`).MatchString(buf.String()) ||
		!regexp.MustCompile(`queued +1 of 2 +alice-q.drv +busy +~4 s +0 s`).MatchString(buf.String()) {
		t.Errorf("alice's table:\n%s", buf.String())
	}
	all := scheduler.NewQueueView(classes, workers, "")
	if len(all.Builds) != 4 || all.OthersQueued != 0 || all.Running != 2 || all.Queued != 2 {
		t.Errorf("the operator's view: %+v", all)
	}
	// The clock's progress is no change.
	later := classes[0].Builds[0]
	e2 := 2.0
	later.EstimatedStartSeconds, later.WaitedSeconds, later.Reason = &e2, 9, "busy"
	moved := scheduler.NewQueueView([]scheduler.ClassQueue{{Class: "x86_64-linux", Builds: []scheduler.QueuedBuild{later, classes[0].Builds[1]}}}, workers, "alice")
	if moved.Key() != v.Key() {
		t.Errorf("keys differ with the clock:\n%s\n%s", v.Key(), moved.Key())
	}
}

// Not on a terminal, a watch prints a view only when it changed, and ends
// when the viewer's builds are done.
func TestWatch(t *testing.T) {
	views := []scheduler.QueueView{
		{Account: "alice", Builds: []scheduler.ViewedBuild{{State: "queued", DrvPath: "x.drv", Position: 2, InClass: 2, Reason: "busy", WaitedSeconds: 1}}},
		{Account: "alice", Builds: []scheduler.ViewedBuild{{State: "queued", DrvPath: "x.drv", Position: 2, InClass: 2, Reason: "busy", WaitedSeconds: 2}}},
		{Account: "alice", Builds: []scheduler.ViewedBuild{{State: "queued", DrvPath: "x.drv", Position: 1, InClass: 1, Reason: "starting", WaitedSeconds: 3}}},
		{Account: "alice", Builds: []scheduler.ViewedBuild{{State: "running", DrvPath: "x.drv", Reason: "building on worker local"}}},
		{Account: "alice", Builds: []scheduler.ViewedBuild{}},
	}
	n := 0
	fetch := func(context.Context) (scheduler.QueueView, error) {
		v := views[min(n, len(views)-1)]
		n++
		return v, nil
	}
	var buf bytes.Buffer
	if err := scheduler.Watch(context.Background(), &buf, fetch, time.Millisecond, false, false); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if n != 5 || strings.Count(out, "--- ") != 4 || strings.Contains(out, "\x1b") || !strings.HasSuffix(out, "No builds of account alice are queued or running.\nOther accounts: 0 running, 0 queued.\n") {
		t.Errorf("after %d looks:\n%s", n, out)
	}
	// On a terminal it redraws each time; it ends with its context.
	ctx, cancel := context.WithCancel(context.Background())
	n, buf = 0, bytes.Buffer{}
	fetch = func(context.Context) (scheduler.QueueView, error) {
		if n++; n == 3 {
			cancel()
		}
		return views[0], nil
	}
	if err := scheduler.Watch(ctx, &buf, fetch, time.Millisecond, true, false); err != nil || strings.Count(buf.String(), "\x1b[H\x1b[2J") != 3 {
		t.Errorf("on a terminal: %v\n%q", err, buf.String())
	}
}

// A derivation's system and features are the client's to choose and
// reach reasons ("no worker offers ..."): the operator's table of every
// account's builds shows them without terminal escapes, tabs or line
// ends.
func TestQueueViewHostileReason(t *testing.T) {
	evil := "x86_64-linux\x1b]52;c;cm0gLXJmIH4K\a\x1b[2J\tfake\ncolumn"
	classes := []scheduler.ClassQueue{{Class: evil, System: evil, Builds: []scheduler.QueuedBuild{
		{DrvPath: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-evil.drv", Account: "mallory", Position: 1, Reason: "no worker offers " + evil},
	}}}
	var buf bytes.Buffer
	if err := scheduler.NewQueueView(classes, nil, "").WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if strings.ContainsAny(out, "\x1b\a\t") || strings.Count(out, "\n") != 3 || !strings.Contains(out, "no worker offers x86_64-linux?]52;c;") {
		t.Errorf("the operator's table:\n%q", out)
	}
}
