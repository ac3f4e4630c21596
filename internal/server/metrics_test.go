package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// /metrics is on the HTTP API, without credentials, in Prometheus's text
// format, with the scheduler's and the store's series collected at the
// scrape, and nothing in it names an account.
func TestMetricsEndpoint(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f, err := Start(ctx, Config{StateDir: t.TempDir(), SSHListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- f.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := f.accounts.Add(ctx, "alice-secret-name"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.httpSrv.Handler)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s: %s", resp.Status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	for _, name := range []string{"nixfarm_builds_total", "nixfarm_builds_running", "nixfarm_builds_queued",
		"nixfarm_store_paths", "nixfarm_store_bytes", "nixfarm_ssh_connections_total", "process_cpu_seconds_total"} {
		if fams[name] == nil {
			t.Errorf("/metrics has no %s:\n%s", name, body)
		}
	}
	if strings.Contains(string(body), "alice-secret-name") {
		t.Error("/metrics names an account")
	}
}
