package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os/exec"
	"slices"
	"strings"
)

// NixConfig is what the local Nix says about the machine.
type NixConfig struct {
	System         string
	ExtraPlatforms []string
	SystemFeatures []string
	// BuildUsersGroup is the group Nix builds as when run as root.
	BuildUsersGroup string
	// SandboxPaths is what Nix binds into its sandbox.
	SandboxPaths []string
}

// DetectNix asks the local Nix (`nix show-config --json`) for its system,
// extra platforms, system features and build users group.
func DetectNix(ctx context.Context, nixBin string) (NixConfig, error) {
	if nixBin == "" {
		nixBin = "nix"
	}
	out, err := exec.CommandContext(ctx, nixBin, "--extra-experimental-features", "nix-command", "show-config", "--json").Output()
	if err != nil {
		return NixConfig{}, fmt.Errorf("asking the local Nix for its configuration (nix show-config): %w", err)
	}
	var cfg map[string]struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		return NixConfig{}, fmt.Errorf("reading nix show-config: %w", err)
	}
	var nc NixConfig
	json.Unmarshal(cfg["system"].Value, &nc.System)
	json.Unmarshal(cfg["extra-platforms"].Value, &nc.ExtraPlatforms)
	json.Unmarshal(cfg["system-features"].Value, &nc.SystemFeatures)
	json.Unmarshal(cfg["build-users-group"].Value, &nc.BuildUsersGroup)
	json.Unmarshal(cfg["sandbox-paths"].Value, &nc.SandboxPaths)
	if nc.System == "" {
		return NixConfig{}, fmt.Errorf("nix show-config names no system")
	}
	return nc, nil
}

// Systems returns the system and the extra platforms.
func (nc NixConfig) Systems() []string {
	out := append([]string{nc.System}, nc.ExtraPlatforms...)
	return slices.Compact(out)
}

// Settings returns the Nix settings a worker passes to its nix-store so
// that the local Nix accepts every derivation the worker declared it
// builds: its systems beyond the native one as extra-platforms, and its
// features as system-features.
func (c Capabilities) Settings(native string) map[string]string {
	var extra []string
	for _, s := range c.Systems {
		if s != native {
			extra = append(extra, s)
		}
	}
	features := append(slices.Clone(c.SupportedFeatures), c.MandatoryFeatures...)
	slices.Sort(features)
	features = slices.Compact(features)
	return map[string]string{
		"extra-platforms": joinWords(extra),
		"system-features": joinWords(features),
	}
}

func joinWords(ws []string) string {
	out := ""
	for i, w := range ws {
		if i > 0 {
			out += " "
		}
		out += w
	}
	return out
}

// MachineStore reports whether a Nix store URI is this machine's own
// /nix/store, and whether it is reached through the machine's nix-daemon,
// for a Nix running as root or not: "" and "auto" are the local store as
// root and the daemon otherwise; "daemon" and unix:// are the daemon;
// "local" and "/" the local store, unless a root= parameter makes it a
// chroot store. A chroot store (any other absolute path) and remote stores
// are not the machine's.
func MachineStore(uri string, root bool) (machine, daemon bool) {
	base, query, _ := strings.Cut(uri, "?")
	params, _ := url.ParseQuery(query)
	switch {
	case base == "" || base == "auto":
		return true, !root
	case base == "daemon" || strings.HasPrefix(base, "unix://"):
		return true, true
	case base == "local" || base == "/" || base == "local://":
		r := params.Get("root")
		return r == "" || r == "/", false
	}
	return false, false
}
