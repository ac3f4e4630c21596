package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/records"
)

// After a success, a failure and a CPU burner, `nixfarm usage` counts
// alice's three builds, the failed one among them, and the burner's CPU
// time; `ssh FARM nixfarm usage` shows her the same, and `ssh FARM
// nixfarm summary` lists the failure in its failures table.
func TestUsageAndSummary(t *testing.T) {
	requireCgroups(t)
	f := startFarm(t)
	c := newClient(t)
	good := c.expr("sum-good", `mk { name = "sum-good"; args = ["-c" "echo hello > $out"]; }`)
	bad := c.expr("sum-bad", `mk { name = "sum-bad"; args = ["-c" "echo about to fail; exit 1"]; }`)
	burner := c.expr("sum-burn", `mk { name = "sum-burn"; args = ["-c" "`+usageBurn+`"]; }`)
	c.mustBuild(f, "ssh-ng", good)
	if r := c.build(f, "ssh", bad); r.err == nil {
		t.Fatal("the failing build succeeded")
	}
	c.mustBuild(f, "ssh-ng", burner)

	decode := func(what, out string) records.Usage {
		t.Helper()
		var u records.Usage
		if err := json.Unmarshal([]byte(out), &u); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, out)
		}
		return u
	}
	check := func(what string, u records.Usage) {
		t.Helper()
		if len(u.Accounts) != 1 || u.Accounts[0].Account != "alice" {
			t.Fatalf("%s: accounts %+v", what, u.Accounts)
		}
		a := u.Accounts[0]
		t.Logf("%s: %d builds %v, %.6f CPU hours, peak %d bytes, outputs %d bytes", what, a.Builds, a.ByStatus, a.CPUHours, a.PeakMemory, a.OutputBytes)
		if a.Builds != 3 || a.ByStatus[records.Built] != 2 || a.ByStatus[records.Failed] != 1 {
			t.Errorf("%s: builds %d by status %v, want 2 built and 1 failed", what, a.Builds, a.ByStatus)
		}
		// The burner uses 2 s of CPU; the other two next to none.
		if a.CPUHours < 1.0/3600 || a.CPUHours > 3.5/3600 {
			t.Errorf("%s: %.6f CPU hours, want the burner's 2 s (%.6f)", what, a.CPUHours, 2.0/3600)
		}
		if a.PeakMemory <= 0 || a.OutputBytes == 0 || a.BuildSeconds <= 0 {
			t.Errorf("%s: %+v", what, a.Totals)
		}
	}
	check("nixfarm usage --json", decode("nixfarm usage", f.mustCLI("usage", "--account", "alice", "--since", "1h", "--json")))
	if table := f.mustCLI("usage"); !strings.Contains(table, "alice") || !strings.Contains(table, "2 built, 1 failed") {
		t.Errorf("nixfarm usage:\n%s", table)
	}
	out, stderr, code := sshCmd(f, "nixfarm", "nixfarm", "usage", "--since", "1h", "--json")
	if code != 0 {
		t.Fatalf("ssh nixfarm usage: exit %d\n%s", code, stderr)
	}
	check("ssh nixfarm usage --json", decode("ssh nixfarm usage", out))

	out, stderr, code = sshCmd(f, "nixfarm", "nixfarm", "summary", "--since", "1h", "--format", "github")
	if code != 0 {
		t.Fatalf("ssh nixfarm summary: exit %d\n%s", code, stderr)
	}
	t.Logf("ssh nixfarm summary:\n%s", out)
	failures, built, ok := strings.Cut(out, "#### Failures (1)")
	if !ok || !strings.Contains(failures, "**2 built** · **1 failed**") {
		t.Fatalf("summary has no failures table or headline:\n%s", out)
	}
	failures, built, _ = strings.Cut(built, "#### Built (2)")
	if !strings.Contains(failures, "| `sum-bad` | x86_64-linux | failed | local |") || !strings.Contains(failures, "`nixfarm logs ") {
		t.Errorf("the failures table lacks sum-bad or its log:\n%s", failures)
	}
	if !strings.Contains(built, "`sum-good`") || !strings.Contains(built, "`sum-burn`") || strings.Contains(built, "sum-bad") {
		t.Errorf("the builds table:\n%s", built)
	}
	if md := f.mustCLI("summary", "--since", "1h", "--format", "github", "--log-url-base", f.apiURL); !strings.Contains(md, f.apiURL+"/api/v1/builds/") {
		t.Errorf("nixfarm summary --log-url-base:\n%s", md)
	}
}
