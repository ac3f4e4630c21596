package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/testutil"
)

// TestDashboard is the web dashboard in a real browser: headless
// Chromium logs in with alice's API token through the login form (as a
// person would: the browser sends the form, with its own Origin, and
// keeps the cookie the farm sets), then, while alice's slow build runs,
// finds it on the overview with its live log line (drawn by the page's
// JavaScript from the API's log route) and on its log page (streamed),
// and shows the workers, builds and usage pages. It saves a screenshot
// of each page, at 1440×900, in a temporary directory, or in
// docs/screenshots when NIXFARM_SCREENSHOTS=1 (how the committed ones
// were made).
func TestDashboard(t *testing.T) {
	testutil.RequireTools(t, "chromium")
	f := startFarm(t)
	f.mustCLI("accounts", "add", "alice")
	_, token := f.apiToken("alice", "read")
	c := newClientOf(t, defaultVersion())
	shots := t.TempDir()
	if os.Getenv("NIXFARM_SCREENSHOTS") == "1" {
		shots = filepath.Join("..", "docs", "screenshots")
		if err := os.MkdirAll(shots, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// Some history for the builds and usage pages: a success and a
	// failure.
	ok := c.expr("dash-hello", `mk { name = "dash-hello"; args = ["-c" "echo hello; echo > $out"]; }`)
	if r := c.build(f, "ssh-ng", ok); r.err != nil {
		t.Fatalf("dash-hello: %v\n%s", r.err, r.stderr)
	}
	bad := c.expr("dash-broken", `mk { name = "dash-broken"; args = ["-c" "echo this one fails >&2; exit 1"]; }`)
	if r := c.build(f, "ssh-ng", bad); r.err == nil {
		t.Fatal("dash-broken succeeded")
	}

	// The slow build: a known line, then it sleeps.
	slow := c.expr("dash-slow", `mk { name = "dash-slow"; args = ["-c" "echo dashboard known line 4711; sleep 12; echo > $out"]; }`)
	built := make(chan result, 1)
	go func() { built <- c.build(f, "ssh-ng", slow) }()
	rec := recordOf(t, f, "dash-slow")
	id := strconv.FormatInt(rec.ID, 10)

	b := startBrowser(t, 1440, 900)
	// Not logged in: the dashboard sends the browser to the login page.
	b.navigate(f.apiURL + "/ui/")
	b.waitFor("the login form", `location.pathname === "/ui/login" && document.getElementById("token")`, 30*time.Second)
	b.screenshot(filepath.Join(shots, "login.png"))
	tok, _ := json.Marshal(token)
	b.eval(`document.getElementById("token").value = ` + string(tok) + `; document.querySelector('form[action="/ui/login"]').submit(); true`)
	b.waitFor("the overview after login", `location.pathname === "/ui/" && document.getElementById("viewer")`, 30*time.Second)
	if dom := b.dom(); !strings.Contains(dom, `id="viewer">alice<`) {
		t.Errorf("the header does not name alice:\n%s", dom)
	}

	// The running build and its live log line (the page's JavaScript
	// fetches it: the server draws an empty tail).
	b.waitFor("the running build's live log line", `(document.querySelector('[data-tail="`+id+`"]') || {}).textContent.includes("dashboard known line 4711")`, 30*time.Second)
	dom := b.dom()
	if !strings.Contains(dom, `id="build-`+id+`"`) || !strings.Contains(dom, "dash-slow") || !strings.Contains(dom, ">running<") {
		t.Errorf("the overview lacks the running build %s:\n%s", id, dom)
	}
	b.screenshot(filepath.Join(shots, "overview.png"))

	// Its log page streams the log while it runs.
	b.navigate(f.apiURL + "/ui/builds/" + id)
	b.waitFor("the streamed log line", `(document.querySelector('[data-log="`+id+`"]') || {}).textContent.includes("dashboard known line 4711")`, 30*time.Second)
	if still := recordOf(t, f, "dash-slow"); still.Status.Final() {
		t.Logf("the slow build ended (%s) before its log page was checked: the log was read whole, not streamed", still.Status)
	}
	b.screenshot(filepath.Join(shots, "build-log.png"))

	b.navigate(f.apiURL + "/ui/workers")
	b.waitFor("the workers table", `document.querySelector("table") && document.body.textContent.includes("x86_64-linux")`, 30*time.Second)
	b.screenshot(filepath.Join(shots, "workers.png"))

	b.navigate(f.apiURL + "/ui/builds")
	b.waitFor("the builds list", `document.body.textContent.includes("dash-broken") && document.body.textContent.includes("dash-hello")`, 30*time.Second)
	if dom := b.dom(); !strings.Contains(dom, `href="/ui/builds/`+id+`#log"`) {
		t.Errorf("the builds list does not link to the slow build's log:\n%s", dom)
	}
	b.screenshot(filepath.Join(shots, "builds.png"))

	b.navigate(f.apiURL + "/ui/usage?range=24h")
	b.waitFor("the usage chart", `document.querySelectorAll("figure.chart svg rect").length > 0`, 30*time.Second)
	b.screenshot(filepath.Join(shots, "usage.png"))

	if r := <-built; r.err != nil {
		t.Fatalf("dash-slow: %v\n%s", r.err, r.stderr)
	}
}
