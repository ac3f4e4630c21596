package clientconfig_test

import (
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/nixfarm/nixfarm/internal/clientconfig"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func snippetClient() (clientconfig.Client, clientconfig.Pool) {
	return clientconfig.Client{
			Alias:   "nixfarm",
			Host:    "farm.example.org",
			Port:    "2222",
			KeyFile: "/root/.ssh/nixfarm_ed25519",
			HostKey: "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUhvc3Qga2V5",
		}, clientconfig.Pool{
			Systems:   []string{"aarch64-linux", "x86_64-linux"},
			Features:  []string{"big-parallel", "kvm"},
			Mandatory: []string{"big-parallel"},
			Slots:     12, Free: 5, Workers: 3,
		}
}

func TestSnippetsGolden(t *testing.T) {
	c, p := snippetClient()
	for name, got := range map[string]string{
		"nixos.golden":  clientconfig.NixOSSnippet(c, p),
		"darwin.golden": clientconfig.DarwinSnippet(c, p),
	} {
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run with -update to write it)", err)
		}
		if got != string(want) {
			t.Errorf("%s differs (run with -update if intended):\n--- got\n%s\n--- want\n%s", name, got, want)
		}
		parseNix(t, "{ config, ... }: {\n"+got+"}\n")
	}
}

// nixInstantiate finds nix-instantiate, or skips the test where it is
// missing, except in CI.
func nixInstantiate(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("nix-instantiate")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("nix-instantiate is not on PATH")
		}
		t.Skip("nix-instantiate is not on PATH")
	}
	return bin
}

func parseNix(t *testing.T, expr string) {
	t.Helper()
	out, err := exec.Command(nixInstantiate(t), "--parse", "-E", expr).CombinedOutput()
	if err != nil {
		t.Errorf("not valid Nix: %v\n%s\n%s", err, out, expr)
	}
}

// Values from the farm are hostile: evaluating the snippet gives back
// exactly the values put in, under exactly the attribute names expected,
// whatever quotes, dollars and braces the values hold.
func TestSnippetQuoting(t *testing.T) {
	bin := nixInstantiate(t)
	c := clientconfig.Client{
		Alias:   `x"; evil = 1; "`,
		Host:    `h'' ; ${builtins.abort "host"}`,
		Port:    `'${builtins.abort "port"}`,
		KeyFile: "/k\\ey'''$${x}''${y}\\${z}\"\n  Host *'",
		HostKey: `${builtins.abort "hk"}`,
		Scheme:  "ssh-ng",
	}
	p := clientconfig.Pool{
		Systems:   []string{`x"; evil`, `${toString 1}`, `a\`},
		Features:  []string{`''${x}`, `'`, "$"},
		Mandatory: []string{"$"},
		Slots:     2,
	}
	for name, snip := range map[string]string{"nixos": clientconfig.NixOSSnippet(c, p), "darwin": clientconfig.DarwinSnippet(c, p)} {
		out, err := exec.Command(bin, "--readonly-mode", "--eval", "--strict", "--json", "-E", "{\n"+snip+"}\n").CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s\n%s", name, err, out, snip)
			continue
		}
		var got any
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%s: %v: %s", name, err, out)
		}
		want := map[string]any{
			"nix": map[string]any{
				"distributedBuilds": true,
				"buildMachines": []any{map[string]any{
					"hostName":          c.Alias,
					"protocol":          "ssh-ng",
					"systems":           []any{p.Systems[0], p.Systems[1], p.Systems[2]},
					"maxJobs":           2.0,
					"speedFactor":       1.0,
					"supportedFeatures": []any{p.Features[0], p.Features[1]},
					"mandatoryFeatures": []any{"$"},
					"sshUser":           "nixfarm",
					"sshKey":            c.KeyFile,
					"publicHostKey":     c.HostKey,
				}},
				"settings": map[string]any{"builders-use-substitutes": true},
			},
			"programs": map[string]any{"ssh": map[string]any{"extraConfig": clientconfig.SSHConfig(c)}},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s evaluates to\n%#v\nwant\n%#v\nsnippet:\n%s", name, got, want, snip)
		}
	}
}
