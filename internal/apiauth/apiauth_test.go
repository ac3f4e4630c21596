package apiauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/apiauth"
)

// fakeTokens is a Lookup over a map, counting lookups.
type fakeTokens struct {
	mu      sync.Mutex
	grants  map[string]apiauth.Grant
	refused map[string]error
	fail    error
	lookups int
}

func (f *fakeTokens) APIToken(ctx context.Context, token string) (apiauth.Grant, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups++
	if f.fail != nil {
		return apiauth.Grant{}, f.fail
	}
	if err, ok := f.refused[token]; ok {
		return apiauth.Grant{}, err
	}
	if g, ok := f.grants[token]; ok {
		return g, nil
	}
	return apiauth.Grant{}, apiauth.ErrUnknown
}

type fixture struct {
	tokens *fakeTokens
	now    time.Time
	auth   *apiauth.Authenticator
	srv    http.Handler
}

const farmToken = "farm-token-farm-token-farm-token-0123"

func newFixture(t *testing.T) *fixture {
	f := &fixture{now: time.Unix(1_800_000_000, 0)}
	f.tokens = &fakeTokens{
		grants: map[string]apiauth.Grant{
			"alice-read": {Viewer: apiauth.Viewer{Account: "alice"}},
			"bob-read":   {Viewer: apiauth.Viewer{Account: "bob"}},
			"bob-admin":  {Viewer: apiauth.Viewer{Account: "bob", Admin: true}},
			"soon":       {Viewer: apiauth.Viewer{Account: "alice"}, Expires: f.now.Add(5 * time.Second)},
		},
		refused: map[string]error{
			"old":  apiauth.ErrExpired,
			"gone": apiauth.ErrRevoked,
		},
	}
	f.auth = apiauth.New(apiauth.Config{Lookup: f.tokens, FarmToken: farmToken, Now: func() time.Time { return f.now }, Log: slog.New(slog.DiscardHandler)})
	mux := http.NewServeMux()
	// A resource of alice's: the tiny handler of the 403 test.
	mux.Handle("GET /alice", f.auth.RequireViewer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !apiauth.FromContext(r.Context()).CanSee("alice") {
			apiauth.Forbidden(w, "build 1")
			return
		}
		w.Write([]byte("alice's\n"))
	})))
	mux.Handle("GET /whoami", f.auth.AllowAnonymous(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(apiauth.FromContext(r.Context()))
	})))
	f.srv = mux
	return f
}

type answer struct {
	code   int
	body   string
	reason string
	www    string
}

func (f *fixture) get(t *testing.T, path string, setup func(*http.Request)) answer {
	t.Helper()
	r := httptest.NewRequest("GET", path, nil)
	if setup != nil {
		setup(r)
	}
	w := httptest.NewRecorder()
	f.srv.ServeHTTP(w, r)
	a := answer{code: w.Code, body: w.Body.String(), www: w.Header().Get("WWW-Authenticate")}
	var e apiauth.Error
	if json.Unmarshal(w.Body.Bytes(), &e) == nil {
		a.reason = e.Reason
	}
	return a
}

func bearer(token string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }
}

func cookie(token string) func(*http.Request) {
	return func(r *http.Request) { r.AddCookie(&http.Cookie{Name: apiauth.CookieName, Value: token}) }
}

func TestRequireViewer(t *testing.T) {
	f := newFixture(t)
	for _, c := range []struct {
		name   string
		setup  func(*http.Request)
		code   int
		reason string
	}{
		{"bearer", bearer("alice-read"), 200, ""},
		{"lowercase scheme", func(r *http.Request) { r.Header.Set("Authorization", "bearer alice-read") }, 200, ""},
		{"cookie", cookie("alice-read"), 200, ""},
		{"farm token", bearer(farmToken), 200, ""},
		{"admin token", bearer("bob-admin"), 200, ""},
		{"another account", bearer("bob-read"), 403, "forbidden"},
		{"another account's cookie", cookie("bob-read"), 403, "forbidden"},
		{"missing", nil, 401, "missing"},
		{"unknown", bearer("nope"), 401, "unknown"},
		{"unknown cookie", cookie("nope"), 401, "unknown"},
		{"expired", bearer("old"), 401, "expired"},
		{"revoked", bearer("gone"), 401, "revoked"},
		{"basic", func(r *http.Request) { r.SetBasicAuth("alice", "alice-read") }, 401, "malformed"},
		{"empty bearer", func(r *http.Request) { r.Header.Set("Authorization", "Bearer ") }, 401, "malformed"},
		{"huge", bearer(strings.Repeat("x", 10000)), 401, "malformed"},
		{"header wins over cookie", func(r *http.Request) { bearer("gone")(r); cookie("alice-read")(r) }, 401, "revoked"},
	} {
		a := f.get(t, "/alice", c.setup)
		if a.code != c.code || a.reason != c.reason {
			t.Errorf("%s: %d %q, want %d %q (%s)", c.name, a.code, a.reason, c.code, c.reason, a.body)
		}
		if c.code == 401 && !strings.HasPrefix(a.www, "Bearer") {
			t.Errorf("%s: WWW-Authenticate %q", c.name, a.www)
		}
		if c.code == 401 && !strings.Contains(a.body, c.reason) {
			t.Errorf("%s: the message does not say %s: %s", c.name, c.reason, a.body)
		}
	}
}

