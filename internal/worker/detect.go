package worker

import (
	"context"
	"encoding/json"
	"fmt"
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

// IsDaemonStore reports whether a store URI reaches the machine's
// nix-daemon, whose own settings (build users among them) then apply.
func IsDaemonStore(uri string) bool {
	return uri == "daemon" || strings.HasPrefix(uri, "unix://")
}
