package records_test

import (
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/records"
)

// A derivation's system is the client's to choose, and the operator's
// `nixfarm builds` lists every account's: its terminal escapes (OSC 52
// writes the clipboard, CSI moves the cursor over other lines) and tabs
// must not reach the terminal as they are.
func TestWriteTableHostileSystem(t *testing.T) {
	rec := records.Record{ID: 1, DrvPath: "/nix/store/" + strings.Repeat("a", 32) + "-x.drv", Account: "mallory", Status: records.Queued,
		System: "x86_64-linux\x1b]52;c;ZWNobyBldmls\x07\x1b[2A\tfake\r\n9\tbuilt", QueuedAt: t0}
	var b strings.Builder
	if err := records.WriteTable(&b, []records.Record{rec}, t0); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if strings.ContainsAny(out, "\x1b\x07\t\r") || strings.Count(out, "\n") != 2 {
		t.Errorf("the table passes the system's control characters on:\n%q", out)
	}
}

// So must the summary's, which the operator may print for every account.
func TestSummaryHostileSystem(t *testing.T) {
	rec := records.Record{ID: 1, DrvPath: "/nix/store/" + strings.Repeat("a", 32) + "-x.drv", Account: "mallory", Status: records.Failed,
		System: "x86_64-linux\x1b]52;c;ZWNobyBldmls\x07", QueuedAt: t0, StartedAt: t0, StoppedAt: t0}
	var b strings.Builder
	if err := records.WriteSummary(&b, []records.Record{rec}, records.SummaryOptions{}); err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(b.String(), "\x1b\x07") {
		t.Errorf("the summary passes the system's control characters on:\n%q", b.String())
	}
}