func TestAllowAnonymous(t *testing.T) {
	f := newFixture(t)
	if a := f.get(t, "/whoami", nil); a.code != 200 || strings.TrimSpace(a.body) != "{}" {
		t.Fatalf("anonymous: %d %s", a.code, a.body)
	}
	if a := f.get(t, "/whoami", bearer("bob-admin")); a.code != 200 || !strings.Contains(a.body, `"admin":true`) {
		t.Fatalf("admin: %d %s", a.code, a.body)
	}
	if a := f.get(t, "/whoami", bearer(farmToken)); a.code != 200 || strings.TrimSpace(a.body) != `{"admin":true}` {
		t.Fatalf("farm token: %d %s", a.code, a.body)
	}
	// Credentials given must be good, even where none are needed.
	if a := f.get(t, "/whoami", bearer("nope")); a.code != 401 || a.reason != "unknown" {
		t.Fatalf("a bad token: %d %s", a.code, a.body)
	}
}

// A verdict is reused for the TTL: no lookup per request, and a revoked
// token stops working once the TTL has passed.
func TestVerdictCache(t *testing.T) {
	f := newFixture(t)
	for range 5 {
		if a := f.get(t, "/alice", bearer("alice-read")); a.code != 200 {
			t.Fatalf("%d %s", a.code, a.body)
		}
		f.get(t, "/alice", bearer("nope"))
	}
	if f.tokens.lookups != 2 {
		t.Fatalf("%d lookups for 2 tokens within the TTL", f.tokens.lookups)
	}
	f.tokens.mu.Lock()
	f.tokens.refused["alice-read"] = apiauth.ErrRevoked
	f.tokens.mu.Unlock()
	f.now = f.now.Add(apiauth.DefaultTTL - time.Second)
	if a := f.get(t, "/alice", bearer("alice-read")); a.code != 200 {
		t.Fatalf("within the TTL: %d %s", a.code, a.body)
	}
	f.now = f.now.Add(time.Second)
	if a := f.get(t, "/alice", bearer("alice-read")); a.code != 401 || a.reason != "revoked" {
		t.Fatalf("after the TTL: %d %s", a.code, a.body)
	}
}

// A cached good verdict does not outlive the token's expiry.
func TestExpiryWithinTTL(t *testing.T) {
	f := newFixture(t)
	if a := f.get(t, "/alice", bearer("soon")); a.code != 200 {
		t.Fatalf("%d %s", a.code, a.body)
	}
	f.now = f.now.Add(5 * time.Second)
	if a := f.get(t, "/alice", bearer("soon")); a.code != 401 || a.reason != "expired" {
		t.Fatalf("at expiry: %d %s", a.code, a.body)
	}
	if f.tokens.lookups != 1 {
		t.Fatalf("%d lookups", f.tokens.lookups)
	}
}

// A failing lookup is not a verdict: 503, nothing of it in the answer,
// and the next request looks again.
func TestLookupFailure(t *testing.T) {
	f := newFixture(t)
	f.tokens.fail = errors.New("SQL logic error: database is locked at /var/lib/nixfarm")
	a := f.get(t, "/alice", bearer("alice-read"))
	if a.code != 503 || strings.Contains(a.body, "SQL") || strings.Contains(a.body, "/var/lib") {
		t.Fatalf("%d %s", a.code, a.body)
	}
	f.tokens.fail = nil
	if a := f.get(t, "/alice", bearer("alice-read")); a.code != 200 {
		t.Fatalf("after recovery: %d %s", a.code, a.body)
	}
}

func TestCookie(t *testing.T) {
	c := apiauth.Cookie(httptest.NewRequest("GET", "/", nil), "tok", time.Hour)
	if c.Name != "nixfarm_token" || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure || c.MaxAge != 3600 || c.Path != "/" {
		t.Fatalf("%+v", c)
	}
	behindProxy := httptest.NewRequest("GET", "/", nil)
	behindProxy.Header.Set("X-Forwarded-Proto", "https")
	if c := apiauth.Cookie(behindProxy, "tok", 0); !c.Secure {
		t.Errorf("behind a TLS proxy: %+v", c)
	}
	overTLS := httptest.NewRequest("GET", "https://farm/", nil)
	if c := apiauth.Cookie(overTLS, "tok", 0); !c.Secure {
		t.Errorf("over TLS: %+v", c)
	}
}

func TestViewer(t *testing.T) {
	for _, c := range []struct {
		v       apiauth.Viewer
		account string
		want    bool
	}{
		{apiauth.Viewer{}, "alice", false},
		{apiauth.Viewer{}, "", false},
		{apiauth.Viewer{Account: "alice"}, "alice", true},
		{apiauth.Viewer{Account: "alice"}, "bob", false},
		{apiauth.Viewer{Account: "bob", Admin: true}, "alice", true},
		{apiauth.Viewer{Admin: true}, "", true},
	} {
		if got := c.v.CanSee(c.account); got != c.want {
			t.Errorf("%+v.CanSee(%q) = %v", c.v, c.account, got)
		}
	}
}
