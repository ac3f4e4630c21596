package dashboard

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nixfarm/nixfarm/internal/apiauth"
	"github.com/nixfarm/nixfarm/internal/records"
	"github.com/nixfarm/nixfarm/internal/scheduler"
)

// The pages: what each handler reads, filtered for the viewer.

func recordsViewer(v apiauth.Viewer) records.Viewer {
	return records.Viewer{Account: v.Account, Admin: v.Admin}
}

// maxRunning bounds the running builds the overview lists, and
// maxRecent the builds that ended it lists (of the latest recentWindow
// builds).
const (
	maxRunning   = 50
	maxRecent    = 8
	recentWindow = 40
)

func (d *Dashboard) overview(w http.ResponseWriter, r *http.Request, p *page) {
	running, more, err := d.cfg.Records.List(r.Context(), recordsViewer(p.Viewer), records.Filter{Status: records.Running, Limit: maxRunning})
	if err != nil {
		d.recordsError(w, r, p, err)
		return
	}
	latest, _, err := d.cfg.Records.List(r.Context(), recordsViewer(p.Viewer), records.Filter{Limit: recentWindow})
	if err != nil {
		d.recordsError(w, r, p, err)
		return
	}
	var recent []records.Record
	for _, b := range latest {
		if b.Status.Final() && len(recent) < maxRecent {
			recent = append(recent, b)
		}
	}
	queue := visibleQueue(d.cfg.Farm.Queue(), p.Viewer)
	workers := d.cfg.Farm.Workers()
	slots, busy := 0, 0
	for _, wk := range workers {
		slots += wk.Capabilities.MaxJobs
		busy += len(wk.Running)
	}
	queued := 0
	for _, c := range queue {
		queued += len(c.Builds)
	}
	p.Title, p.Nav = "Overview", "overview"
	p.Data = struct {
		Running     []records.Record
		MoreRunning bool
		Recent      []records.Record
		Queue       []scheduler.ClassQueue
		Queued      int
		Workers     int
		Slots, Busy int
	}{running, more != "", recent, queue, queued, len(workers), slots, busy}
	d.render(w, "overview", http.StatusOK, p)
}

// visibleQueue hides the derivation and account of other accounts'
// queued builds from an account's viewer.
func visibleQueue(classes []scheduler.ClassQueue, v apiauth.Viewer) []scheduler.ClassQueue {
	out := make([]scheduler.ClassQueue, len(classes))
	for i, c := range classes {
		c.Builds = slices.Clone(c.Builds)
		for j, b := range c.Builds {
			if !v.CanSee(b.Account) {
				c.Builds[j].DrvPath, c.Builds[j].Account = "", ""
			}
		}
		out[i] = c
	}
	return out
}

// visibleWorkers hides what other accounts' running builds are.
func visibleWorkers(workers []scheduler.WorkerInfo, v apiauth.Viewer) []scheduler.WorkerInfo {
	out := make([]scheduler.WorkerInfo, len(workers))
	for i, w := range workers {
		w.Running = slices.Clone(w.Running)
		for j, b := range w.Running {
			if !v.CanSee(b.Account) {
				w.Running[j] = scheduler.RunningBuild{Attempt: b.Attempt}
			}
		}
		out[i] = w
	}
	return out
}

func (d *Dashboard) workers(w http.ResponseWriter, r *http.Request, p *page) {
	p.Title, p.Nav = "Workers", "workers"
	p.Data = visibleWorkers(d.cfg.Farm.Workers(), p.Viewer)
	d.render(w, "workers", http.StatusOK, p)
}

// buildsForm is the builds page's filters, as given.
type buildsForm struct {
	Account, Status, System, Since, Drv string
}

// statuses lists the statuses the filter offers.
var statuses = []records.Status{records.Queued, records.Running, records.Built, records.Failed, records.TimedOut,
	records.Cancelled, records.InfrastructureError, records.Substituted, records.Cached}

