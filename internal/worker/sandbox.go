package worker

import (
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os/exec"
	"os/user"
	"slices"
	"strings"
)

// SandboxSettings are the Nix settings under which the built-in worker's
// nix-store builds: sandbox = true, whatever nix.conf says (Debian's is
// false), and sandbox-fallback = false, so that Nix fails a build it cannot
// sandbox instead of running it on the host, as Nix 2.8 otherwise does
// when the kernel refuses the namespaces. A chroot store (--store /dir)
// is sandboxed by Nix even with sandbox = false, but not the fallback.
func SandboxSettings() map[string]string {
	return map[string]string{"sandbox": "true", "sandbox-fallback": "false"}
}

// SandboxCheck says whether the built-in worker's nix-store will build
// only in Nix's sandbox. Its fields are the seams to the machine.
type SandboxCheck struct {
	// ShowConfig runs `nix show-config --json` with extra arguments.
	ShowConfig func(ctx context.Context, args ...string) ([]byte, error)
	// Namespaces tries to create the namespaces Nix's sandbox needs;
	// userNS is for a Nix not run as root.
	Namespaces func(userNS bool) error
	// Root: nixfarm runs as root. Daemon: the store is reached through
	// the machine's nix-daemon. User is who nixfarm runs as.
	Root, Daemon bool
	User         string

	// SandboxPaths is Nix's sandbox-paths, as Run found it.
	SandboxPaths []string
}

// NewSandboxCheck returns the check for this machine.
func NewSandboxCheck(nixBin string, root, daemon bool) *SandboxCheck {
	if nixBin == "" {
		nixBin = "nix"
	}
	name := ""
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	return &SandboxCheck{
		ShowConfig: func(ctx context.Context, args ...string) ([]byte, error) {
			args = append([]string{"--extra-experimental-features", "nix-command", "show-config", "--json"}, args...)
			return exec.CommandContext(ctx, nixBin, args...).Output()
		},
		Namespaces: tryNamespaces,
		Root:       root, Daemon: daemon, User: name,
	}
}

// Run returns nil if builds will be sandboxed, and otherwise an error
// saying why not and what to do.
func (c *SandboxCheck) Run(ctx context.Context) error {
	var args []string
	settings := SandboxSettings()
	for _, k := range sortedKeys(settings) {
		args = append(args, "--option", k, settings[k])
	}
	with, err := c.config(ctx, args...)
	if err != nil {
		return err
	}
	for _, p := range asList(with["sandbox-paths"]) {
		c.SandboxPaths = append(c.SandboxPaths, p)
	}
	if with["sandbox"] != true || with["sandbox-fallback"] != false {
		return fmt.Errorf("this Nix does not take --option sandbox true --option sandbox-fallback false (it reports sandbox = %v, sandbox-fallback = %v)", with["sandbox"], with["sandbox-fallback"])
	}
	if c.Daemon && !c.Root && !trusted(with["trusted-users"], c.User) {
		// The daemon ignores an untrusted user's sandbox settings: only
		// its own nix.conf counts.
		own, err := c.config(ctx)
		if err != nil {
			return err
		}
		if own["sandbox"] != true || own["sandbox-fallback"] != false {
			return fmt.Errorf("the built-in worker builds through the machine's nix-daemon, which ignores sandbox settings from %q, not a trusted user, and its nix.conf has sandbox = %v, sandbox-fallback = %v: set sandbox = true and sandbox-fallback = false there, or run nixfarm as root, or use a chroot store (--local-store /some/dir, the default)",
				c.User, own["sandbox"], own["sandbox-fallback"])
		}
	}
	if err := c.Namespaces(!c.Root && !c.Daemon); err != nil {
		return fmt.Errorf("Nix cannot sandbox builds here: creating the mount, PID, IPC, UTS and network namespaces its sandbox uses failed (%w); run nixfarm as root on a machine (or a container allowed to make namespaces) where that works, or turn the built-in worker off (--local-worker=false) and build on agents or static workers", err)
	}
	return nil
}

// config runs nix show-config and returns each setting's value.
func (c *SandboxCheck) config(ctx context.Context, args ...string) (map[string]any, error) {
	out, err := c.ShowConfig(ctx, args...)
	if err != nil {
		return nil, fmt.Errorf("asking the local Nix whether it can sandbox builds (nix show-config): %w; the built-in worker needs Nix's nix command (or --local-worker=false)", err)
	}
	var cfg map[string]struct {
		Value any `json:"value"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		return nil, fmt.Errorf("reading nix show-config: %w", err)
	}
	values := make(map[string]any, len(cfg))
	for k, v := range cfg {
		values[k] = v.Value
	}
	return values, nil
}

// trusted reports whether user is named in trusted-users (groups, "@g",
// are not looked into: such a user is taken as untrusted).
func trusted(list any, user string) bool {
	names, _ := list.([]any)
	return user != "" && (slices.Contains(names, any(user)) || slices.Contains(names, any("*")))
}

func asList(v any) []string {
	var out []string
	switch v := v.(type) {
	case []any:
		for _, x := range v {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
	case string: // older Nix: one space-separated string
		out = strings.Fields(v)
	}
	return out
}

// SandboxShell returns the sandbox-paths entry that gives builds a
// /bin/sh, as NixOS's Nix does (its busybox, built in as the sandbox
// shell): the first candidate that is a statically linked executable, if
// sandbox-paths does not already provide /bin/sh. Derivations written for
// NixOS builders, and nixfarm doctor's test build, use builder = "/bin/sh".
// Debian's Nix has no sandbox shell; busybox-static's /bin/busybox is one.
func SandboxShell(sandboxPaths []string, candidates ...string) string {
	for _, p := range sandboxPaths {
		if target, _, _ := strings.Cut(strings.TrimSuffix(p, "?"), "="); target == "/bin/sh" {
			return ""
		}
	}
	for _, c := range candidates {
		if isStatic(c) {
			return "/bin/sh=" + c
		}
	}
	return ""
}

// isStatic reports whether path is an ELF executable with no program
// interpreter, which runs in the sandbox without the host's libraries.
func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return false
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}
