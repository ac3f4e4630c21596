package doctor

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/worker"
)

func TestParseStat(t *testing.T) {
	// The name may hold spaces and parentheses: it ends at the last ')'.
	line := "1234 (nix-daemon) S 1 1234 1234 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 98765 1000 200 18446744073709551615"
	name, ppid, start, ok := parseStat(line)
	if !ok || name != "nix-daemon" || ppid != 1 || start != 98765 {
		t.Errorf("got %q %d %d %v", name, ppid, start, ok)
	}
	name, ppid, _, ok = parseStat("77 (a) b (c)) R 5 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 0 0")
	if !ok || name != "a) b (c)" || ppid != 5 {
		t.Errorf("got %q %d %v", name, ppid, ok)
	}
	for _, bad := range []string{"", "1 nix-daemon S 1", "1 (x) S", "1 (x) S z 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42"} {
		if _, _, _, ok := parseStat(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestParseSSHG(t *testing.T) {
	opts := parseSSHG("hostname 127.0.0.1\nport 2222\nidentityfile ~/.ssh/id_rsa\nidentityfile /root/.ssh/nixfarm_ed25519\nuserknownhostsfile ~/.ssh/known_hosts ~/.ssh/known_hosts2\nHostKeyAlias nixfarm\n")
	if opts["hostname"][0] != "127.0.0.1" || opts["port"][0] != "2222" || len(opts["identityfile"]) != 2 ||
		len(opts["userknownhostsfile"]) != 2 || opts["hostkeyalias"][0] != "nixfarm" {
		t.Errorf("got %v", opts)
	}
	a := &account{Name: "root", Home: "/root"}
	if got := expandHome("~/.ssh/id_rsa", a); got != "/root/.ssh/id_rsa" {
		t.Errorf("got %s", got)
	}
	if got := expandHome("%d/.ssh/k", a); got != "/root/.ssh/k" {
		t.Errorf("got %s", got)
	}
}

func TestIsTrusted(t *testing.T) {
	alice := &account{Name: "alice", UID: 1000, Groups: []string{"users", "wheel"}}
	for _, tc := range []struct {
		list []string
		want bool
	}{
		{[]string{"root"}, false},
		{[]string{"root", "alice"}, true},
		{[]string{"@wheel"}, true},
		{[]string{"@admin"}, false},
		{[]string{"*"}, true},
		{nil, false},
	} {
		if got := isTrusted(tc.list, alice); got != tc.want {
			t.Errorf("%v: got %v", tc.list, got)
		}
	}
	if !isTrusted(nil, &account{Name: "root", UID: 0}) {
		t.Error("root is always trusted")
	}
}

func TestTakes(t *testing.T) {
	sys := []string{"x86_64-linux"}
	if !takes(sys, []string{"kvm"}, nil, "x86_64-linux", []string{"kvm"}) {
		t.Error("kvm build refused by a kvm machine")
	}
	if takes(sys, nil, nil, "aarch64-linux", nil) {
		t.Error("aarch64 build taken by an x86_64 machine")
	}
	if takes(sys, nil, nil, "x86_64-linux", []string{"kvm"}) {
		t.Error("kvm build taken by a machine without kvm")
	}
	if takes(sys, nil, []string{"benchmark"}, "x86_64-linux", nil) {
		t.Error("a machine with a mandatory feature took a build without it")
	}
}

func TestDiagnose(t *testing.T) {
	d := &doctor{opts: Options{Farm: "farm:2222"}, builder: &account{Name: "root"}, daemon: true}
	banner := "nixfarm: your key SHA256:abc (ssh-ed25519) is not authorized on this farm.\nnixfarm:   echo 'ssh-ed25519 AAAAX c' | nixfarm keys add --account NAME -\n"
	cases := map[string]string{
		banner: "echo 'ssh-ed25519 AAAAX c' | nixfarm keys add --account NAME -",
		"Host key verification failed.\r\nerror: cannot connect":                                        "8th field",
		"ssh: connect to host 127.0.0.1 port 2222: Connection refused":                                  "start the farm",
		"error: unable to start any build; either increase '--max-jobs'":                                "client-config",
		"error: a 'aarch64-linux' with features {} is required to build 'x', but I am a":                "--max-jobs 0",
		"warning: ignoring the client-specified setting 'builders', because it is a restricted setting": "nix.conf",
		// A limit, not an unknown key: the farm's own words, not "add the key".
		"nixfarm: account alice has 8 connections open, its limit; close some, or ask the farm's operator to raise --max-connections-per-account.\nnixfarm@127.0.0.1: Permission denied (publickey).": "what the farm's message says",
		"error: executing '/bin/sh': No such file or directory": "sandbox-paths",
	}
	for stderr, fix := range cases {
		problem, why, got := d.diagnose(stderr)
		if problem == "" || why == "" || !strings.Contains(got, fix) {
			t.Errorf("%q: got %q / %q / %q, want a fix with %q", stderr, problem, why, got, fix)
		}
	}
	if p, _, _ := d.diagnose("something else entirely"); p != "" {
		t.Errorf("unknown failure diagnosed as %q", p)
	}
}

func TestReport(t *testing.T) {
	r := &Report{Farm: "ssh-ng://nixfarm (127.0.0.1:2222)", Checks: []Check{
		{ID: "nix", Title: "Nix is installed", AsUser: "alice", Status: OK, Detail: "Nix 2.8.0"},
		{ID: "key", Title: "The build user has a usable SSH key", AsUser: "root", ForUser: "root", Status: Fail,
			Problem: "root has no key", Why: "ssh cannot log in", Fix: "ssh-keygen ..."},
	}}
	r.OK = false
	var b bytes.Buffer
	r.Write(&b)
	out := b.String()
	for _, want := range []string{"[FAIL] 2. The build user has a usable SSH key  [as root]", "what: root has no key", "why:  ssh cannot log in", "fix:  ssh-keygen ...", "Remote builds will not work: 1 check(s) failed"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back.Checks) != 2 || back.Checks[1].Fix != "ssh-keygen ..." || back.OK {
		t.Errorf("JSON round trip: %v %+v", err, back)
	}
}

func TestProbeExpr(t *testing.T) {
	a, b := probeExpr("x86_64-linux", 1), probeExpr("x86_64-linux", 2)
	if a == b || !strings.Contains(a, `system = "x86_64-linux"`) || !strings.Contains(a, `builder = "/bin/sh"`) {
		t.Errorf("probe:\n%s", a)
	}
	// A hostile system name from a builders line stays one string.
	if e := probeExpr(`x"; evil = "${builtins.currentTime}`, 1); strings.Contains(e, "evil") || strings.Contains(e, "${builtins") {
		t.Errorf("system not quoted:\n%s", e)
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add("1234 (nix-daemon) S 1 1234 1234 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 98765 1000")
	f.Add("1 ((x)) S 1")
	f.Fuzz(func(t *testing.T, s string) {
		name, _, _, ok := parseStat(s)
		if ok && !strings.Contains(s, "("+name+")") {
			t.Errorf("name %q is not between parentheses in %q", name, s)
		}
	})
}

func FuzzParseSSHG(f *testing.F) {
	f.Add("hostname 127.0.0.1\nport 22\nidentityfile ~/.ssh/id_rsa\n")
	f.Fuzz(func(t *testing.T, s string) {
		for k, v := range parseSSHG(s) {
			if k != strings.ToLower(k) || len(v) == 0 {
				t.Errorf("key %q values %q", k, v)
			}
		}
	})
}

func TestCompareOffer(t *testing.T) {
	x86 := workerInfo{Name: "x86", State: "idle", Capabilities: worker.Capabilities{Systems: []string{"x86_64-linux"}, SupportedFeatures: []string{"kvm"}, MaxJobs: 4}}
	arm := workerInfo{Name: "arm", State: "idle", Capabilities: worker.Capabilities{Systems: []string{"aarch64-linux"}, MaxJobs: 2}}
	sick := workerInfo{Name: "sick", State: "quarantined", Capabilities: worker.Capabilities{Systems: []string{"riscv64-linux"}, MaxJobs: 2}}
	entry := func(systems []string, features ...string) worker.Machine {
		return worker.Machine{Capabilities: worker.Capabilities{Systems: systems, SupportedFeatures: features}}
	}
	// One entry per kind of worker, as client-config writes: all fine.
	p, m := compareOffer([]worker.Machine{entry([]string{"x86_64-linux"}, "kvm"), entry([]string{"aarch64-linux"})}, []workerInfo{x86, arm, sick})
	if len(p) != 0 || len(m) != 0 {
		t.Errorf("per-kind entries: problems %v, missing %v", p, m)
	}
	// One entry for the union promises aarch64-linux with kvm, which no
	// worker has.
	p, _ = compareOffer([]worker.Machine{entry([]string{"x86_64-linux", "aarch64-linux"}, "kvm")}, []workerInfo{x86, arm})
	if len(p) != 1 || !strings.Contains(p[0], "aarch64-linux with features {kvm}") {
		t.Errorf("union entry: problems %v", p)
	}
	// A quarantined worker offers nothing; a worker no entry covers is missing.
	p, m = compareOffer([]worker.Machine{entry([]string{"riscv64-linux"})}, []workerInfo{x86, sick})
	if len(p) != 1 || len(m) != 1 || !strings.HasPrefix(m[0], "x86 ") {
		t.Errorf("problems %v, missing %v", p, m)
	}
}
