package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var (
	tokenRE      = regexp.MustCompile(`password (\S+)`)
	farmKeyRE    = regexp.MustCompile(`extra-trusted-public-keys = (\S+)`)
	narURLLineRE = regexp.MustCompile(`(?m)^URL: (\S+)$`)
)

// cacheToken adds account to the accounts table if need be and issues it
// a binary cache token.
func (f *farm) cacheToken(account string) string {
	f.t.Helper()
	f.cli("accounts", "add", account) // may exist already
	out := f.mustCLI("accounts", "token", account, "--host", "127.0.0.1")
	m := tokenRE.FindStringSubmatch(out)
	if m == nil {
		f.t.Fatalf("no token in:\n%s", out)
	}
	return m[1]
}

// signingKey is the farm's public key, from its set-up instructions.
func (f *farm) signingKey() string {
	f.t.Helper()
	m := farmKeyRE.FindStringSubmatch(f.logs())
	if m == nil {
		f.t.Fatalf("the farm printed no signing key:\n%s", f.logs())
	}
	return m[1]
}

// netrc writes a netrc file for the farm's cache in the client's
// directory and returns its path.
func (c *client) netrc(account, token string) string {
	c.t.Helper()
	p := filepath.Join(c.dir, account+".netrc")
	if err := os.WriteFile(p, []byte("machine 127.0.0.1 login "+account+" password "+token+"\n"), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// get fetches a URL of the farm's cache with a bearer token ("" for none)
// and returns the status and body.
func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, b.String()
}

const cacheExpr = `
  let dep = mk { name = "cache-dep"; args = ["-c" "echo building-cache-dep; echo dep > $out"]; };
  in mk { name = "cache-top"; args = ["-c" "echo building-cache-top; echo top ${dep} > $out"]; }`

// The farm's store is a signed binary cache: stock Nix substitutes from
// it with a netrc file and the farm's key, is refused without the
// credentials, reads build logs from it, and one account cannot read
// another's paths through it.
func TestFarmBinaryCache(t *testing.T) { forClients(t, testFarmBinaryCache) }

func testFarmBinaryCache(t *testing.T, v *nixVersion) {
	f := startFarm(t, "--substituter", "")
	builder := newClientOf(t, v)
	file := builder.expr("cache", cacheExpr)
	// Remote-store mode: the farm checks the .drv files and signs what it
	// builds from them.
	if _, stderr, err := builder.nixErr(f, "build", "--store", f.storeURI(), "--eval-store", builder.store, "--no-link", "-f", file); err != nil {
		t.Fatalf("nix build: %v\n%s\nfarm:\n%s", err, stderr, f.logs())
	}
	drv := builder.instantiate(file)[0]
	top := strings.TrimSpace(builder.mustRun(nil, "nix-store", "--store", builder.store, "-q", "--outputs", drv))
	token := f.cacheToken("alice")
	key := f.signingKey()
	cache := f.apiURL

	c := newClientOf(t, v)
	netrc := c.netrc("alice", token)
	opts := []string{"--option", "substituters", cache, "--option", "trusted-public-keys", key, "--option", "netrc-file", netrc,
		"--option", "narinfo-cache-negative-ttl", "0"}

	// Without credentials: 401, and Nix cannot substitute.
	hash := strings.TrimPrefix(top, "/nix/store/")[:32]
	if code, _ := get(t, cache+"/"+hash+".narinfo", ""); code != http.StatusUnauthorized {
		t.Errorf("narinfo without a token: %d, want 401", code)
	}
	if code, _ := get(t, cache+"/"+hash+".narinfo", "wrong-"+token); code != http.StatusUnauthorized {
		t.Errorf("narinfo with a wrong token: %d, want 401", code)
	}
	// (Nix remembers a refused lookup as a miss: not here.)
	r := c.exec(nil, "nix-store", "--store", c.store, "-r", top, "--option", "substituters", cache, "--option", "trusted-public-keys", key,
		"--option", "narinfo-cache-negative-ttl", "0")
	if r.err == nil {
		t.Errorf("substituted without credentials")
	}

	// With them: substituted, signature checked (require-sigs is the default).
	r = c.exec(nil, "nix-store", append([]string{"--store", c.store, "-r", top}, opts...)...)
	if r.err != nil {
		t.Fatalf("nix-store -r from the farm's cache: %v\n%s\nfarm:\n%s", r.err, r.stderr, f.logs())
	}
	if got := c.read(top); !strings.HasPrefix(got, "top /nix/store/") {
		t.Errorf("substituted contents %q", got)
	}
	c.verify(top)
	if out := c.mustRun(nil, "nix", append([]string{"path-info", "--store", cache, "--sigs", top}, opts...)...); !strings.Contains(out, strings.SplitN(key, ":", 2)[0]+":") {
		t.Errorf("nix path-info --store %s: %s", cache, out)
	}
	if log := c.mustRun(nil, "nix", append([]string{"log", "--store", cache, drv}, opts...)...); !strings.Contains(log, "building-cache-top") {
		t.Errorf("nix log --store %s: %q", cache, log)
	}

	// nix-build substitutes rather than builds: no builder is given.
	c2 := newClientOf(t, v)
	r = c2.exec(nil, "nix-build", append([]string{"--store", c2.store, "--no-out-link", "--max-jobs", "0", c2.expr("cache", cacheExpr)},
		"--option", "substituters", cache, "--option", "trusted-public-keys", key, "--option", "netrc-file", c2.netrc("alice", token))...)
	if r.err != nil || r.out != top {
		t.Fatalf("nix-build from the farm's cache: %v %q\n%s", r.err, r.out, r.stderr)
	}

	// nix copy --from the cache, signatures checked.
	c3 := newClientOf(t, v)
	c3.mustRun(nil, "nix", "copy", "--store", c3.store, "--from", cache, top, "--option", "trusted-public-keys", key,
		"--option", "netrc-file", c3.netrc("alice", token))
	c3.verify(top)

	// Built as a remote builder (a BasicDerivation, whose output paths the
	// farm cannot check): signed with alice's own key, which she trusts on
	// her other machines.
	rb := c3.expr("remote-builder", `mk { name = "cache-rb"; args = ["-c" "echo building-cache-rb; echo rb > $out"]; }`)
	r = builder.build(f, "ssh-ng", rb)
	if r.err != nil {
		t.Fatalf("nix-build: %v\n%s", r.err, r.stderr)
	}
	rbOut := strings.TrimSpace(r.out)
	aliceKey := whoamiJSON(t, f).SigningKey
	if !strings.HasPrefix(aliceKey, "nixfarm-alice-1:") {
		t.Fatalf("whoami shows the signing key %q", aliceKey)
	}
	c4 := newClientOf(t, v)
	if r := c4.exec(nil, "nix-store", "--store", c4.store, "-r", rbOut, "--option", "substituters", cache, "--option", "trusted-public-keys", key,
		"--option", "netrc-file", netrc, "--option", "narinfo-cache-negative-ttl", "0"); r.err == nil {
		t.Errorf("a remote builder's output verified with the farm's own key")
	}
	c4.mustRun(nil, "nix-store", "--store", c4.store, "-r", rbOut, "--option", "substituters", cache, "--option", "trusted-public-keys", aliceKey,
		"--option", "netrc-file", netrc, "--option", "narinfo-cache-negative-ttl", "0")

	// Another account sees none of alice's paths through the cache, by
	// narinfo or by NAR URL.
	bobToken := f.cacheToken("bob")
	if code, _ := get(t, cache+"/"+hash+".narinfo", bobToken); code != http.StatusNotFound {
		t.Errorf("bob's narinfo of alice's path: %d, want 404", code)
	}
	code, body := get(t, cache+"/"+hash+".narinfo", token)
	m := narURLLineRE.FindStringSubmatch(body)
	if code != http.StatusOK || m == nil {
		t.Fatalf("alice's narinfo: %d %q", code, body)
	}
	if code, _ := get(t, cache+"/"+m[1], bobToken); code != http.StatusNotFound {
		t.Errorf("bob's GET of alice's NAR: %d, want 404", code)
	}
	if code, _ := get(t, cache+"/log/"+filepath.Base(drv), bobToken); code != http.StatusNotFound {
		t.Errorf("bob's GET of alice's build log: %d, want 404", code)
	}
	bob := newClientOf(t, v)
	r = bob.exec(nil, "nix-store", "--store", bob.store, "-r", top, "--option", "substituters", cache,
		"--option", "trusted-public-keys", key, "--option", "netrc-file", bob.netrc("bob", bobToken))
	if r.err == nil {
		t.Errorf("bob substituted alice's path from the farm's cache")
	}
}

// With --public-cache, anyone reads what the farm signed (built from a
// .drv it checked), and nothing an account merely uploaded.
func TestPublicCache(t *testing.T) {
	f := startFarm(t, "--substituter", "", "--public-cache")
	c := newClient(t)
	file := c.expr("cache", cacheExpr)
	if _, stderr, err := c.nixErr(f, "build", "--store", f.storeURI(), "--eval-store", c.store, "--no-link", "-f", file); err != nil {
		t.Fatalf("nix build: %v\n%s\nfarm:\n%s", err, stderr, f.logs())
	}
	drv := c.instantiate(file)[0]
	top := strings.TrimSpace(c.mustRun(nil, "nix-store", "--store", c.store, "-q", "--outputs", drv))
	hash := strings.TrimPrefix(top, "/nix/store/")[:32]
	if code, body := get(t, f.apiURL+"/"+hash+".narinfo", ""); code != http.StatusOK || !strings.Contains(body, "Sig: nixfarm-1:") {
		t.Errorf("anonymous narinfo of a farm-built path: %d %q", code, body)
	}
	// busybox was uploaded by alice: not public.
	bb := strings.TrimPrefix(c.bb, "/nix/store/")[:32]
	if code, _ := get(t, f.apiURL+"/"+bb+".narinfo", ""); code != http.StatusNotFound {
		t.Errorf("anonymous narinfo of an uploaded path: %d, want 404", code)
	}
	if code, _ := get(t, f.apiURL+"/"+hash+".narinfo", "wrong"); code != http.StatusUnauthorized {
		t.Errorf("a wrong token with --public-cache: %d, want 401", code)
	}
	// Stock Nix substitutes it anonymously.
	c2 := newClient(t)
	c2.mustRun(nil, "nix-store", "--store", c2.store, "-r", top, "--option", "substituters", f.apiURL,
		"--option", "trusted-public-keys", f.signingKey())
}
