package records_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/records"
)

func TestWriteTableUsage(t *testing.T) {
	list := []records.Record{
		{ID: 1, Status: records.Built, QueuedAt: t0, CPUSeconds: 2.04, PeakMemory: 3 << 20},
		{ID: 2, Status: records.Built, QueuedAt: t0},
	}
	var b strings.Builder
	if err := records.WriteTable(&b, list, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	if !strings.Contains(lines[0], "CPU") || !strings.Contains(lines[0], "MEMORY") {
		t.Errorf("no CPU and MEMORY columns: %s", lines[0])
	}
	if !strings.Contains(lines[1], " 2s ") || !strings.Contains(lines[1], "3.0 MiB") {
		t.Errorf("measured build shows no CPU time or peak memory: %s", lines[1])
	}
	if strings.Contains(lines[2], "MiB") {
		t.Errorf("unmeasured build shows a peak: %s", lines[2])
	}
}
