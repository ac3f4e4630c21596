package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape is one reading of the farm's /metrics.
type scrape struct {
	text string
	fams map[string]*dto.MetricFamily
}

func scrapeMetrics(t *testing.T, f *farm) scrape {
	t.Helper()
	code, body := get(t, f.apiURL+"/metrics", "")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	return scrape{body, fams}
}

// value is the series of name whose labels include the given name=value
// pairs: a counter's or gauge's value, a histogram's count.
func (s scrape) value(name string, labels ...string) float64 {
	fam := s.fams[name]
	if fam == nil {
		return 0
	}
series:
	for _, m := range fam.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue series
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return 0
}

// /metrics parses, and its counters move by exactly what the test did:
// two builds that succeed, one that fails, one connection with an
// unknown key.
func TestMetricsCountWhatHappened(t *testing.T) {
	f := startFarm(t)
	c := newClient(t)
	before := scrapeMetrics(t, f)

	c.mustBuild(f, "ssh", c.expr("one", `mk { name = "metrics-one"; args = ["-c" "echo one > $out"]; }`))
	c.mustBuild(f, "ssh-ng", c.expr("two", `mk { name = "metrics-two"; args = ["-c" "echo two > $out"]; }`))
	if r := c.build(f, "ssh", c.expr("fail", `mk { name = "metrics-fail"; args = ["-c" "echo failing; exit 1"]; }`)); r.err == nil {
		t.Fatalf("the failing build succeeded:\n%s", r.stderr)
	}
	// A connection with a key the farm does not know.
	other := filepath.Join(f.dir, "stranger_ed25519")
	writeKey(t, other)
	cfg, err := os.ReadFile(f.sshConfig)
	if err != nil {
		t.Fatal(err)
	}
	stranger := farm{t: t, dir: f.dir, port: f.port, sshConfig: filepath.Join(f.dir, "stranger_ssh_config")}
	if err := os.WriteFile(stranger.sshConfig, []byte(strings.Replace(string(cfg), f.clientKey, other, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := sshCmd(&stranger, "nixfarm", "nix-store", "--serve", "--write"); code != 255 {
		t.Fatalf("the stranger's ssh exited %d:\n%s", code, stderr)
	}

	delta := func(after scrape, name string, labels ...string) float64 {
		return after.value(name, labels...) - before.value(name, labels...)
	}
	want := []struct {
		name   string
		labels []string
		n      float64
	}{
		{"nixfarm_builds_total", []string{"status", "built"}, 2},
		{"nixfarm_builds_total", []string{"status", "failed"}, 1},
		{"nixfarm_build_duration_seconds", nil, 3},
		{"nixfarm_build_queue_seconds", nil, 3},
		{"nixfarm_ssh_handshake_failures_total", []string{"listener", "client", "reason", "refused-key"}, 1},
	}
	// The farm counts a build once it is recorded and a command's bytes
	// once its session ends, which may be after the client has its
	// answer: wait for the counts to arrive, then check them exactly.
	var after scrape
	deadline := time.Now().Add(30 * time.Second)
	for {
		after = scrapeMetrics(t, f)
		arrived := delta(after, "nixfarm_ssh_bytes_in_total") > 0 && delta(after, "nixfarm_ssh_bytes_out_total") > 0 &&
			delta(after, "nixfarm_ssh_bytes_in_total") >= delta(after, "nixfarm_build_bytes_uploaded_total") &&
			delta(after, "nixfarm_ssh_bytes_out_total") >= delta(after, "nixfarm_build_bytes_downloaded_total")
		for _, w := range want {
			arrived = arrived && delta(after, w.name, w.labels...) >= w.n
		}
		if arrived || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, w := range want {
		if got := delta(after, w.name, w.labels...); got != w.n {
			t.Errorf("%s%v moved by %v, want %v", w.name, w.labels, got, w.n)
		}
	}
	for _, status := range []string{"timed-out", "cancelled", "infrastructure-error", "substituted", "cached"} {
		if got := delta(after, "nixfarm_builds_total", "status", status); got != 0 {
			t.Errorf("builds_total{status=%s} moved by %v", status, got)
		}
	}
	for _, reason := range []string{"timeout", "protocol", "caps"} {
		if got := delta(after, "nixfarm_ssh_handshake_failures_total", "listener", "client", "reason", reason); got != 0 {
			t.Errorf("handshake failures {reason=%s} moved by %v", reason, got)
		}
	}
	for _, name := range []string{"nixfarm_ssh_bytes_in_total", "nixfarm_ssh_bytes_out_total"} {
		if delta(after, name) <= 0 {
			t.Errorf("%s did not increase", name)
		}
	}
	// The bytes the builds' records hold are the build byte counters'
	// (the farm is fresh: every record is this test's), and part of the
	// SSH counters'.
	var up, down int64
	for _, r := range decodePage(t, "nixfarm builds --json", f.mustCLI("builds", "--json")) {
		up, down = up+r.BytesUploaded, down+r.BytesDownloaded
	}
	gotUp, gotDown := delta(after, "nixfarm_build_bytes_uploaded_total"), delta(after, "nixfarm_build_bytes_downloaded_total")
	if up == 0 || down == 0 || gotUp != float64(up) || gotDown != float64(down) {
		t.Errorf("build bytes counters moved by %v up, %v down; the records hold %d and %d", gotUp, gotDown, up, down)
	}
	if gotUp > delta(after, "nixfarm_ssh_bytes_in_total") || gotDown > delta(after, "nixfarm_ssh_bytes_out_total") {
		t.Errorf("build bytes %v/%v exceed the SSH bytes %v/%v", gotUp, gotDown, delta(after, "nixfarm_ssh_bytes_in_total"), delta(after, "nixfarm_ssh_bytes_out_total"))
	}
	if got := delta(after, "nixfarm_ssh_connections_total", "listener", "client"); got < 4 {
		t.Errorf("ssh connections moved by %v, want at least 4", got)
	}
	// The store's size is read at most every 10 s: the first scrape's
	// answer may still be served.
	if after.fams["nixfarm_store_paths"] == nil || after.value("nixfarm_worker_slots_total", "worker", "local") != 4 {
		t.Errorf("store paths %v, local worker's slots %v", after.fams["nixfarm_store_paths"], after.value("nixfarm_worker_slots_total", "worker", "local"))
	}
	if strings.Contains(after.text, "alice") || strings.Contains(after.text, "/nix/store/") {
		t.Errorf("/metrics names an account or a store path:\n%s", after.text)
	}
}

// The agent listener's connections are counted under listener="agent";
// an agent stopped with a signal says goodbye and is no loss, one that
// crashes (SIGKILL) is lost.
func TestMetricsAgents(t *testing.T) {
	f := startCoordinator(t)
	before := scrapeMetrics(t, f)
	polite, crashing := startAgent(t, f, "polite"), startAgent(t, f, "crashing")
	f.waitWorkers("polite", "crashing")
	polite.stop()
	crashing.kill()
	var after scrape
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		after = scrapeMetrics(t, f)
		if after.value("nixfarm_ssh_connections_open", "listener", "agent") == 0 && len(f.workers()) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if got := after.value("nixfarm_ssh_connections_total", "listener", "agent") - before.value("nixfarm_ssh_connections_total", "listener", "agent"); got != 2 {
		t.Errorf("agent connections moved by %v, want 2", got)
	}
	if got := after.value("nixfarm_ssh_connections_open", "listener", "agent"); got != 0 {
		t.Errorf("agent connections open: %v, want 0", got)
	}
	if got := after.value("nixfarm_ssh_connections_total", "listener", "client") - before.value("nixfarm_ssh_connections_total", "listener", "client"); got != 0 {
		t.Errorf("client connections moved by %v with agents only", got)
	}
	if got := after.value("nixfarm_worker_losses_total", "worker", "crashing"); got != 1 {
		t.Errorf("losses of the crashed agent: %v, want 1\nfarm:\n%s", got, f.logs())
	}
	if got := after.value("nixfarm_worker_losses_total", "worker", "polite"); got != 0 {
		t.Errorf("losses of the agent stopped with a signal: %v, want 0\nfarm:\n%s", got, f.logs())
	}
}
