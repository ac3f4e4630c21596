// Package dashboard is the farm's web dashboard: server-rendered pages
// (html/template, embedded with go:embed) under /ui/ on the HTTP API's
// listener, showing the queue and running builds with live log tails,
// the workers, recent builds with filters, each build's log, and
// per-account usage as an SVG chart drawn by the server. A little
// JavaScript (static/live.js) keeps them live: it fetches each page's
// live part again every few seconds as an HTML fragment under /ui/live/
// (drawn by the same template, for the same viewer) and swaps it in, and
// keeps log tails live by reading the JSON API's log route from the
// offset it last read to. Without JavaScript the pages work, unrefreshed.
//
// It takes the API's tokens: the login page checks a token and keeps it
// in the nixfarm_token cookie (apiauth.Cookie: HttpOnly,
// SameSite=Strict); every page needs one, an account's sees its own
// builds, logs and usage, an admin's everything. State-changing requests
// (login, logout) must come from the dashboard's own origin (Origin, or
// else Referer, naming this host), against cross-site request forgery.
package dashboard

import (
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/nixfarm/nixfarm/internal/apiauth"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/records"
	"github.com/nixfarm/nixfarm/internal/scheduler"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Prefix is where the dashboard lives on the HTTP listener.
const Prefix = "/ui/"

// cookieAge is how long the browser keeps a login (the token's own
// expiry still applies).
const cookieAge = 7 * 24 * time.Hour

// Records reads the build records: records.Service.
type Records interface {
	List(ctx context.Context, v records.Viewer, f records.Filter) ([]records.Record, string, error)
	Get(ctx context.Context, v records.Viewer, id int64) (*records.Record, error)
	Usage(ctx context.Context, v records.Viewer, f records.UsageFilter) (*records.Usage, error)
}

// Farm is the live state: scheduler.Scheduler.
type Farm interface {
	Workers() []scheduler.WorkerInfo
	Queue() []scheduler.ClassQueue
}

// Config is what a Dashboard reads from.
type Config struct {
	Auth    *apiauth.Authenticator
	Records Records
	Farm    Farm
	Log     *slog.Logger
	// Now is the clock (time.Now if nil).
	Now func() time.Time
}

// Dashboard serves the pages.
type Dashboard struct {
	cfg   Config
	pages map[string]*template.Template
}

// New parses the templates; it panics if they are broken (they are
// embedded, so a test catches that).
func New(cfg Config) *Dashboard {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	d := &Dashboard{cfg: cfg, pages: map[string]*template.Template{}}
	base := template.Must(template.New("layout.html").Funcs(funcs(cfg.Now)).ParseFS(templateFS, "templates/layout.html", "templates/chart.html"))
	for _, p := range []string{"login", "overview", "workers", "builds", "build", "usage", "error"} {
		t := template.Must(base.Clone())
		d.pages[p] = template.Must(t.ParseFS(templateFS, "templates/"+p+".html"))
	}
	return d
}

// Register adds the dashboard's routes to mux.
func (d *Dashboard) Register(mux *http.ServeMux) {
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", noList(http.FileServerFS(static))))
	mux.Handle("GET /ui", http.RedirectHandler(Prefix, http.StatusFound))
	mux.HandleFunc("GET /ui/login", d.loginPage)
	mux.HandleFunc("POST /ui/login", d.login)
	mux.HandleFunc("POST /ui/logout", d.logout)
	mux.Handle("GET /ui/{$}", d.viewer(d.overview))
	mux.Handle("GET /ui/workers", d.viewer(d.workers))
	mux.Handle("GET /ui/builds", d.viewer(d.builds))
	mux.Handle("GET /ui/builds/{id}", d.viewer(d.build))
	mux.Handle("GET /ui/usage", d.viewer(d.usage))
	// The live parts of pages, as fragments (live.go).
	mux.Handle("GET /ui/live/overview", d.fragment(d.overview))
	mux.Handle("GET /ui/live/workers", d.fragment(d.workers))
	mux.Handle("GET /ui/live/builds", d.fragment(d.builds))
}

// noList refuses directory listings of the static files.
func noList(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "" || strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "max-age=300")
		h.ServeHTTP(w, r)
	})
}

// page is what every page's layout shows.
type page struct {
	Title  string
	Nav    string
	Viewer apiauth.Viewer
	Now    time.Time
	Data   any
	// Fragment draws only the page's "live" template (live.go).
	Fragment bool
}

// viewer serves h to requests with a good token cookie (or bearer
// token); others are sent to the login page.
func (d *Dashboard) viewer(h func(w http.ResponseWriter, r *http.Request, p *page)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, err := d.cfg.Auth.Authenticate(r)
		switch {
		case err == nil && !v.Anonymous():
		case err == nil || apiauth.Reason(err) != "":
			if apiauth.Reason(err) != "missing" && apiauth.Reason(err) != "" {
				http.SetCookie(w, clearCookie(r)) // expired or revoked: forget it
			}
			to := "/ui/login?next=" + url.QueryEscape(r.URL.RequestURI())
			if r := apiauth.Reason(err); r != "" && r != "missing" {
				to += "&why=" + url.QueryEscape(r)
			}
			http.Redirect(w, r, to, http.StatusSeeOther)
			return
		default:
			d.cfg.Log.Error("dashboard: checking a token", "err", err)
			d.fail(w, r, nil, http.StatusServiceUnavailable, "The farm could not check your token; try again.")
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		h(w, r, &page{Viewer: v, Now: d.cfg.Now()})
	})
}

