package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/records"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

func decodePage(t *testing.T, what, out string) []records.Record {
	t.Helper()
	var page records.Page
	if err := json.Unmarshal([]byte(out), &page); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, out)
	}
	return page.Builds
}

// byName returns the records whose derivation is named name.
func byName(list []records.Record, name string) []records.Record {
	var out []records.Record
	for _, r := range list {
		if r.DrvName() == name {
			out = append(out, r)
		}
	}
	return out
}

// A successful and a failing build through the farm are recorded with
// account, key, status, worker, system and output size, and shown alike
// by `nixfarm builds --json`, /api/v1/builds and, to each account only
// its own, `ssh FARM nixfarm builds --json`.
func TestBuildRecords(t *testing.T) {
	f := startFarm(t)
	c := newClient(t)
	good := c.expr("rec-good", `mk { name = "rec-good"; args = ["-c" "echo building; echo hello > $out"]; }`)
	bad := c.expr("rec-bad", `mk { name = "rec-bad"; args = ["-c" "echo about to fail; exit 1"]; }`)
	outs := c.mustBuild(f, "ssh-ng", good)
	narSize, err := strconv.ParseUint(strings.TrimSpace(c.mustRun(nil, "nix-store", "--store", c.store, "--query", "--size", outs[0])), 10, 64)
	if err != nil || narSize == 0 {
		t.Fatalf("nar size of %s: %v", outs[0], err)
	}
	if r := c.build(f, "ssh", bad); r.err == nil {
		t.Fatal("the failing build succeeded")
	}
	f.mustCLI("accounts", "add", "bob")
	bob, bobKey := asAccount(t, f, "bob")
	mine := c.expr("rec-bob", `mk { name = "rec-bob"; args = ["-c" "echo bob > $out"]; }`)
	c.mustBuild(bob, "ssh-ng", mine)
	// Bytes moved: a 2.8 ssh:// build and a newer client's ssh-ng://
	// build, each uploading a source of its own (busybox is on the farm
	// by now) and downloading its output.
	var newer *nixVersion
	for _, v := range nixVersions {
		if v.minor >= 24 && newer == nil {
			newer = v
		}
	}
	moved := []*movedBuild{moving(t, f, c, "ssh", "rec-up-ssh")}
	if newer != nil {
		moved = append(moved, moving(t, f, newClientOf(t, newer), "ssh-ng", "rec-up-ng"))
	}

	check := func(what string, list []records.Record) {
		t.Helper()
		g, b := byName(list, "rec-good"), byName(list, "rec-bad")
		if len(g) != 1 || len(b) != 1 {
			t.Fatalf("%s: records of rec-good %d, rec-bad %d, want 1 each: %+v", what, len(g), len(b), list)
		}
		if r := g[0]; r.Account != "alice" || r.Status != records.Built || r.Worker != "local" || r.System != "x86_64-linux" ||
			r.Attempts != 1 || len(r.Outputs) != 1 || r.Outputs[0].Path != outs[0] || r.Outputs[0].NarSize != narSize ||
			r.KeyFingerprint == "" || r.StartedAt.IsZero() || r.StoppedAt.IsZero() || r.LogBytes == 0 {
			t.Errorf("%s: successful build's record %+v (NAR size %d)", what, r, narSize)
		}
		if r := b[0]; r.Account != "alice" || r.Status != records.Failed || r.Worker != "local" || r.System != "x86_64-linux" ||
			len(r.Outputs) != 0 || !strings.Contains(r.Error, "exit code 1") || r.NixStatus == "Built" {
			t.Errorf("%s: failed build's record %+v", what, r)
		}
	}

	// The operator's CLI, on the state directory.
	all := decodePage(t, "nixfarm builds --json", f.mustCLI("builds", "--json"))
	check("nixfarm builds", all)
	checkMoved(t, "nixfarm builds", all, moved)
	if bobs := byName(all, "rec-bob"); len(bobs) != 1 || bobs[0].Account != "bob" || bobs[0].KeyFingerprint != ssh.FingerprintSHA256(bobKey) {
		t.Errorf("bob's build: %+v", bobs)
	}
	failed := decodePage(t, "--status failed", f.mustCLI("builds", "--json", "--status", "failed", "--since", "1h"))
	if len(failed) != 1 || failed[0].DrvName() != "rec-bad" {
		t.Errorf("nixfarm builds --status failed: %+v", failed)
	}
	if table := f.mustCLI("builds"); !strings.Contains(table, "rec-good") || !strings.Contains(table, "failed") || !strings.Contains(table, "local") {
		t.Errorf("nixfarm builds:\n%s", table)
	}

	// The API, with the farm's token; without it, nothing.
	token, err := os.ReadFile(filepath.Join(f.stateDir, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	code, body := get(t, f.apiURL+"/api/v1/builds", strings.TrimSpace(string(token)))
	if code != 200 {
		t.Fatalf("GET /api/v1/builds: %d %s", code, body)
	}
	check("/api/v1/builds", decodePage(t, "/api/v1/builds", body))
	checkMoved(t, "/api/v1/builds", decodePage(t, "/api/v1/builds", body), moved)
	id := byName(all, "rec-good")[0].ID
	code, body = get(t, f.apiURL+"/api/v1/builds/"+strconv.FormatInt(id, 10), strings.TrimSpace(string(token)))
	var one records.Record
	if code != 200 || json.Unmarshal([]byte(body), &one) != nil || one.ID != id || one.Status != records.Built {
		t.Errorf("GET /api/v1/builds/%d: %d %s", id, code, body)
	}
	code, body = get(t, f.apiURL+"/api/v1/builds?account=bob&limit=1", strings.TrimSpace(string(token)))
	if page := decodePage(t, "?account=bob", body); code != 200 || len(page) != 1 || page[0].Account != "bob" {
		t.Errorf("GET /api/v1/builds?account=bob: %d %s", code, body)
	}
	if code, _ := get(t, f.apiURL+"/api/v1/builds", ""); code != 401 {
		t.Errorf("GET /api/v1/builds without a token: %d", code)
	}
	if code, _ := get(t, f.apiURL+"/api/v1/builds?status=done", strings.TrimSpace(string(token))); code != 400 {
		t.Errorf("GET /api/v1/builds?status=done: %d", code)
	}

	// Over SSH, each account sees its own builds only.
	out, stderr, code2 := sshCmd(f, "nixfarm", "nixfarm", "builds", "--json")
	if code2 != 0 {
		t.Fatalf("ssh nixfarm builds: exit %d\n%s", code2, stderr)
	}
	aliceSees := decodePage(t, "alice's nixfarm builds", out)
	check("alice over ssh", aliceSees)
	out, stderr, code2 = sshCmd(bob, "nixfarm", "nixfarm", "builds", "--json")
	if code2 != 0 {
		t.Fatalf("bob's ssh nixfarm builds: exit %d\n%s", code2, stderr)
	}
	bobSees := decodePage(t, "bob's nixfarm builds", out)
	if len(bobSees) != 1 || bobSees[0].Account != "bob" || bobSees[0].DrvName() != "rec-bob" || bobSees[0].Status != records.Built {
		t.Errorf("bob sees %+v", bobSees)
	}
	if _, stderr, code2 := sshCmd(bob, "nixfarm", "nixfarm", "builds", "--account", "alice"); code2 == 0 || !strings.Contains(stderr, "another account") {
		t.Errorf("bob asking for alice's builds: exit %d\n%s", code2, stderr)
	}
}

// movedBuild is a build whose bytes moved are known: the NAR of the
// source its client uploaded, and of the output it downloaded.
type movedBuild struct {
	name, client   string
	srcNar, outNar uint64
	busyboxNar     uint64 // what the client may have had to upload as well
}

// moving builds, with client c over scheme, a derivation named name whose
// source (a file of its own) the farm lacks, so the client uploads it.
func moving(t *testing.T, f *farm, c *client, scheme, name string) *movedBuild {
	t.Helper()
	contents := strings.Repeat(name+" uploads this line\n", 4000)
	if err := os.WriteFile(filepath.Join(c.dir, name+".txt"), []byte(contents), 0o644); err != nil {
		t.Fatal(err)
	}
	file := c.expr(name, `mk { name = "`+name+`"; src = ./`+name+`.txt; args = ["-c" "cat $src $src > $out"]; }`)
	outs := c.mustBuild(f, scheme, file)
	size := func(p string) uint64 {
		n, err := strconv.ParseUint(strings.TrimSpace(c.mustRun(nil, "nix-store", "--store", c.store, "--query", "--size", p)), 10, 64)
		if err != nil || n == 0 {
			t.Fatalf("nar size of %s: %v", p, err)
		}
		return n
	}
	return &movedBuild{name: name, client: c.v.name + " " + scheme, srcNar: uint64(len(testutil.FileNar(contents))),
		outNar: size(outs[0]), busyboxNar: size(c.bb)}
}

// checkMoved checks that each build's record holds the bytes its client
// moved: at least its source's NAR uploaded (and no more than busybox's
// besides), its output's NAR downloaded.
func checkMoved(t *testing.T, what string, list []records.Record, moved []*movedBuild) {
	t.Helper()
	for _, m := range moved {
		rs := byName(list, m.name)
		if len(rs) != 1 {
			t.Errorf("%s: %d records of %s", what, len(rs), m.name)
			continue
		}
		r := rs[0]
		if r.BytesUploaded < int64(m.srcNar) || r.BytesUploaded > int64(m.srcNar+m.busyboxNar) {
			t.Errorf("%s: %s (%s) uploaded %d bytes, want the source's NAR, %d (and at most busybox's, %d, besides)",
				what, m.name, m.client, r.BytesUploaded, m.srcNar, m.busyboxNar)
		}
		if r.BytesDownloaded != int64(m.outNar) {
			t.Errorf("%s: %s (%s) downloaded %d bytes, want the output's NAR, %d", what, m.name, m.client, r.BytesDownloaded, m.outNar)
		}
	}
}
