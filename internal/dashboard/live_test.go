package dashboard

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// The live fragments are the pages' changing parts, for the same viewer:
// without a login they are 401 (not the login page), an account never
// sees another's builds in them, and a hostile derivation name is
// escaped as on the page.
func TestLiveFragments(t *testing.T) {
	fx := newFixture(t)
	now := time.Now().UnixMilli()
	hostile := `/nix/store/44444444444444444444444444444444-x"><script>alert(1)</script><img src=x onerror=alert(2)>.drv`
	for _, b := range []struct{ account, drv string }{{"alice", hostile}, {"bob", "/nix/store/55555555555555555555555555555555-bob-running.drv"}} {
		if _, err := fx.db.Exec(`INSERT INTO builds (drv_path, account, system, worker, record_status, status, queued_at, started_at)
			VALUES (?, ?, 'x86_64-linux', 'local', 'running', 0, ?, ?)`, b.drv, b.account, now-2000, now-1000); err != nil {
			t.Fatal(err)
		}
	}
	anon := fx.client(t)
	for _, p := range []string{"/ui/live/overview", "/ui/live/workers", "/ui/live/builds"} {
		resp, body := do(t, anon, "GET", fx.srv.URL+p, nil, "")
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Location") != "" || strings.Contains(body, "<form") {
			t.Errorf("%s without login: %d %q %s", p, resp.StatusCode, resp.Header.Get("Location"), body)
		}
	}
	alice := fx.client(t)
	fx.login(t, alice, fx.alice)
	get := func(c *http.Client, p string) (int, string) {
		t.Helper()
		resp, body := do(t, c, "GET", fx.srv.URL+p, nil, "")
		if resp.StatusCode == 200 && (!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || resp.Header.Get("Cache-Control") != "no-store") {
			t.Errorf("%s: headers %v", p, resp.Header)
		}
		if strings.HasPrefix(p, "/ui/live/") && (strings.Contains(body, "<html") || strings.Contains(body, "<nav")) {
			t.Errorf("%s is a whole page, not a fragment", p)
		}
		return resp.StatusCode, body
	}
	code, body := get(alice, "/ui/live/overview")
	if code != 200 || strings.Contains(body, "bob-") || !strings.Contains(body, "alice-queued") || !strings.Contains(body, "alice-hello&lt;b&gt;") ||
		!strings.Contains(body, `data-tail="`) || !strings.Contains(body, "ended-"+itoa(fx.aliceBuild)) {
		t.Errorf("alice's overview fragment: %d %s", code, body)
	}
	if strings.Contains(body, "<script") || strings.Contains(body, "<img") || !strings.Contains(body, "&lt;img src=x onerror=alert(2)&gt;") {
		t.Errorf("the hostile name is not escaped: %s", body)
	}
	if code, body := get(alice, "/ui/live/workers"); code != 200 || strings.Contains(body, "bob-secret") || !strings.Contains(body, "another account") {
		t.Errorf("alice's workers fragment: %d %s", code, body)
	}
	for _, p := range []string{"/ui/live/builds", "/ui/live/builds?account=bob", "/ui/live/builds?drv=bob"} {
		if code, body := get(alice, p); code != 200 || strings.Contains(body, "bob-") {
			t.Errorf("%s for alice: %d %s", p, code, body)
		}
	}
	if code, body := get(alice, "/ui/live/builds"); !strings.Contains(body, "alice-hello&lt;b&gt;") || strings.Contains(body, "<script") {
		t.Errorf("alice's builds fragment: %d %s", code, body)
	}
	if code, body := get(alice, "/ui/live/builds?status=nope"); code != http.StatusBadRequest || !strings.Contains(body, "nope") {
		t.Errorf("a bad filter: %d %s", code, body)
	}
	// The pages hold their fragment's place: the first page of builds
	// with its filters, not an older one.
	for p, want := range map[string]string{
		"/ui/":                         `data-live="/ui/live/overview"`,
		"/ui/workers":                  `data-live="/ui/live/workers"`,
		"/ui/builds?status=built":      `data-live="/ui/live/builds?status=built"`,
		"/ui/builds?drv=%22%3E%3Cx%3E": `data-live="/ui/live/builds?drv=%22%3E%3Cx%3E"`,
	} {
		if code, body := get(alice, p); code != 200 || !strings.Contains(body, want) {
			t.Errorf("%s: %d, no %s in %s", p, code, want, body)
		}
	}
	if _, body := get(alice, "/ui/builds?cursor=x"); strings.Contains(body, "data-live") {
		t.Errorf("an older page of builds is live: %s", body)
	}
	admin := fx.client(t)
	fx.login(t, admin, fx.farmToken)
	if code, body := get(admin, "/ui/live/overview"); code != 200 || !strings.Contains(body, "bob-running") || !strings.Contains(body, "bob-queued") || !strings.Contains(body, "bob-hello") {
		t.Errorf("the admin's overview fragment: %d %s", code, body)
	}
	if code, body := get(admin, "/ui/live/workers"); code != 200 || !strings.Contains(body, "bob-secret") {
		t.Errorf("the admin's workers fragment: %d %s", code, body)
	}
}
