package agent

import (
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/usage"
)

func TestParseUsage(t *testing.T) {
	u, err := parseUsage([]byte(`{"cpuNanos":2000000000,"peakMemory":1048576,"later":"ignored"}`))
	if want := (usage.Usage{CPU: 2 * time.Second, PeakMemory: 1 << 20, Measured: true}); err != nil || u != want {
		t.Errorf("parseUsage = %+v, %v; want %+v", u, err, want)
	}
	for _, bad := range []string{`{"cpuNanos":-1}`, `{"peakMemory":-5}`, `{"cpuNanos":1e30}`, `{"peakMemory":1125899906842625}`, `[`, `"x"`} {
		if u, err := parseUsage([]byte(bad)); err == nil {
			t.Errorf("parseUsage(%s) = %+v, want an error", bad, u)
		}
	}
	var r reportedUsage
	if u, _ := r.Sample(); u.Measured {
		t.Error("no report, yet measured")
	}
	r.set(usage.Usage{CPU: time.Second, Measured: true})
	if u, _ := r.Sample(); u.CPU != time.Second {
		t.Errorf("report not kept: %+v", u)
	}
}
