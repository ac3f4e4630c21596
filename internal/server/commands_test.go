package server

import (
	"strings"
	"testing"
)

func TestParseCommand(t *testing.T) {
	ok := []struct {
		line  string
		kind  commandKind
		write bool
		store string
	}{
		{"nix-store --serve --write", cmdServe, true, ""},
		{"nix-store --serve", cmdServe, false, ""},
		{"nix-store --serve --write --store /tmp/x", cmdServe, true, "/tmp/x"},
		{"nix-store --serve --write --store '/tmp/with space'", cmdServe, true, "/tmp/with space"},
		{"/run/current-system/sw/bin/nix-store --serve --write", cmdServe, true, ""},
		{"nix-daemon --stdio", cmdDaemon, false, ""},
		{"nix-daemon --stdio --store \"local?root=/x\"", cmdDaemon, false, "local?root=/x"},
	}
	for _, tc := range ok {
		c, err := parseCommand(tc.line)
		if err != nil {
			t.Errorf("%q: %v", tc.line, err)
			continue
		}
		if c.kind != tc.kind || c.write != tc.write || c.store != tc.store {
			t.Errorf("%q: got %+v", tc.line, c)
		}
	}
	for line, asJSON := range map[string]bool{"nixfarm whoami": false, "nixfarm  whoami --json": true} {
		if c, err := parseCommand(line); err != nil || c.kind != cmdWhoami || c.json != asJSON {
			t.Errorf("%q: %+v %v", line, c, err)
		}
	}
	for line, asJSON := range map[string]bool{"nixfarm workers": false, "nixfarm workers --json": true} {
		if c, err := parseCommand(line); err != nil || c.kind != cmdWorkers || c.json != asJSON {
			t.Errorf("%q: %+v %v", line, c, err)
		}
	}
	if c, err := parseCommand("nixfarm builds --status 'timed-out' --json"); err != nil || c.kind != cmdBuilds ||
		strings.Join(c.args, "|") != "--status|timed-out|--json" {
		t.Errorf("nixfarm builds: %+v %v", c, err)
	}
	for line, want := range map[string]struct {
		kind commandKind
		args string
	}{
		"nixfarm tokens create --name 'my ci' --expires 30d": {cmdTokens, "create|--name|my ci|--expires|30d"},
		"nixfarm tokens revoke 7":                            {cmdTokens, "revoke|7"},
		"nixfarm tokens":                                     {cmdTokens, ""},
		"nixfarm queue --watch --json":                       {cmdQueue, "--watch|--json"},
		"nixfarm help":                                       {cmdHelp, ""},
		"nixfarm --help":                                     {cmdHelp, ""},
	} {
		if c, err := parseCommand(line); err != nil || c.kind != want.kind || strings.Join(c.args, "|") != want.args {
			t.Errorf("%q: %+v %v", line, c, err)
		}
	}
	bad := []string{
		"", "ls", "nix-store", "nix-store --serve --write; rm -rf /", "nix-store --serve --write && ls",
		"nix-store --query --references /", "nix-store --serve --serve", "nix-store --serve --store",
		"nix-daemon", "nix-daemon --stdio --write", "sh -c 'nix-store --serve'", "nix-store --serve 'unterminated",
		"nix-store --serve $(id)", "nix-store-evil --serve", "nix-store --serve --write `id`",
		"nixfarm", "nixfarm whoami --json --json", "nixfarm whoami x", "nixfarm serve", "/usr/bin/nixfarm whoami",
		"nixfarm workers add x", "nixfarm workers --json --json", "nixfarm help me", "nixfarm token create",
		"nixfarm queue; ls", "nixfarm tokens create --name $(id)",
	}
	for _, line := range bad {
		if c, err := parseCommand(line); err == nil {
			t.Errorf("%q accepted as %+v", line, c)
		}
	}
}
