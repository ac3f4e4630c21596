package server

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/nixfarm/nixfarm/internal/apiauth"
	"github.com/nixfarm/nixfarm/internal/dashboard"
	"github.com/nixfarm/nixfarm/internal/scheduler"
)

// api serves the farm's read-only HTTP API. Without credentials it says
// only what is no account's business: which workers there are, their
// state and load, and how many builds run and wait. An account's API
// token (`nixfarm tokens create`) shows that account's own builds as
// well; an admin token, or the farm's API token (STATE-DIR/api-token),
// shows every account's. Tokens come as "Authorization: Bearer TOKEN" or
// in the nixfarm_token cookie (package apiauth). A build can reach this
// port (fixed-output builds have the network), so nothing here may
// depend on where a request comes from.
//
// /healthz says the process is up; /readyz that the database answers and
// the scheduler runs (/-/healthy is /healthz's old name).
//
// /ui/ is the web dashboard (package dashboard), on the same tokens.
//
// Every other path is the binary cache (caches.go).
func (f *Farm) api(cache http.Handler) http.Handler {
	auth := apiauth.New(apiauth.Config{Lookup: f.accounts, FarmToken: f.apiToken, Log: f.log})
	mux := http.NewServeMux()
	mux.Handle("/", cache)
	mux.Handle("GET /api/v1/workers", auth.AllowAnonymous(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		workers := visibleWorkers(f.sched.Workers(), apiauth.FromContext(r.Context()))
		writeJSON(w, map[string]any{"workers": workers, "queued": f.sched.Queued()})
	})))
	f.buildsAPI(mux, auth)
	mux.Handle("GET /metrics", f.metrics.Handler()) // aggregates only: no account, no path
	queue := f.queueAPI(mux, auth)
	f.usageAPI(mux, auth)
	if f.records != nil {
		dashboard.New(dashboard.Config{Auth: auth, Records: f.records, Farm: snapshotFarm{f.sched, queue}, Log: f.log}).Register(mux) // /ui/
	}
	healthy := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	}
	mux.HandleFunc("GET /healthz", healthy)
	mux.HandleFunc("GET /-/healthy", healthy)
	mux.HandleFunc("GET /readyz", f.ready)
	return mux
}

// visibleWorkers is what v may see of workers: an admin everything, an
// account the drv paths of its own running builds, anyone else no
// account's.
func visibleWorkers(workers []scheduler.WorkerInfo, v apiauth.Viewer) []scheduler.WorkerInfo {
	if v.Admin {
		return workers
	}
	out := scheduler.Anonymous(workers)
	if v.Account == "" {
		return out
	}
	for i, w := range workers {
		for j, b := range w.Running {
			if v.CanSee(b.Account) {
				out[i].Running[j] = b
			}
		}
	}
	return out
}

// readyTimeout bounds /readyz's database query.
const readyTimeout = 2 * time.Second

// ready answers 200 when the database answers a trivial query and the
// scheduler runs, else 503 naming what is not ready.
func (f *Farm) ready(w http.ResponseWriter, r *http.Request) {
	notReady := map[string]string{}
	ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
	defer cancel()
	var one int
	if err := f.db.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		f.log.Warn("readiness: the database does not answer", "err", err)
		notReady["database"] = "does not answer a query"
	}
	if !f.sched.Running() {
		notReady["scheduler"] = "stopped"
	}
	w.Header().Set("Cache-Control", "no-store")
	if len(notReady) > 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(map[string]any{"ready": false, "notReady": notReady})
		return
	}
	writeJSON(w, map[string]any{"ready": true})
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
