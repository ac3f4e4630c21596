package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Two stock clients build 30 one-second derivations at once through a
// coordinator with three agents: all succeed and every agent builds some.
func TestWorkersShareTheLoad(t *testing.T) {
	f := startCoordinator(t)
	for _, name := range []string{"alpha", "beta", "gamma"} {
		startAgent(t, f, name, "--max-jobs", "2")
	}
	f.waitWorkers("alpha", "beta", "gamma")

	var wg sync.WaitGroup
	results := make([]result, 2)
	clients := make([]*client, 2)
	for i := range clients {
		clients[i] = newClient(t)
		file := clients[i].expr(fmt.Sprintf("load%d", i), fmt.Sprintf(
			`builtins.genList (i: mk { name = "load-%d-${toString i}"; args = ["-c" "sleep 1; echo ${toString i} > $out"]; }) 15`, i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = clients[i].buildWith(f, f.buildersLine("ssh-ng", "x86_64-linux", "", 8), file)
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("client %d: %v\n%s\nfarm:\n%s", i, r.err, r.stderr, f.logs())
		}
		if outs := strings.Fields(r.out); len(outs) != 15 {
			t.Errorf("client %d got %d outputs", i, len(outs))
		}
	}
	counts := f.builtBy()
	t.Logf("builds per worker: %v", counts)
	total := 0
	for _, name := range []string{"alpha", "beta", "gamma"} {
		if counts[name] == 0 {
			t.Errorf("worker %s built nothing", name)
		}
		total += counts[name]
	}
	if total != 30 {
		t.Errorf("%d builds, want 30", total)
	}

	// nixfarm workers lists them.
	out, err := exec.Command(nixfarmBin, "workers", "--url", f.apiURL).CombinedOutput()
	if err != nil {
		t.Fatalf("nixfarm workers: %v\n%s", err, out)
	}
	for _, want := range []string{"NAME", "STATE", "LAST HEARTBEAT", "alpha", "beta", "gamma", "agent", "x86_64-linux", "3 workers"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("nixfarm workers output lacks %q:\n%s", want, out)
		}
	}
	out, err = exec.Command(nixfarmBin, "workers", "--json", "--url", f.apiURL).Output()
	var list struct {
		Workers []struct {
			Name          string    `json:"name"`
			State         string    `json:"state"`
			LastHeartbeat time.Time `json:"lastHeartbeat"`
			Built         int       `json:"built"`
		} `json:"workers"`
	}
	if err != nil || json.Unmarshal(out, &list) != nil || len(list.Workers) != 3 {
		t.Fatalf("nixfarm workers --json: %v\n%s", err, out)
	}
	for _, w := range list.Workers {
		if w.State != "idle" || w.LastHeartbeat.IsZero() || w.Built != counts[w.Name] {
			t.Errorf("worker %+v", w)
		}
	}
}

// Builds go only where the rules allow: B builds aarch64-linux and
// big-parallel, C only what requires benchmark.
func TestRouting(t *testing.T) {
	f := startCoordinator(t)
	startAgent(t, f, "a", "--features=", "--max-jobs", "2")
	startAgent(t, f, "b", "--systems", "x86_64-linux,aarch64-linux", "--features", "big-parallel", "--max-jobs", "2")
	startAgent(t, f, "c", "--features=", "--mandatory-features", "benchmark", "--max-jobs", "2")
	f.waitWorkers("a", "b", "c")

	c := newClient(t)
	file := c.expr("routing", `[
    (mk { name = "route-arm"; system = "aarch64-linux"; args = ["-c" "echo arm > $out"]; })
    (mk { name = "route-parallel"; requiredSystemFeatures = [ "big-parallel" ]; args = ["-c" "echo parallel > $out"]; })
    (mk { name = "route-bench"; requiredSystemFeatures = [ "benchmark" ]; args = ["-c" "echo bench > $out"]; })
  ] ++ builtins.genList (i: mk { name = "route-plain-${toString i}"; args = ["-c" "sleep 0.2; echo ${toString i} > $out"]; }) 8`)
	r := c.buildWith(f, f.buildersLine("ssh-ng", "x86_64-linux,aarch64-linux", "big-parallel,benchmark", 8), file)
	if r.err != nil {
		t.Fatalf("nix-build: %v\n%s\nfarm:\n%s", r.err, r.stderr, f.logs())
	}
	for name, want := range map[string]string{"route-arm": "b", "route-parallel": "b", "route-bench": "c"} {
		if got := f.workerOf(name); got != want {
			t.Errorf("%s was built by %s, want %s", name, got, want)
		}
	}
	for i := 0; i < 8; i++ {
		if got := f.workerOf(fmt.Sprintf("route-plain-%d", i)); got == "c" {
			t.Errorf("route-plain-%d went to c, which takes only benchmark builds", i)
		}
	}
	t.Logf("builds per worker: %v", f.builtBy())
}

