package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/worker"
)

// fakeNix answers nix show-config --json from a nix.conf, with --option
// arguments applied unless ignore is set (a Nix that does not know them).
func fakeNix(conf map[string]any, ignore bool) func(context.Context, ...string) ([]byte, error) {
	return func(_ context.Context, args ...string) ([]byte, error) {
		values := map[string]any{}
		for k, v := range conf {
			values[k] = v
		}
		for i := 0; i+2 < len(args) && !ignore; i++ {
			if args[i] == "--option" {
				values[args[i+1]] = args[i+2] == "true"
			}
		}
		out := map[string]map[string]any{}
		for k, v := range values {
			out[k] = map[string]any{"value": v}
		}
		return json.Marshal(out)
	}
}

func TestSandboxCheck(t *testing.T) {
	debian := map[string]any{"sandbox": false, "sandbox-fallback": true, "trusted-users": []any{"root"}}
	hardened := map[string]any{"sandbox": true, "sandbox-fallback": false, "trusted-users": []any{"root"}}
	noNS := func(bool) error { return errors.New("operation not permitted") }
	okNS := func(bool) error { return nil }
	for _, tc := range []struct {
		name   string
		check  worker.SandboxCheck
		refuse string // "" = accepted
	}{
		{"root, own store", worker.SandboxCheck{ShowConfig: fakeNix(debian, false), Namespaces: okNS, Root: true}, ""},
		{"root, daemon", worker.SandboxCheck{ShowConfig: fakeNix(debian, false), Namespaces: okNS, Root: true, Daemon: true}, ""},
		{"no namespaces", worker.SandboxCheck{ShowConfig: fakeNix(debian, false), Namespaces: noNS, Root: true}, "operation not permitted"},
		{"options not taken", worker.SandboxCheck{ShowConfig: fakeNix(debian, true), Namespaces: okNS, Root: true}, "does not take"},
		{"untrusted, daemon unsandboxed", worker.SandboxCheck{ShowConfig: fakeNix(debian, false), Namespaces: okNS, Daemon: true, User: "farm"}, "not a trusted user"},
		{"untrusted, daemon sandboxed", worker.SandboxCheck{ShowConfig: fakeNix(hardened, false), Namespaces: okNS, Daemon: true, User: "farm"}, ""},
		{"trusted, daemon", worker.SandboxCheck{ShowConfig: fakeNix(map[string]any{"sandbox": false, "trusted-users": []any{"root", "farm"}}, false), Namespaces: okNS, Daemon: true, User: "farm"}, ""},
		{"nix missing", worker.SandboxCheck{ShowConfig: func(context.Context, ...string) ([]byte, error) { return nil, errors.New("not found") }, Namespaces: okNS, Root: true}, "nix show-config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.check.Run(context.Background())
			switch {
			case tc.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.refuse != "" && err == nil:
				t.Fatal("accepted")
			case tc.refuse != "" && !strings.Contains(err.Error(), tc.refuse):
				t.Fatalf("refused with %q, want it to say %q", err, tc.refuse)
			}
		})
	}
}

// TestSandboxNamespaces: this machine (root, as the tests run) lets Nix
// sandbox, and the check says so.
func TestSandboxNamespaces(t *testing.T) {
	root := os.Geteuid() == 0
	c := worker.NewSandboxCheck("", root, false)
	if err := c.Namespaces(!root); err != nil {
		t.Fatalf("creating the sandbox's namespaces: %v", err)
	}
}

func TestSandboxSettings(t *testing.T) {
	s := worker.SandboxSettings()
	if s["sandbox"] != "true" || s["sandbox-fallback"] != "false" {
		t.Fatalf("%v", s)
	}
}

func TestSandboxShell(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox (busybox-static)")
	}
	if got := worker.SandboxShell(nil, "/nonexistent", "/bin/busybox"); got != "/bin/sh=/bin/busybox" {
		t.Errorf("got %q", got)
	}
	// A dynamically linked shell would not run in the sandbox.
	if got := worker.SandboxShell(nil, "/bin/bash"); got != "" {
		t.Errorf("dynamic /bin/bash offered: %q", got)
	}
	// Nix already gives builds a /bin/sh: nothing is added.
	if got := worker.SandboxShell([]string{"/bin/sh=/nix/store/x-busybox/bin/busybox"}, "/bin/busybox"); got != "" {
		t.Errorf("got %q", got)
	}
	if got := worker.SandboxShell([]string{"/bin/sh?"}, "/bin/busybox"); got != "" {
		t.Errorf("got %q", got)
	}
}
