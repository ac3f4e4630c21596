package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var apiTokenRE = regexp.MustCompile(`(?m)^API token (\d+) .*\n.*\n(nfapi_\S+)$`)

// apiToken creates an API token for account with scope and returns its
// id and secret.
func (f *farm) apiToken(account, scope string) (string, string) {
	f.t.Helper()
	out := f.mustCLI("tokens", "create", "--account", account, "--scope", scope, "--name", account+" "+scope)
	m := apiTokenRE.FindStringSubmatch(out)
	if m == nil {
		f.t.Fatalf("no token in:\n%s", out)
	}
	return m[1], m[2]
}

// apiGet fetches path from the farm's API with token ("" for none) and
// returns the status and body.
func (f *farm) apiGet(path, token string) (int, string) {
	f.t.Helper()
	req, err := http.NewRequest("GET", f.apiURL+path, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// Accounts' API tokens: alice's read token sees her running build in
// /api/v1/workers, bob's does not, an admin token and the farm's API token
// do; a revoked token is refused once the verdict cache lets go of it.
func TestAPITokens(t *testing.T) {
	f := startFarm(t)
	for _, a := range []string{"alice", "bob"} {
		f.mustCLI("accounts", "add", a)
	}
	aliceID, alice := f.apiToken("alice", "read")
	_, bob := f.apiToken("bob", "read")
	_, admin := f.apiToken("bob", "admin")
	farmToken, err := os.ReadFile(filepath.Join(f.stateDir, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	viewers := map[string]string{"alice": alice, "bob": bob, "admin": admin, "farm": strings.TrimSpace(string(farmToken)), "anonymous": ""}

	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := f.apiGet(p, ""); code != 200 {
			t.Fatalf("%s: %d %s", p, code, body)
		}
	}

	c := newClient(t) // alice, Nix 2.8
	file := c.expr("tokened", `mk { name = "tokened"; args = ["-c" "sleep 4; echo ${bb} done > $out"]; }`)
	drv := c.instantiate(file)[0]
	done := make(chan []string, 1)
	go func() { done <- c.mustBuild(f, "ssh-ng", file) }()
	saw := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for !(saw["alice"] && saw["admin"] && saw["farm"]) && time.Now().Before(deadline) {
		for who, token := range viewers {
			code, body := f.apiGet("/api/v1/workers", token)
			if code != 200 {
				t.Fatalf("%s: %d %s", who, code, body)
			}
			if strings.Contains(body, drv) {
				saw[who] = true
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	<-done
	for who, want := range map[string]bool{"alice": true, "admin": true, "farm": true, "bob": false, "anonymous": false} {
		if saw[who] != want {
			t.Errorf("%s saw alice's running build: %v, want %v", who, saw[who], want)
		}
	}

	// alice's build and its log: hers and the admin's to read, 403 for
	// bob, 401 for nobody.
	id := strconv.FormatInt(recordOf(t, f, "tokened").ID, 10)
	for _, path := range []string{"/api/v1/builds/" + id, "/api/v1/builds/" + id + "/log", "/api/v1/builds?account=alice"} {
		for who, want := range map[string]int{"alice": 200, "admin": 200, "farm": 200, "bob": 403, "anonymous": 401} {
			code, body := f.apiGet(path, viewers[who])
			if code != want {
				t.Errorf("%s GET %s: %d, want %d: %s", who, path, code, want, body)
			}
			if leaked := code != 200 && strings.Contains(body, "tokened"); leaked || (code == 200 && !strings.Contains(body, "tokened") && !strings.HasSuffix(path, "/log")) {
				t.Errorf("%s GET %s: %d %s", who, path, code, body)
			}
		}
	}
	if code, body := f.apiGet("/api/v1/builds", bob); code != 200 || strings.Contains(body, "tokened") {
		t.Errorf("bob's list of builds: %d %s", code, body)
	}

	// Revoked: refused once the verdict cached before is gone (10 s).
	f.mustCLI("tokens", "revoke", aliceID)
	var code int
	var body string
	deadline = time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if code, body = f.apiGet("/api/v1/workers", alice); code == 401 {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	var e struct{ Error, Reason string }
	if code != 401 || json.Unmarshal([]byte(body), &e) != nil || e.Reason != "revoked" {
		t.Fatalf("a revoked token: %d %s", code, body)
	}
	if code, body := f.apiGet("/api/v1/workers", "nfapi_"+strings.Repeat("A", 43)); code != 401 || !strings.Contains(body, "unknown") {
		t.Errorf("an unknown token: %d %s", code, body)
	}
	list := f.mustCLI("tokens", "list", "--account", "alice")
	if !strings.Contains(list, "revoked") || strings.Contains(list, alice) {
		t.Errorf("tokens list:\n%s", list)
	}

	// A removed account's tokens go with it.
	f.mustCLI("accounts", "remove", "bob")
	deadline = time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if code, body = f.apiGet("/api/v1/workers", admin); code == 401 {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if code != 401 || !strings.Contains(body, "unknown") {
		t.Errorf("a removed account's admin token: %d %s", code, body)
	}
	if code, body := f.apiGet("/readyz", ""); code != 200 {
		t.Errorf("readyz at the end: %d %s", code, body)
	}
}