// A worker killed with SIGKILL during a 10 s build: the build completes on
// the other worker, and the client sees success. The killed worker comes
// back and takes work again.
func TestWorkerLoss(t *testing.T) {
	f := startCoordinator(t)
	agents := map[string]*agent{
		"w1": startAgent(t, f, "w1", "--max-jobs", "1"),
		"w2": startAgent(t, f, "w2", "--max-jobs", "1"),
	}
	f.waitWorkers("w1", "w2")
	c := newClient(t)
	file := c.expr("long", `mk { name = "long"; args = ["-c" "echo started; sleep 10; echo finished > $out"]; }`)
	done := make(chan result, 1)
	go func() { done <- c.buildWith(f, f.buildersLine("ssh-ng", "x86_64-linux", "", 2), file) }()

	var victim string
	deadline := time.Now().Add(30 * time.Second)
	for victim == "" {
		for _, w := range f.workers() {
			if len(w.Running) > 0 {
				victim = w.Name
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no worker started the build:\n%s", f.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second) // well into the build
	agents[victim].kill()
	t.Logf("killed %s during the build", victim)

	r := <-done
	if r.err != nil {
		t.Fatalf("nix-build after losing %s: %v\n%s\nfarm:\n%s", victim, r.err, r.stderr, f.logs())
	}
	if got := c.read(r.out); got != "finished\n" {
		t.Errorf("output %q", got)
	}
	c.verify(r.out)
	survivor := map[string]string{"w1": "w2", "w2": "w1"}[victim]
	if got := f.workerOf("long"); got != survivor {
		t.Errorf("the build completed on %s, want %s", got, survivor)
	}

	// The killed worker comes back, registers again and takes work.
	agents[victim].start()
	f.waitWorkers(victim)
	c2 := newClient(t)
	file2 := c2.expr("after", `map (n: mk { name = "after-${n}"; args = ["-c" "sleep 2; echo ${n} > $out"]; }) [ "x" "y" ]`)
	r = c2.buildWith(f, f.buildersLine("ssh-ng", "x86_64-linux", "", 2), file2)
	if r.err != nil {
		t.Fatalf("builds after the restart: %v\n%s", r.err, r.stderr)
	}
	if f.workerOf("after-x") != victim && f.workerOf("after-y") != victim {
		t.Errorf("the restarted worker %s took no work: %v", victim, f.builtBy())
	}
}

// Two clients ask for the same derivation at the same moment: it is built
// once and both get it.
func TestDedup(t *testing.T) {
	f := startFarm(t)
	var wg sync.WaitGroup
	results := make([]result, 2)
	var drv string
	for i := range results {
		c := newClient(t)
		file := c.expr("shared", `mk { name = "shared-build"; args = ["-c" "echo building once; sleep 2; echo shared > $out"]; }`)
		if i == 0 {
			drv = c.instantiate(file)[0]
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.build(f, "ssh-ng", file)
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("client %d: %v\n%s", i, r.err, r.stderr)
		}
	}
	if results[0].out != results[1].out {
		t.Errorf("outputs differ: %s, %s", results[0].out, results[1].out)
	}
	if n := f.builtCount(drv); n != 1 {
		t.Errorf("built %d times", n)
	}
}

// A derivation no worker can build fails once the grace period is over,
// with a message naming the system, the features, and the workers.
func TestUnbuildable(t *testing.T) { forClients(t, testUnbuildable) }

func testUnbuildable(t *testing.T, v *nixVersion) {
	f := startFarm(t, "--unbuildable-grace", "2s")
	c := newClientOf(t, v)
	file := c.expr("riscv", `mk { name = "riscv-only"; system = "riscv64-linux"; requiredSystemFeatures = [ "kvm" ]; args = ["-c" "echo > $out"]; }`)
	r := c.buildWith(f, f.buildersLine("ssh-ng", "x86_64-linux,riscv64-linux", "kvm", 4), file)
	if r.err == nil {
		t.Fatal("a riscv64-linux build succeeded")
	}
	for _, want := range []string{"nixfarm has no worker that can build", "'riscv64-linux' machine", "{kvm}", "local (x86_64-linux", "To fix it: list in your builders line", "nixfarm doctor --drv"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("client output lacks %q:\n%s", want, r.stderr)
		}
	}
}

// A static worker from a machines file: an OpenSSH sshd on 127.0.0.1 with
// a chroot store, with nothing installed but Nix.
func TestStaticWorker(t *testing.T) {
	s := startSSHD(t)
	machines := t.TempDir() + "/machines"
	line := fmt.Sprintf("ssh://static-builder?remote-store=%s x86_64-linux %s 2 1 - - %s\n", s.store, s.clientKey, s.hostKeyB64)
	if err := os.WriteFile(machines, []byte("# the test's static builder\n"+line), 0o644); err != nil {
		t.Fatal(err)
	}
	f := startFarmEnv(t, []string{"NIX_SSHOPTS=-F " + s.sshConfig}, "--local-worker=false", "--machines", machines)
	c := newClient(t)
	file := c.expr("static", chainExpr)
	outs := c.mustBuild(f, "ssh-ng", file)
	if len(outs) != 1 || !strings.Contains(c.read(outs[0]), "c ") {
		t.Fatalf("outputs %v", outs)
	}
	c.verify(outs[0])
	if counts := f.builtBy(); counts["static-builder"] != 3 {
		t.Errorf("builds per worker: %v", counts)
	}
}

// Restart the coordinator while builds are queued: completed outputs and
// logs survive, and a client that retries gets its builds.
func TestCoordinatorRestart(t *testing.T) {
	f := startFarm(t, "--local-jobs", "1")
	c := newClient(t)
	file := c.expr("queued", `map (n: mk { name = "queued-${n}"; args = ["-c" "echo log of ${n}; sleep 2; echo ${n} > $out"]; }) [ "1" "2" "3" "4" ]`)
	done := make(chan result, 1)
	go func() { done <- c.buildWith(f, f.buildersLine("ssh-ng", "x86_64-linux", "", 4), file) }()

	// Once one build is done and the others are queued or running, restart.
	deadline := time.Now().Add(60 * time.Second)
	for f.countBuiltLike("queued-") < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no build finished:\n%s", f.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	f.restart()
	if r := <-done; r.err == nil {
		t.Log("the client finished before the restart cut it off")
	}

	// Every build completed before the restart still has its output in
	// the farm store and its log on disk.
	rows, err := f.db().Query(`SELECT id, drv_path, outputs FROM builds WHERE status = 0`)
	if err != nil {
		t.Fatal(err)
	}
	type done1 struct{ id, drv, outputs string }
	var completed []done1
	for rows.Next() {
		var d done1
		rows.Scan(&d.id, &d.drv, &d.outputs)
		completed = append(completed, d)
	}
	rows.Close()
	if len(completed) == 0 {
		t.Fatal("no completed builds recorded")
	}
	for _, d := range completed {
		out := strings.TrimPrefix(d.outputs, "out=")
		var n int
		f.db().QueryRow(`SELECT count(*) FROM objects WHERE path = ?`, out).Scan(&n)
		if n != 1 {
			t.Errorf("output %s of %s is not in the farm store", out, d.drv)
		}
		log, err := os.ReadFile(f.stateDir + "/logs/" + d.id + ".log")
		name := strings.TrimSuffix(d.drv[strings.LastIndex(d.drv, "-")+1:], ".drv")
		if err != nil || !strings.Contains(string(log), "log of "+name) {
			t.Errorf("log of %s: %q, %v", d.drv, log, err)
		}
	}

	// The client retries and gets everything; nothing completed is rebuilt.
	r := c.buildWith(f, f.buildersLine("ssh-ng", "x86_64-linux", "", 4), file)
	if r.err != nil {
		t.Fatalf("retry after the restart: %v\n%s\nfarm:\n%s", r.err, r.stderr, f.logs())
	}
	if outs := strings.Fields(r.out); len(outs) != 4 {
		t.Errorf("outputs %v", outs)
	}
	for _, d := range completed {
		if n := f.builtCount(d.drv); n != 1 {
			t.Errorf("%s built %d times", d.drv, n)
		}
	}
}

// countBuiltLike counts successful builds whose derivation name contains s.
func (f *farm) countBuiltLike(s string) int {
	var n int
	f.db().QueryRow(`SELECT count(*) FROM builds WHERE drv_path LIKE ? AND status = 0`, "%"+s+"%").Scan(&n)
	return n
}

// A client that disconnects mid-build: the build goes on and its result
// is kept, so the next request is answered from the farm store.
func TestClientDisconnectBuildGoesOn(t *testing.T) {
	f := startFarm(t)
	c := newClient(t)
	file := c.expr("orphan", `mk { name = "orphan"; args = ["-c" "sleep 3; echo kept > $out"]; }`)
	drv := c.instantiate(file)[0]
	cmd := c.command(context.Background(), []string{"NIX_SSHOPTS=-F " + f.sshConfig}, "nix-build", "--store", c.store,
		"--option", "substituters", "", "--max-jobs", "0", "--builders", f.builders("ssh-ng"), "--no-out-link", file)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for running := false; !running; {
		for _, w := range f.workers() {
			running = running || len(w.Running) > 0
		}
		if time.Now().After(deadline) {
			t.Fatalf("the build did not start:\n%s", f.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The client goes away: nix-build, its build hook and its ssh.
	cmd.Process.Kill()
	cmd.Wait()
	exec.Command("pkill", "-KILL", "-f", f.sshConfig).Run()

	for f.builtCount(drv) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the abandoned build was not finished and kept:\n%s", f.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(f.logs(), "client went away; the build goes on") {
		t.Errorf("the farm did not note the disconnect")
	}
	c2 := newClient(t)
	file2 := c2.expr("orphan", `mk { name = "orphan"; args = ["-c" "sleep 3; echo kept > $out"]; }`)
	outs := c2.mustBuild(f, "ssh-ng", file2)
	if got := c2.read(outs[0]); got != "kept\n" {
		t.Errorf("output %q", got)
	}
	if n := f.builtCount(drv); n != 1 {
		t.Errorf("built %d times", n)
	}
}
