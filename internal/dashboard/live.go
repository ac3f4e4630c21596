package dashboard

import (
	"net/http"
	"strings"

	"github.com/nixfarm/nixfarm/internal/apiauth"
)

// Live parts of pages: GET /ui/live/{overview,workers,builds} answers the
// part of the page that changes (its template "live", drawn by the same
// handler and template as the page, for the same viewer) as an HTML
// fragment; static/live.js fetches it every few seconds and swaps it in.

// fragment serves h's live part to requests with a good token: without
// one it answers 401 (the script says the login is gone), never the
// login page's redirect.
func (d *Dashboard) fragment(h func(w http.ResponseWriter, r *http.Request, p *page)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		v, err := d.cfg.Auth.Authenticate(r)
		switch {
		case err == nil && !v.Anonymous():
		case err == nil || apiauth.Reason(err) != "":
			if why := apiauth.Reason(err); why != "missing" && why != "" {
				http.SetCookie(w, clearCookie(r))
			}
			http.Error(w, "log in again", http.StatusUnauthorized)
			return
		default:
			d.cfg.Log.Error("dashboard: checking a token", "err", err)
			http.Error(w, "the farm could not check your token", http.StatusServiceUnavailable)
			return
		}
		h(w, r, &page{Viewer: v, Now: d.cfg.Now(), Fragment: true})
	})
}

// renderFragment draws page name's "live" template; an error page is
// its message as text (the script keeps what it shows and tries again).
func (d *Dashboard) renderFragment(w http.ResponseWriter, name string, code int, p *page) {
	if name == "error" {
		msg := http.StatusText(code)
		if e, ok := p.Data.(struct {
			Code    int
			Message string
		}); ok {
			msg = e.Message
		}
		http.Error(w, msg, code)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
	var buf strings.Builder
	if err := d.pages[name].ExecuteTemplate(&buf, "live", p); err != nil {
		d.cfg.Log.Error("dashboard: rendering a live fragment", "page", name, "err", err)
		http.Error(w, "the page could not be drawn", http.StatusInternalServerError)
		return
	}
	w.WriteHeader(code)
	w.Write([]byte(buf.String()))
}
