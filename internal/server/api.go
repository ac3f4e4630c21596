package server

import (
	"encoding/json"
	"net/http"
)

// api serves the farm's read-only HTTP API.
func (f *Farm) api() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/workers", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"workers": f.sched.Workers(), "queued": f.sched.Queued()})
	})
	mux.HandleFunc("GET /-/healthy", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
