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
// keeps the cookie the farm sets). With the overview already loaded,
// alice's slow build starts: it appears on the page without a reload
// (the page's JavaScript swaps in the overview's live fragment), with its
// live log line (read from the API's log route by offset); its log page
// streams the log; the workers, builds and usage pages show; and once it
// ends, an overview loaded while it ran lists it among the ended builds,
// again without a reload. It saves a screenshot
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

	// A mark on the loaded page: a reload would lose it.
	b.waitFor("the live indicator", `(document.getElementById("live-state") || {}).textContent === "live"`, 30*time.Second)
	b.eval(`window.nixfarmLoaded = "before the build"; true`)
	if dom := b.dom(); strings.Contains(dom, "dash-slow") {
		t.Fatalf("the overview shows dash-slow before it started:\n%s", dom)
	}

	// The slow build starts after the page loaded: a known line, then
	// it sleeps (long enough to be seen running, however slowly the
	// page polls on a busy machine).
	slow := c.expr("dash-slow", `mk { name = "dash-slow"; args = ["-c" "echo dashboard known line 4711; sleep 25; echo > $out"]; }`)
	built := make(chan result, 1)
	go func() { built <- c.build(f, "ssh-ng", slow) }()
	rec := recordOf(t, f, "dash-slow")
	id := strconv.FormatInt(rec.ID, 10)

	// The running build appears, with its live log line (the page's
	// JavaScript fetches both: the server drew neither).
	b.waitFor("the running build's live log line, without a reload", `window.nixfarmLoaded === "before the build" && (document.querySelector('[data-tail="`+id+`"]') || {}).textContent.includes("dashboard known line 4711") && Number(document.querySelector('[data-tail="`+id+`"]').dataset.offset) > 0`, 60*time.Second)
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

	// An overview loaded while the build runs lists it among the ended
	// builds once it ends, without a reload.
	b.navigate(f.apiURL + "/ui/")
	b.waitFor("the overview", `document.getElementById("live-state") !== null`, 30*time.Second)
	b.eval(`window.nixfarmLoaded = "while it ran"; true`)
	if r := <-built; r.err != nil {
		t.Fatalf("dash-slow: %v\n%s", r.err, r.stderr)
	}
	b.waitFor("the ended build on the overview, without a reload", `window.nixfarmLoaded === "while it ran" && document.getElementById("ended-`+id+`") !== null && !document.getElementById("build-`+id+`")`, 60*time.Second)
}