func (d *Dashboard) render(w http.ResponseWriter, name string, code int, p *page) {
	if p.Fragment {
		d.renderFragment(w, name, code, p)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")
	w.Header().Set("Referrer-Policy", "same-origin")
	var buf strings.Builder
	if err := d.pages[name].ExecuteTemplate(&buf, "layout.html", p); err != nil {
		d.cfg.Log.Error("dashboard: rendering a page", "page", name, "err", err)
		http.Error(w, "the page could not be drawn", http.StatusInternalServerError)
		return
	}
	w.WriteHeader(code)
	w.Write([]byte(buf.String()))
}

// fail shows an error page; p may be nil before login.
func (d *Dashboard) fail(w http.ResponseWriter, r *http.Request, p *page, code int, msg string) {
	if p == nil {
		p = &page{Now: d.cfg.Now()}
	}
	p.Title, p.Data = http.StatusText(code), struct {
		Code    int
		Message string
	}{code, msg}
	d.render(w, "error", code, p)
}

// recordsError shows a failed read of the records: its public message,
// or a generic one with the error in the log.
func (d *Dashboard) recordsError(w http.ResponseWriter, r *http.Request, p *page, err error) {
	switch {
	case errors.Is(err, records.ErrNotFound), errors.Is(err, records.ErrForbidden):
		// Another account's build is as if there were none.
		d.fail(w, r, p, http.StatusNotFound, "No such build among the builds you may see.")
	case publicerr.Is(err):
		d.fail(w, r, p, http.StatusBadRequest, publicerr.Message(r.Context(), d.cfg.Log, err, "reading build records"))
	default:
		d.fail(w, r, p, http.StatusInternalServerError, publicerr.Message(r.Context(), d.cfg.Log, err, "reading build records"))
	}
}

// loginPage shows the form: a token, and where to go next.
func (d *Dashboard) loginPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	msg := ""
	switch q.Get("why") {
	case "":
	case "expired":
		msg = "Your token has expired: log in with a new one."
	case "revoked":
		msg = "Your token was revoked: log in with a new one."
	default:
		msg = "Your token was not accepted: log in again."
	}
	d.showLogin(w, http.StatusOK, localNext(q.Get("next")), msg)
}

func (d *Dashboard) showLogin(w http.ResponseWriter, code int, next, msg string) {
	w.Header().Set("Cache-Control", "no-store")
	d.render(w, "login", code, &page{Title: "Log in", Now: d.cfg.Now(), Data: struct{ Next, Message string }{next, msg}})
}

// login checks the token in the form and keeps it in the cookie.
func (d *Dashboard) login(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		d.fail(w, r, nil, http.StatusForbidden, "This form must be sent from the dashboard's own page (the request's Origin is another site's, or missing).")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		d.fail(w, r, nil, http.StatusBadRequest, "The login form could not be read.")
		return
	}
	token := strings.TrimSpace(r.PostForm.Get("token"))
	next := localNext(r.PostForm.Get("next"))
	if token == "" {
		d.showLogin(w, http.StatusBadRequest, next, "Give an API token (nixfarm tokens create --account NAME).")
		return
	}
	check := r.Clone(r.Context())
	check.Header = http.Header{"Authorization": {"Bearer " + token}}
	v, err := d.cfg.Auth.Authenticate(check)
	switch {
	case err == nil && !v.Anonymous():
	case err == nil || apiauth.Reason(err) != "":
		why := apiauth.Reason(err)
		if why == "" || why == "malformed" {
			why = "unknown"
		}
		d.showLogin(w, http.StatusUnauthorized, next, "That token was refused: "+why+".")
		return
	default:
		d.cfg.Log.Error("dashboard: checking a token at login", "err", err)
		d.fail(w, r, nil, http.StatusServiceUnavailable, "The farm could not check your token; try again.")
		return
	}
	http.SetCookie(w, apiauth.Cookie(r, token, cookieAge))
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// logout forgets the cookie.
func (d *Dashboard) logout(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		d.fail(w, r, nil, http.StatusForbidden, "This form must be sent from the dashboard's own page.")
		return
	}
	http.SetCookie(w, clearCookie(r))
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}

func clearCookie(r *http.Request) *http.Cookie {
	c := apiauth.Cookie(r, "", 0)
	c.MaxAge = -1
	return c
}

// sameOrigin reports whether a state-changing request comes from a page
// of this host: its Origin names it, or, without an Origin, its Referer
// does. A request with neither is refused (browsers send Origin with
// every POST).
func sameOrigin(r *http.Request) bool {
	src := r.Header.Get("Origin")
	if src == "" || src == "null" {
		src = r.Header.Get("Referer")
	}
	if src == "" {
		return false
	}
	u, err := url.Parse(src)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}

// localNext is next if it is a dashboard page, else the overview: the
// login never redirects off the dashboard.
func localNext(next string) string {
	if !strings.HasPrefix(next, Prefix) || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return Prefix
	}
	return next
}
