package dashboard

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/apiauth"
	"github.com/nixfarm/nixfarm/internal/records"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/worker"
)

type fakeFarm struct{}

func (fakeFarm) Workers() []scheduler.WorkerInfo {
	return []scheduler.WorkerInfo{{Name: "local", Kind: "local", State: "busy", Capabilities: worker.Capabilities{Systems: []string{"x86_64-linux"}, MaxJobs: 2},
		Running: []scheduler.RunningBuild{{DrvPath: storepath.Path("/nix/store/00000000000000000000000000000000-bob-secret.drv"), Account: "bob", Attempt: 1}}}}
}

func (fakeFarm) Queue() []scheduler.ClassQueue {
	return []scheduler.ClassQueue{{Class: "x86_64-linux", System: "x86_64-linux", Builds: []scheduler.QueuedBuild{
		{DrvPath: storepath.Path("/nix/store/11111111111111111111111111111111-bob-queued.drv"), Account: "bob", Position: 1, Reason: "all 1 x86_64-linux workers busy"},
		{DrvPath: storepath.Path("/nix/store/22222222222222222222222222222222-alice-queued.drv"), Account: "alice", Position: 2, Reason: "all 1 x86_64-linux workers busy"},
	}}}
}

type fixture struct {
	srv                   *httptest.Server
	db                    *sql.DB
	alice, bob, farmToken string
	aliceBuild, bobBuild  int64
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	_, d, _ := testutil.Store(t)
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	accounts := account.New(d, account.DefaultValues(), log)
	fx := &fixture{farmToken: strings.Repeat("f", 40), db: d}
	now := time.Now().UnixMilli()
	for _, a := range []string{"alice", "bob"} {
		if err := accounts.Add(ctx, a); err != nil {
			t.Fatal(err)
		}
		_, tok, err := accounts.CreateAPIToken(ctx, a, account.ScopeRead, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		res, err := d.Exec(`INSERT INTO builds (drv_path, account, system, record_status, status, queued_at, started_at, stopped_at, cpu_seconds)
			VALUES (?, ?, 'x86_64-linux', 'built', 0, ?, ?, ?, 1800)`, "/nix/store/33333333333333333333333333333333-"+a+"-hello<b>.drv", a, now-3000, now-2000, now-1000)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := res.LastInsertId()
		if a == "alice" {
			fx.alice, fx.aliceBuild = tok, id
		} else {
			fx.bob, fx.bobBuild = tok, id
		}
	}
	auth := apiauth.New(apiauth.Config{Lookup: accounts, FarmToken: fx.farmToken, Log: log})
	mux := http.NewServeMux()
	New(Config{Auth: auth, Records: records.New(d, t.TempDir(), nil), Farm: fakeFarm{}, Log: log}).Register(mux)
	fx.srv = httptest.NewServer(mux)
	t.Cleanup(fx.srv.Close)
	return fx
}

// client is a browser: a cookie jar, redirects not followed.
func (fx *fixture) client(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func do(t *testing.T, c *http.Client, method, u string, form url.Values, origin string) (*http.Response, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, u, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func (fx *fixture) login(t *testing.T, c *http.Client, token string) {
	t.Helper()
	resp, body := do(t, c, "POST", fx.srv.URL+"/ui/login", url.Values{"token": {token}, "next": {"/ui/builds"}}, fx.srv.URL)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/builds" {
		t.Fatalf("login: %d %s %s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
}

func TestLoginLogout(t *testing.T) {
	fx := newFixture(t)
	c := fx.client(t)
	// Not logged in: every page sends to the login page.
	for _, p := range []string{"/ui/", "/ui/workers", "/ui/builds", "/ui/builds/1", "/ui/usage"} {
		resp, _ := do(t, c, "GET", fx.srv.URL+p, nil, "")
		if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/ui/login?next=") {
			t.Errorf("%s without login: %d %s", p, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	if resp, body := do(t, c, "GET", fx.srv.URL+"/ui/login?next=/ui/usage", nil, ""); resp.StatusCode != 200 || !strings.Contains(body, `value="/ui/usage"`) {
		t.Errorf("login page: %d %s", resp.StatusCode, body)
	}
	// A wrong token is refused and sets no cookie.
	resp, body := do(t, c, "POST", fx.srv.URL+"/ui/login", url.Values{"token": {"nope-" + strings.Repeat("x", 30)}}, fx.srv.URL)
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "refused") || len(resp.Cookies()) != 0 {
		t.Errorf("wrong token: %d %v %s", resp.StatusCode, resp.Cookies(), body)
	}
	fx.login(t, c, fx.alice)
	u, _ := url.Parse(fx.srv.URL)
	cookies := c.Jar.Cookies(u)
	if len(cookies) != 1 || cookies[0].Name != apiauth.CookieName {
		t.Fatalf("cookies after login: %v", cookies)
	}
	resp, body = do(t, c, "GET", fx.srv.URL+"/ui/", nil, "")
	if resp.StatusCode != 200 || !strings.Contains(body, `id="viewer">alice<`) {
		t.Errorf("overview after login: %d %s", resp.StatusCode, body)
	}
	resp, _ = do(t, c, "POST", fx.srv.URL+"/ui/logout", url.Values{}, fx.srv.URL)
	if resp.StatusCode != http.StatusSeeOther || len(c.Jar.Cookies(u)) != 0 {
		t.Errorf("logout: %d, cookies %v", resp.StatusCode, c.Jar.Cookies(u))
	}
	if resp, _ := do(t, c, "GET", fx.srv.URL+"/ui/", nil, ""); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("after logout: %d", resp.StatusCode)
	}
	// The login's next never leaves the dashboard.
	for _, next := range []string{"https://evil.example/", "//evil.example/ui/", "/api/v1/builds", "/ui/\\evil"} {
		if got := localNext(next); got != Prefix {
			t.Errorf("localNext(%q) = %q", next, got)
		}
	}
}

// Login and logout from another site, or with no Origin or Referer,
// are refused.
func TestCSRF(t *testing.T) {
	fx := newFixture(t)
	c := fx.client(t)
	for _, origin := range []string{"", "http://evil.example", "null", "http://127.0.0.1:1"} {
		resp, _ := do(t, c, "POST", fx.srv.URL+"/ui/login", url.Values{"token": {fx.alice}}, origin)
		if resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
			t.Errorf("login from %q: %d %v", origin, resp.StatusCode, resp.Cookies())
		}
	}
	// A Referer of this host will do when there is no Origin.
	req, _ := http.NewRequest("POST", fx.srv.URL+"/ui/login", strings.NewReader(url.Values{"token": {fx.alice}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Referer", fx.srv.URL+"/ui/login")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Errorf("login with this host's Referer: %d", resp.StatusCode)
	}
	if resp, _ := do(t, c, "POST", fx.srv.URL+"/ui/logout", url.Values{}, "http://evil.example"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("logout from another site: %d", resp.StatusCode)
	}
	if resp, _ := do(t, c, "GET", fx.srv.URL+"/ui/", nil, ""); resp.StatusCode != 200 {
		t.Errorf("still logged in after the refused logout: %d", resp.StatusCode)
	}
	// The cookie is the API's: HttpOnly, SameSite=Strict.
	if set := resp.Header.Values("Set-Cookie"); len(set) != 1 || !strings.Contains(set[0], "HttpOnly") || !strings.Contains(set[0], "SameSite=Strict") {
		t.Errorf("Set-Cookie: %q", set)
	}
}

// alice sees her own builds only: bob's build page is not found, his
// builds are not listed, his queued and running derivations are hidden;
// the farm's token sees both.
func TestAccountIsolation(t *testing.T) {
	fx := newFixture(t)
	alice := fx.client(t)
	fx.login(t, alice, fx.alice)
	get := func(c *http.Client, p string) (int, string) {
		resp, body := do(t, c, "GET", fx.srv.URL+p, nil, "")
		return resp.StatusCode, body
	}
	if code, body := get(alice, "/ui/builds/"+itoa(fx.aliceBuild)); code != 200 || !strings.Contains(body, "alice-hello&lt;b&gt;") {
		t.Errorf("alice's build: %d %s", code, body)
	}
	if code, body := get(alice, "/ui/builds/"+itoa(fx.bobBuild)); code != http.StatusNotFound || strings.Contains(body, "bob-hello") {
		t.Errorf("bob's build for alice: %d %s", code, body)
	}
	if code, body := get(alice, "/ui/builds?account=bob"); code != 200 || strings.Contains(body, "bob-hello") || !strings.Contains(body, "alice-hello") {
		t.Errorf("alice's build list: %d %s", code, body)
	}
	if code, body := get(alice, "/ui/"); code != 200 || strings.Contains(body, "bob-queued") || !strings.Contains(body, "alice-queued") {
		t.Errorf("alice's queue: %d %s", code, body)
	}
	if code, body := get(alice, "/ui/workers"); code != 200 || strings.Contains(body, "bob-secret") || !strings.Contains(body, "another account") {
		t.Errorf("alice's workers: %d %s", code, body)
	}
	if code, body := get(alice, "/ui/usage?account=bob"); code != 200 || strings.Contains(body, ">bob<") {
		t.Errorf("alice's usage: %d %s", code, body)
	}
	if code, _ := get(alice, "/ui/builds/x"); code != http.StatusBadRequest {
		t.Errorf("bad id: %d", code)
	}
	if code, body := get(alice, "/ui/builds?status=nope"); code != http.StatusBadRequest || !strings.Contains(body, "nope") {
		t.Errorf("bad status: %d %s", code, body)
	}
	admin := fx.client(t)
	fx.login(t, admin, fx.farmToken)
	if code, body := get(admin, "/ui/builds/"+itoa(fx.bobBuild)); code != 200 || !strings.Contains(body, "bob-hello") {
		t.Errorf("bob's build for the admin: %d %s", code, body)
	}
	if code, body := get(admin, "/ui/builds"); code != 200 || !strings.Contains(body, "bob-hello") || !strings.Contains(body, "alice-hello") {
		t.Errorf("the admin's build list: %d %s", code, body)
	}
	if code, body := get(admin, "/ui/workers"); code != 200 || !strings.Contains(body, "bob-secret") {
		t.Errorf("the admin's workers: %d %s", code, body)
	}
	if code, body := get(admin, "/ui/usage?range=24h"); code != 200 || !strings.Contains(body, "<rect") || !strings.Contains(body, "bob") {
		t.Errorf("the admin's usage: %d %s", code, body)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// The chart draws every bucket of the period, with zero where no builds
// were, and says so when there were none at all.
func TestChart(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 30, 0, 0, time.UTC)
	starts := bucketStarts(now, 24*time.Hour, time.Hour)
	if len(starts) != 24 || !starts[23].Equal(time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)) || !starts[0].Equal(time.Date(2026, 12, 1, 11, 0, 0, 0, time.UTC)) {
		t.Fatalf("starts: %v .. %v (%d)", starts[0], starts[len(starts)-1], len(starts))
	}
	d := New(Config{Now: func() time.Time { return now }})
	render := func(c chart) string {
		var b strings.Builder
		if err := d.pages["usage"].ExecuteTemplate(&b, "chart", c); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	count := func(t *records.Totals) float64 { return float64(t.Builds) }
	empty := render(newChart("Builds", starts, "15:04", &records.Usage{}, count, formatCount, true))
	if strings.Contains(empty, "<rect") || !strings.Contains(empty, "No builds in this period") || !strings.Contains(empty, "<svg") {
		t.Errorf("empty chart: %s", empty)
	}
	u := &records.Usage{Accounts: []records.AccountUsage{
		{Account: "alice", Buckets: []records.BucketUsage{{Start: starts[3], Totals: records.Totals{Builds: 4}}, {Start: starts[23], Totals: records.Totals{Builds: 1}}}},
		{Account: `<script>bob</script>`, Buckets: []records.BucketUsage{{Start: starts[3], Totals: records.Totals{Builds: 5}}}},
	}}
	c := newChart("Builds", starts, "15:04", u, count, formatCount, true)
	if len(c.Bars) != 3 || len(c.Legend) != 2 || c.Legend[0].Total != "5" || c.Empty {
		t.Errorf("chart: %+v", c)
	}
	// Bucket 3 stacks 4 + 5 = 9 of a scale to 12 (ticks of 3).
	if h := c.Bars[0].H + c.Bars[1].H; math.Abs(h-(c.PlotBase-c.PlotTop)*9/12) > 0.01 {
		t.Errorf("the stacked bucket is %v high, the plot %v", h, c.PlotBase-c.PlotTop)
	}
	svg := render(c)
	if strings.Contains(svg, "<script>") || !strings.Contains(svg, "&lt;script&gt;bob") || strings.Count(svg, "<rect") != 3+2 {
		t.Errorf("rendered chart: %s", svg)
	}
	if c.YTicks[len(c.YTicks)-1].Label != "12" || c.YTicks[1].Label != "3" {
		t.Errorf("y ticks: %+v", c.YTicks)
	}
	if n := len(regexp.MustCompile(`class="xlabel"`).FindAllString(svg, -1)); n != 8 {
		t.Errorf("%d x labels", n)
	}
}
