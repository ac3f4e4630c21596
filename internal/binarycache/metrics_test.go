package binarycache_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nixfarm/nixfarm/internal/binarycache"
	"github.com/nixfarm/nixfarm/internal/metrics"
)

// Narinfos and NARs served are counted, rendered or remembered,
// compressed or plain; misses and refusals are not.
func TestMetricsCacheHits(t *testing.T) {
	m := metrics.New(nil)
	f := newFixture(t, func(c *binarycache.Config) { c.Metrics = m })
	info := add(t, f.alice, "hit", bytes.Repeat(random(2, 1024), 8))
	narinfoPath := "/" + info.Path.HashPart() + ".narinfo"
	f.get(t, narinfoPath)
	f.get(t, narinfoPath) // remembered
	f.get(t, narPath(info, ".nar.zst"))
	f.get(t, narPath(info, ".nar"))
	// Misses and refusals.
	if resp, _ := f.do(t, req{path: "/" + strings.Repeat("0", 32) + ".narinfo", login: "alice", token: f.aliceTok}); resp.StatusCode != http.StatusNotFound {
		t.Errorf("a missing narinfo: %s", resp.Status)
	}
	if resp, _ := f.do(t, req{path: narinfoPath}); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("without a token: %s", resp.Status)
	}
	if resp, _ := f.do(t, req{path: narinfoPath, login: "bob", token: f.bobTok}); resp.StatusCode != http.StatusNotFound {
		t.Errorf("another account's path: %s", resp.Status)
	}
	want := `
# HELP nixfarm_binary_cache_hits_total Binary cache requests served, by kind: narinfo, nar.
# TYPE nixfarm_binary_cache_hits_total counter
nixfarm_binary_cache_hits_total{kind="nar"} 2
nixfarm_binary_cache_hits_total{kind="narinfo"} 2
`
	if err := testutil.CollectAndCompare(m.Registry(), strings.NewReader(want), "nixfarm_binary_cache_hits_total"); err != nil {
		t.Error(err)
	}
}
