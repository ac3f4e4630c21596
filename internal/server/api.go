package server

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/nixfarm/nixfarm/internal/scheduler"
)

// api serves the farm's read-only HTTP API. Without credentials it says
// only what is no account's business: which workers there are, their
// state and load, and how many builds run and wait. Which derivations
// run, and for which accounts, needs the farm's API token (a bearer
// token, in STATE-DIR/api-token). A build can reach this port (fixed-output
// builds have the network), so nothing here may depend on where a
// request comes from.
//
// Every other path is the binary cache (caches.go).
func (f *Farm) api(cache http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", cache)
	mux.HandleFunc("GET /api/v1/workers", func(w http.ResponseWriter, r *http.Request) {
		workers := f.sched.Workers()
		if !f.apiAuthorized(r) {
			workers = scheduler.Anonymous(workers)
		}
		writeJSON(w, map[string]any{"workers": workers, "queued": f.sched.Queued()})
	})
	mux.Handle("GET /metrics", f.metrics.Handler()) // aggregates only: no account, no path
	mux.HandleFunc("GET /-/healthy", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	return mux
}

// apiAuthorized reports whether r carries the farm's API token.
func (f *Farm) apiAuthorized(r *http.Request) bool {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && f.apiToken != "" && subtle.ConstantTimeCompare([]byte(token), []byte(f.apiToken)) == 1
}

// loadOrCreateAPIToken reads the API token, creating it on first start.
func loadOrCreateAPIToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		if t := strings.TrimSpace(string(data)); len(t) >= 32 {
			return t, nil
		}
		return "", fmt.Errorf("the API token in %s is shorter than 32 characters", path)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("reading the API token: %w", err)
	}
	b := make([]byte, 32)
	rand.Read(b)
	t := base64.RawURLEncoding.EncodeToString(b)
	if err := os.WriteFile(path, []byte(t+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("writing the API token: %w", err)
	}
	return t, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
