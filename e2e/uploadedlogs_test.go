package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A log built elsewhere and uploaded with `nix store copy-log --to
// ssh-ng://farm` is kept compressed under the uploader's account and read
// back by `nix log --store <farm cache>` with the uploader's token;
// another account's token finds no log (GET /log/ with every client;
// nix log --store with 2.26 and 2.34).
func TestUploadedBuildLog(t *testing.T) {
	forClients(t, func(t *testing.T, v *nixVersion) {
		f := startFarm(t, "--substituter", "")
		c := newClientOf(t, v)
		// Built by the client itself, not the farm.
		file := c.expr("uploaded", `mk { name = "uploaded-log"; args = ["-c" "echo a line the client saw; echo > $out"]; }`)
		if r := c.exec(nil, "nix-build", "--store", c.store, "--option", "substituters", "", "--no-out-link", file); r.err != nil {
			t.Fatalf("the local build: %v\n%s", r.err, r.stderr)
		}
		drv := c.instantiate(file)[0]
		if log := c.mustRun(nil, "nix", "log", "--store", c.store, drv); !strings.Contains(log, "a line the client saw") {
			t.Fatalf("the client has no log of its build: %q", log)
		}
		if r := c.exec(f, "nix", "store", "copy-log", "--store", c.store, "--to", f.storeURI(), drv); r.err != nil {
			t.Fatalf("nix store copy-log: %v\n%s\nfarm:\n%s", r.err, r.stderr, f.logs())
		}
		raw, err := os.ReadFile(filepath.Join(f.stateDir, "logs", "uploaded", "alice", filepath.Base(drv)))
		if err != nil || !strings.HasPrefix(string(raw), "\x28\xb5\x2f\xfd") {
			t.Errorf("the uploaded log file (%v) is not zstd: %q", err, raw[:min(len(raw), 8)])
		}

		cache := f.apiURL
		aliceToken, bobToken := f.cacheToken("alice"), f.cacheToken("bob")
		if code, body := get(t, cache+"/log/"+filepath.Base(drv), aliceToken); code != 200 || !strings.Contains(body, "a line the client saw") {
			t.Errorf("alice's GET /log/: %d %q", code, body)
		}
		if code, body := get(t, cache+"/log/"+filepath.Base(drv), bobToken); code != 404 || strings.Contains(body, "a line the client saw") {
			t.Errorf("bob's GET /log/ of alice's upload: %d %q", code, body)
		}
		if v.minor < 26 {
			return // Nix 2.8's nix log --store wants the .drv valid in that store: the farm lacks it
		}
		read := func(account string) result {
			return c.exec(nil, "nix", "log", "--store", cache, "--option", "netrc-file", c.netrc(account, map[string]string{"alice": aliceToken, "bob": bobToken}[account]), drv)
		}
		if r := read("alice"); r.err != nil || !strings.Contains(r.out, "a line the client saw") {
			t.Errorf("alice's nix log --store %s: %v %q\n%s", cache, r.err, r.out, r.stderr)
		}
		if r := read("bob"); r.err == nil || strings.Contains(r.out, "a line the client saw") {
			t.Errorf("bob's nix log --store %s shows alice's upload: %q", cache, r.out)
		}
	})
}
