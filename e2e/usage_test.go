package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/records"
)

// usageBurn keeps a CPU busy until the builder has used 2 s of CPU
// (utime + stime in /proc/$$/stat, in ticks of 1/100 s): 2 s of CPU
// however loaded the machine is. usageSleep uses next to none for 2 s.
const (
	usageBurn  = `while :; do read -r s < /proc/$$/stat; set -- $s; [ $((\${14}+\${15})) -ge 200 ] && break; done; echo burnt > $out`
	usageSleep = `sleep 2; echo slept > $out`
)

// requireCgroups skips (loudly; under CI it fails) where the farm cannot
// measure builds: not root, or no cgroups.
func requireCgroups(t *testing.T) {
	t.Helper()
	_, v1 := os.Stat("/sys/fs/cgroup/cpuacct/cpuacct.usage")
	_, v2 := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	if os.Geteuid() == 0 && (v1 == nil || v2 == nil) {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("builds' CPU time cannot be measured here (root and cgroups needed), and CI must run this test")
	}
	t.Skip("*** SKIPPING: builds' CPU time cannot be measured here (root and cgroups needed)")
}

// checkUsage builds a CPU burner and a sleeper on f and checks the CPU
// time and peak memory their records show.
func checkUsage(t *testing.T, f *farm, worker string) {
	c := newClient(t)
	burner := c.expr("usage-burn", `mk { name = "usage-burn"; args = ["-c" "`+usageBurn+`"]; }`)
	sleeper := c.expr("usage-sleep", `mk { name = "usage-sleep"; args = ["-c" "`+usageSleep+`"]; }`)
	c.mustBuild(f, "ssh-ng", burner)
	c.mustBuild(f, "ssh", sleeper)
	list := decodePage(t, "nixfarm builds --json", f.mustCLI("builds", "--json"))
	b, s := byName(list, "usage-burn"), byName(list, "usage-sleep")
	if len(b) != 1 || len(s) != 1 {
		t.Fatalf("records: %+v", list)
	}
	t.Logf("on %s: burner %.3f s CPU, %d bytes peak; sleeper %.3f s CPU, %d bytes peak", worker,
		b[0].CPUSeconds, b[0].PeakMemory, s[0].CPUSeconds, s[0].PeakMemory)
	if r := b[0]; r.Worker != worker || r.Status != records.Built || r.CPUSeconds < 1 || r.CPUSeconds > 3 || r.PeakMemory <= 0 {
		t.Errorf("the burner's record: %+v", r)
	}
	if r := s[0]; r.Worker != worker || r.CPUSeconds >= 0.5 || r.PeakMemory <= 0 {
		t.Errorf("the sleeper's record: %+v", r)
	}
	if table := f.mustCLI("builds"); !strings.Contains(table, "CPU") || !strings.Contains(table, "MEMORY") {
		t.Errorf("nixfarm builds shows no CPU or memory:\n%s", table)
	}
	// The API shows the same figures as the CLI.
	token, err := os.ReadFile(filepath.Join(f.stateDir, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	code, body := get(t, f.apiURL+"/api/v1/builds?drv=usage-", strings.TrimSpace(string(token)))
	if code != 200 {
		t.Fatalf("GET /api/v1/builds: %d %s", code, body)
	}
	api := decodePage(t, "/api/v1/builds", body)
	for _, want := range []records.Record{b[0], s[0]} {
		got := byName(api, want.DrvName())
		if len(got) != 1 || got[0].ID != want.ID || got[0].Account != "alice" || got[0].Worker != worker ||
			got[0].Status != records.Built || got[0].CPUSeconds != want.CPUSeconds || got[0].PeakMemory != want.PeakMemory ||
			len(got[0].Outputs) != 1 || len(want.Outputs) != 1 || got[0].Outputs[0].NarSize == 0 || got[0].Outputs[0].NarSize != want.Outputs[0].NarSize {
			t.Errorf("the API's record of %s: %+v, the CLI's: %+v", want.DrvName(), got, want)
		}
	}
}

// The built-in worker measures each build's CPU time and peak memory
// (cgroups), and nixfarm builds shows them.
func TestBuildUsage(t *testing.T) {
	requireCgroups(t)
	checkUsage(t, startFarm(t), "local")
}

// An agent measures its builds the same way and reports the figures with
// the build's end.
func TestAgentBuildUsage(t *testing.T) {
	requireCgroups(t)
	f := startCoordinator(t)
	startAgent(t, f, "meter")
	f.waitWorkers("meter")
	checkUsage(t, f, "meter")
}
