// Package worker describes the machines that build: what each can build
// (its Capabilities, and the scheduling rules Nix uses for them), and how
// a build reaches it. Every kind of worker, the built-in one, static
// machines from a machines file, and agents that dial in, builds through
// the same Executor, which drives `nix-store --serve --write` over a
// Transport.
package worker

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nixfarm/nixfarm/internal/derivation"
)

// Capabilities are what a worker declares it can build.
type Capabilities struct {
	// Systems it builds for, such as x86_64-linux.
	Systems []string `json:"systems"`
	// SupportedFeatures it offers (big-parallel, kvm, ...).
	SupportedFeatures []string `json:"supportedFeatures"`
	// MandatoryFeatures are required of every derivation it takes, and
	// count as supported.
	MandatoryFeatures []string `json:"mandatoryFeatures"`
	// MaxJobs is how many builds it runs at once.
	MaxJobs int `json:"maxJobs"`
	// SpeedFactor ranks it against others: higher is faster.
	SpeedFactor float64 `json:"speedFactor"`
}

// Validate checks that the capabilities make sense.
func (c Capabilities) Validate() error {
	if len(c.Systems) == 0 {
		return fmt.Errorf("a worker must build for at least one system")
	}
	if c.MaxJobs < 1 {
		return fmt.Errorf("max jobs is %d; it must be at least 1", c.MaxJobs)
	}
	if c.SpeedFactor <= 0 {
		return fmt.Errorf("speed factor is %g; it must be positive", c.SpeedFactor)
	}
	for _, list := range [][]string{c.Systems, c.SupportedFeatures, c.MandatoryFeatures} {
		if len(list) > 64 {
			return fmt.Errorf("%d systems or features; at most 64 are accepted", len(list))
		}
		for _, name := range list {
			if !ValidName(name) {
				return fmt.Errorf("system or feature %q: use at most 64 letters, digits and . _ + -", name)
			}
		}
	}
	return nil
}

// ValidName reports whether a system or feature name is one Nix and
// nixfarm can pass on safely: clients write them into nix.conf and ssh
// and Nix files (nixfarm client-config), where a space, a newline or a
// quote would change what those files say.
func ValidName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '+', r == '-':
		default:
			return false
		}
	}
	return true
}

// CanBuild applies Nix's rules (build-remote.cc): the system matches (or
// the derivation is builtin), every required feature is supported or
// mandatory, and every mandatory feature is required.
func (c Capabilities) CanBuild(system string, required []string) bool {
	if system != "builtin" && !slices.Contains(c.Systems, system) {
		return false
	}
	for _, f := range required {
		if !slices.Contains(c.SupportedFeatures, f) && !slices.Contains(c.MandatoryFeatures, f) {
			return false
		}
	}
	for _, f := range c.MandatoryFeatures {
		if !slices.Contains(required, f) {
			return false
		}
	}
	return true
}

// String describes the capabilities in one line, for messages.
func (c Capabilities) String() string {
	var b strings.Builder
	b.WriteString(strings.Join(c.Systems, ","))
	if len(c.SupportedFeatures) > 0 {
		b.WriteString("; features " + strings.Join(c.SupportedFeatures, ","))
	}
	if len(c.MandatoryFeatures) > 0 {
		b.WriteString("; mandatory " + strings.Join(c.MandatoryFeatures, ","))
	}
	return b.String()
}

// RequiredFeatures returns the system features a derivation requires:
// its requiredSystemFeatures, from the environment or structured attrs.
func RequiredFeatures(drv *derivation.Basic) []string {
	var out []string
	if attrs, ok := drv.StructuredAttrs(); ok {
		if list, ok := attrs["requiredSystemFeatures"].([]any); ok {
			for _, v := range list {
				if s, ok := v.(string); ok {
					out = append(out, s)
				}
			}
		}
	} else {
		out = strings.Fields(drv.Env["requiredSystemFeatures"])
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
