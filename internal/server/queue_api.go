package server

import (
	"net/http"

	"github.com/nixfarm/nixfarm/internal/apiauth"
	"github.com/nixfarm/nixfarm/internal/scheduler"
)

// GET /api/v1/queue: the builds waiting for a worker, by class, each
// with its position, the reason it waits and its estimated start.
// Anyone sees how many wait in each class; an account's token also each
// queued build's position, reason and estimate, with the derivation and
// account of its own; an admin's everything.

// queueAPI adds the route, and returns the listing it shares with the
// dashboard (queue_cache.go).
func (f *Farm) queueAPI(mux *http.ServeMux, auth *apiauth.Authenticator) *queueSnapshot {
	queue := f.sharedQueue()
	mux.Handle("GET /api/v1/queue", auth.AllowAnonymous(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, visibleQueue(queue.get(), apiauth.FromContext(r.Context())))
	})))
	return queue
}

// queueClass is one class in the queue listing; Builds is left out for
// anonymous viewers.
type queueClass struct {
	Class    string                  `json:"class"`
	System   string                  `json:"system"`
	Features []string                `json:"features"`
	Queued   int                     `json:"queued"`
	Builds   []scheduler.QueuedBuild `json:"builds,omitempty"`
}

// visibleQueue is what v may see of the queue.
func visibleQueue(classes []scheduler.ClassQueue, v apiauth.Viewer) map[string]any {
	out := make([]queueClass, 0, len(classes))
	total := 0
	for _, c := range classes {
		qc := queueClass{Class: c.Class, System: c.System, Features: c.Features, Queued: len(c.Builds)}
		total += len(c.Builds)
		if v.Admin || v.Account != "" {
			qc.Builds = make([]scheduler.QueuedBuild, len(c.Builds))
			for i, b := range c.Builds {
				if !v.CanSee(b.Account) {
					b.DrvPath, b.Account = "", ""
				}
				qc.Builds[i] = b
			}
		}
		out = append(out, qc)
	}
	return map[string]any{"classes": out, "queued": total}
}
