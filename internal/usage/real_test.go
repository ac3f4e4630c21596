package usage

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// skipLoudly skips a test that this machine cannot run, or fails it
// under CI=true, as testutil's checks do (testutil imports this package
// through worker).
func skipLoudly(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s, and CI must run this test", why)
	}
	t.Skipf("*** SKIPPING: %s", why)
}

// measure runs script in sh under m, the way Local runs nix-store: the
// process is moved into its group before it forks (it waits for a line
// on stdin first), and sampled after it has ended.
func measure(t *testing.T, m Meter, script string) Usage {
	t.Helper()
	cmd := exec.Command("sh", "-c", "read go; "+script)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p, err := m.Start(cmd.Process.Pid)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal(err)
	}
	if err := p.Reset(); err != nil {
		t.Error(err)
	}
	io.WriteString(stdin, "go\n")
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	u, err := p.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("removing the group: %v", err)
	}
	return u
}

// burn keeps a CPU busy, in a child of the measured process, until that
// child has used 2 seconds of CPU (utime + stime in /proc/PID/stat, in
// clock ticks of 1/100 s): 2 s of CPU however busy the machine is, where
// a wall-clock burn gets less on a loaded machine. Sleep keeps none busy.
const (
	burn  = `sh -c 'while :; do read -r s < /proc/$$/stat; set -- $s; [ $((${14}+${15})) -ge 200 ] && break; done'`
	sleep = `sleep 2`
)

func checkBurnAndSleep(t *testing.T, m Meter, wantPeak bool) {
	busy := measure(t, m, burn)
	idle := measure(t, m, sleep)
	t.Logf("%s: 2 s burning: %v CPU, %d bytes peak; 2 s sleeping: %v CPU, %d bytes peak", m.Kind(), busy.CPU, busy.PeakMemory, idle.CPU, idle.PeakMemory)
	if !busy.Measured || !idle.Measured {
		t.Fatal("not measured")
	}
	if busy.CPU < time.Second || busy.CPU > 3*time.Second {
		t.Errorf("2 s of burning measured as %v of CPU", busy.CPU)
	}
	if idle.CPU > 500*time.Millisecond {
		t.Errorf("2 s of sleep measured as %v of CPU", idle.CPU)
	}
	if wantPeak && (busy.PeakMemory <= 0 || idle.PeakMemory <= 0) {
		t.Errorf("no peak memory: %d, %d", busy.PeakMemory, idle.PeakMemory)
	}
}

func requireRealCgroups(t *testing.T) []mount {
	if os.Geteuid() != 0 {
		skipLoudly(t, "not root: cannot make control groups")
	}
	mounts, err := cgroupMounts("/proc/self/mountinfo")
	if err != nil || len(mounts) == 0 {
		skipLoudly(t, "no cgroup file system is mounted")
	}
	return mounts
}

// TestRealMeter measures on this machine with what Detect picks.
func TestRealMeter(t *testing.T) {
	requireRealCgroups(t)
	m := Detect(slog.Default())
	if m.Kind() == "none" {
		skipLoudly(t, "no usable cgroups on this machine (see the log)")
	}
	_, v2 := m.(*V2)
	checkBurnAndSleep(t, m, !v2 || m.(*V2).memory)
}

// TestRealV2 measures with cgroup v2 wherever it is mounted, on a hybrid
// machine too (where it has no memory controller: CPU only).
func TestRealV2(t *testing.T) {
	mounts := requireRealCgroups(t)
	own, err := ownGroups("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, mt := range mounts {
		if !mt.v2 {
			continue
		}
		rel, ok := strings.CutPrefix(own[""], mt.root)
		if !ok {
			continue
		}
		m, err := NewV2(filepath.Join(mt.dir, rel, ParentName), slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		checkBurnAndSleep(t, m, m.memory)
		return
	}
	skipLoudly(t, "cgroup v2 is not mounted")
}
