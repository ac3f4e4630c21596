package substituter

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nixfarm/nixfarm/internal/metrics"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

func TestMetricsSubstitutions(t *testing.T) {
	u := newTestCache(t, "metrics")
	ok, _ := u.add(spec{name: "ok", contents: "fine"})
	refused, _ := u.add(spec{name: "refused", contents: "lz4", compression: "lz4"})
	gone, gni := u.add(spec{name: "gone", contents: "its NAR is gone"})
	if err := os.Remove(filepath.Join(u.dir, gni.URL)); err != nil {
		t.Fatal(err)
	}
	m := metrics.New(nil)
	s, _, _ := newSub(t, Config{URLs: []string{u.url()}, Keys: []signature.PublicKey{u.pub()}, Metrics: m})
	for _, p := range []storepath.Path{ok, refused, gone} {
		s.Substitute(context.Background(), []storepath.Path{p}, nil)
	}
	want := `
# HELP nixfarm_substitutions_total Paths fetched from upstream caches, per attempt on one cache, by result: ok, refused (the farm would not take it), failed.
# TYPE nixfarm_substitutions_total counter
nixfarm_substitutions_total{result="failed"} 1
nixfarm_substitutions_total{result="ok"} 1
nixfarm_substitutions_total{result="refused"} 1
`
	if err := testutil.CollectAndCompare(m.Registry(), strings.NewReader(want), "nixfarm_substitutions_total"); err != nil {
		t.Error(err)
	}
}
