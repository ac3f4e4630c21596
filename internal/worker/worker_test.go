package worker_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/worker"
)

func TestCanBuild(t *testing.T) {
	b := worker.Capabilities{Systems: []string{"x86_64-linux", "aarch64-linux"}, SupportedFeatures: []string{"big-parallel", "kvm"}, MaxJobs: 1, SpeedFactor: 1}
	c := worker.Capabilities{Systems: []string{"x86_64-linux"}, MandatoryFeatures: []string{"benchmark"}, MaxJobs: 1, SpeedFactor: 1}
	for _, tc := range []struct {
		caps     worker.Capabilities
		system   string
		required []string
		want     bool
	}{
		{b, "x86_64-linux", nil, true},
		{b, "aarch64-linux", []string{"kvm"}, true},
		{b, "riscv64-linux", nil, false},
		{b, "builtin", nil, true},
		{b, "x86_64-linux", []string{"kvm", "big-parallel"}, true},
		{b, "x86_64-linux", []string{"benchmark"}, false},
		{c, "x86_64-linux", nil, false},                  // mandatory not required
		{c, "x86_64-linux", []string{"benchmark"}, true}, // mandatory counts as supported
		{c, "x86_64-linux", []string{"benchmark", "kvm"}, false},
	} {
		if got := tc.caps.CanBuild(tc.system, tc.required); got != tc.want {
			t.Errorf("%s CanBuild(%s, %v) = %v", tc.caps, tc.system, tc.required, got)
		}
	}
	for _, bad := range []worker.Capabilities{{MaxJobs: 1, SpeedFactor: 1}, {Systems: []string{"x"}, SpeedFactor: 1}, {Systems: []string{"x"}, MaxJobs: 1},
		// Names a client writes into nix.conf (nixfarm client-config).
		{Systems: []string{"x86_64-linux\nextra-substituters = http://evil"}, MaxJobs: 1, SpeedFactor: 1},
		{Systems: []string{"x86_64-linux"}, SupportedFeatures: []string{"kvm big"}, MaxJobs: 1, SpeedFactor: 1},
		{Systems: []string{"x86_64-linux"}, MandatoryFeatures: []string{`a"b`}, MaxJobs: 1, SpeedFactor: 1},
		{Systems: []string{""}, MaxJobs: 1, SpeedFactor: 1}} {
		if bad.Validate() == nil {
			t.Errorf("%+v validated", bad)
		}
	}
}

func TestRequiredFeatures(t *testing.T) {
	env := &derivation.Basic{Env: map[string]string{"requiredSystemFeatures": "kvm  big-parallel kvm"}}
	if got := worker.RequiredFeatures(env); !slices.Equal(got, []string{"big-parallel", "kvm"}) {
		t.Errorf("env: %v", got)
	}
	structured := &derivation.Basic{Env: map[string]string{"__json": `{"requiredSystemFeatures":["benchmark"],"x":1}`}}
	if got := worker.RequiredFeatures(structured); !slices.Equal(got, []string{"benchmark"}) {
		t.Errorf("structured attrs: %v", got)
	}
	if got := worker.RequiredFeatures(&derivation.Basic{Env: map[string]string{}}); len(got) != 0 {
		t.Errorf("none: %v", got)
	}
}

func TestSettings(t *testing.T) {
	caps := worker.Capabilities{Systems: []string{"x86_64-linux", "aarch64-linux"}, SupportedFeatures: []string{"kvm"}, MandatoryFeatures: []string{"benchmark"}}
	got := caps.Settings("x86_64-linux")
	if got["extra-platforms"] != "aarch64-linux" || got["system-features"] != "benchmark kvm" {
		t.Errorf("settings %v", got)
	}
}

func TestParseMachines(t *testing.T) {
	dir := t.TempDir()
	include := filepath.Join(dir, "more")
	os.WriteFile(include, []byte("ssh://included x86_64-linux\n"), 0o644)
	text := `# builders
ssh://alice@big.example.org?remote-store=/data/nix x86_64-linux,aarch64-linux /root/.ssh/key 8 2 big-parallel,kvm benchmark c3NoLWVkMjU1MTkgQUFBQQ==
bare-host ; ssh-ng://ng.example.org?remote-program=nix-daemon - - - 0 - -
@` + include + `
@/nonexistent/file
`
	ms, err := worker.ParseMachines(text, "x86_64-linux")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 4 {
		t.Fatalf("%d machines: %+v", len(ms), ms)
	}
	m := ms[0]
	if m.Host != "alice@big.example.org" || m.RemoteStore != "/data/nix" || m.SSHKey != "/root/.ssh/key" || m.MaxJobs != 8 ||
		m.SpeedFactor != 2 || !slices.Equal(m.Systems, []string{"x86_64-linux", "aarch64-linux"}) ||
		!slices.Equal(m.SupportedFeatures, []string{"big-parallel", "kvm"}) || !slices.Equal(m.MandatoryFeatures, []string{"benchmark"}) ||
		m.HostKey != "c3NoLWVkMjU1MTkgQUFBQQ==" {
		t.Errorf("full entry: %+v", m)
	}
	if ms[1].URI != "ssh://bare-host" || ms[1].MaxJobs != 1 || ms[1].SpeedFactor != 1 || ms[1].Systems[0] != "x86_64-linux" {
		t.Errorf("defaults: %+v", ms[1])
	}
	if ms[2].Host != "ng.example.org" || ms[2].RemoteProgram != "" || ms[2].SpeedFactor != 1 {
		t.Errorf("ssh-ng entry (speed 0 means 1, nix-daemon is not the serve program): %+v", ms[2])
	}
	if ms[3].Host != "included" {
		t.Errorf("included entry: %+v", ms[3])
	}
	for _, bad := range []string{
		"daemon x86_64-linux",
		"http://cache.example.org x86_64-linux",
		"ssh://h x86_64-linux - lots",
		"ssh://h x86_64-linux - 1 fast",
		"ssh://h x86_64-linux - 1 1 - - not*base64",
		"ssh://h a b 1 1 - - - extra",
		"ssh://-oProxyCommand=evil x86_64-linux",
	} {
		if _, err := worker.ParseMachines(bad, "x86_64-linux"); err == nil {
			t.Errorf("%q accepted", bad)
		} else if !strings.Contains(err.Error(), "machine") {
			t.Errorf("%q: error does not name the machine: %v", bad, err)
		}
	}
}

func TestMachineStore(t *testing.T) {
	for _, c := range []struct {
		uri             string
		root            bool
		machine, daemon bool
	}{
		{"", true, true, false},
		{"", false, true, true},
		{"auto", true, true, false},
		{"auto", false, true, true},
		{"daemon", true, true, true},
		{"unix:///nix/var/nix/daemon-socket/socket", true, true, true},
		{"local", true, true, false},
		{"local?root=/", true, true, false},
		{"/", true, true, false},
		{"local?root=/var/lib/nixfarm/worker-store", true, false, false},
		{"/var/lib/nixfarm/worker-store", true, false, false},
		{"ssh-ng://builder", true, false, false},
	} {
		m, d := worker.MachineStore(c.uri, c.root)
		if m != c.machine || d != c.daemon {
			t.Errorf("MachineStore(%q, root=%v) = %v, %v; want %v, %v", c.uri, c.root, m, d, c.machine, c.daemon)
		}
	}
}