func (d *Dashboard) builds(w http.ResponseWriter, r *http.Request, p *page) {
	q := r.URL.Query()
	form := buildsForm{Account: q.Get("account"), Status: q.Get("status"), System: q.Get("system"), Since: q.Get("since"), Drv: q.Get("drv")}
	p.Title, p.Nav = "Builds", "builds"
	filter := records.Filter{Account: form.Account, System: form.System, DrvSubstring: form.Drv, Cursor: q.Get("cursor")}
	if !p.Viewer.Admin {
		filter.Account = "" // an account sees its own; the form has no account field
	}
	var err error
	if form.Status != "" {
		filter.Status, err = records.ParseStatus(form.Status)
	}
	if form.Since != "" && err == nil {
		filter.Since, err = records.ParseTime(form.Since, p.Now)
	}
	if err != nil {
		d.fail(w, r, p, http.StatusBadRequest, err.Error())
		return
	}
	list, next, err := d.cfg.Records.List(r.Context(), recordsViewer(p.Viewer), filter)
	if err != nil {
		d.recordsError(w, r, p, err)
		return
	}
	older := ""
	if next != "" {
		v := url.Values{}
		for k, val := range map[string]string{"account": form.Account, "status": form.Status, "system": form.System, "since": form.Since, "drv": form.Drv, "cursor": next} {
			if val != "" {
				v.Set(k, val)
			}
		}
		older = "/ui/builds?" + v.Encode()
	}
	// The first page stays live; an older one is as it was.
	live := ""
	if q.Get("cursor") == "" {
		v := url.Values{}
		for k, val := range map[string]string{"account": form.Account, "status": form.Status, "system": form.System, "since": form.Since, "drv": form.Drv} {
			if val != "" {
				v.Set(k, val)
			}
		}
		live = "/ui/live/builds?" + v.Encode()
	}
	p.Data = struct {
		Form     buildsForm
		Statuses []records.Status
		Builds   []records.Record
		Older    string
		Live     string
	}{form, statuses, list, older, live}
	d.render(w, "builds", http.StatusOK, p)
}

func (d *Dashboard) build(w http.ResponseWriter, r *http.Request, p *page) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		d.fail(w, r, p, http.StatusBadRequest, "A build id is a positive number.")
		return
	}
	rec, err := d.cfg.Records.Get(r.Context(), recordsViewer(p.Viewer), id)
	if err != nil {
		d.recordsError(w, r, p, err)
		return
	}
	p.Title, p.Nav = "Build "+strconv.FormatInt(id, 10), "builds"
	p.Data = rec
	d.render(w, "build", http.StatusOK, p)
}

// usageRanges are the periods the usage page offers: length and bucket.
var usageRanges = []struct {
	Name   string
	Length time.Duration
	Bucket time.Duration
}{
	{"24h", 24 * time.Hour, time.Hour},
	{"7d", 7 * 24 * time.Hour, 24 * time.Hour},
	{"30d", 30 * 24 * time.Hour, 24 * time.Hour},
}

func (d *Dashboard) usage(w http.ResponseWriter, r *http.Request, p *page) {
	q := r.URL.Query()
	rng := usageRanges[1]
	if name := q.Get("range"); name != "" {
		i := slices.IndexFunc(usageRanges, func(x struct {
			Name   string
			Length time.Duration
			Bucket time.Duration
		}) bool {
			return x.Name == name
		})
		if i < 0 {
			d.fail(w, r, p, http.StatusBadRequest, "Give a range of 24h, 7d or 30d.")
			return
		}
		rng = usageRanges[i]
	}
	account := strings.TrimSpace(q.Get("account"))
	if !p.Viewer.Admin {
		account = ""
	}
	starts := bucketStarts(p.Now, rng.Length, rng.Bucket)
	u, err := d.cfg.Records.Usage(r.Context(), recordsViewer(p.Viewer), records.UsageFilter{Account: account, Since: starts[0], Bucket: rng.Bucket})
	if err != nil {
		d.recordsError(w, r, p, err)
		return
	}
	label := "15:04"
	if rng.Bucket >= 24*time.Hour {
		label = "Jan 2"
	}
	p.Title, p.Nav = "Usage", "usage"
	p.Data = struct {
		Range, Account string
		Ranges         []string
		Usage          *records.Usage
		Builds, CPU    chart
	}{
		rng.Name, account, []string{"24h", "7d", "30d"}, u,
		newChart("Builds", starts, label, u, func(t *records.Totals) float64 { return float64(t.Builds) }, formatCount, true),
		newChart("CPU time", starts, label, u, func(t *records.Totals) float64 { return t.CPUSeconds }, formatCPU, false),
	}
	d.render(w, "usage", http.StatusOK, p)
}
