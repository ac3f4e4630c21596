package clientconfig

import (
	"fmt"
	"slices"
	"strings"
)

// Client is what client-config produces for: the alias and address of
// the farm, the key that authenticates, and the user whose files matter
// (root when builds go through nix-daemon).
type Client struct {
	Alias    string // ssh Host alias, e.g. "nixfarm"
	Host     string // the farm's host name or address
	Port     string // its SSH port
	KeyFile  string // the private key, e.g. /root/.ssh/nixfarm_ed25519
	Scheme   string // "ssh-ng" (default) or "ssh"
	HostKey  string // HostKeyLine of the farm's key
	MaxJobs  int    // builds the client sends at once
	SpeedFac int    // the machines line's speed factor (1)
}

func (c Client) scheme() string {
	if c.Scheme == "" {
		return "ssh-ng"
	}
	return c.Scheme
}

// MachinesLine is the builders value for the pool: one machines entry
// per group of workers that offer the same things, separated by " ; ",
// each with the host key in the 8th field, so that no known_hosts entry
// is needed. Each entry's jobs are its group's slots (or the client's
// choice).
func MachinesLine(c Client, p Pool) string {
	field := func(xs []string) string {
		if len(xs) == 0 {
			return "-"
		}
		return strings.Join(xs, ",")
	}
	speed := max(1, c.SpeedFac)
	var entries []string
	for _, g := range p.groups() {
		entries = append(entries, fmt.Sprintf("%s://%s %s %s %d %d %s %s %s", c.scheme(), c.Alias, field(g.Systems), c.KeyFile, c.jobs(g), speed,
			field(append(slices.Clone(g.Features), g.Mandatory...)), field(g.Mandatory), c.HostKey))
	}
	return strings.Join(entries, " ; ")
}

// SSHConfig is the block for the build user's ssh config. Keep-alives end
// a dead connection within about a minute instead of leaving a build
// hanging on it (NixOS/nix#15620); BatchMode makes a missing key or an
// unknown host an error, never a prompt nobody sees; ConnectTimeout ends
// the wait on an address that never answers.
func SSHConfig(c Client) string {
	return fmt.Sprintf(`Host %s
    HostName %s
    Port %s
    User nixfarm
    IdentityFile %s
    IdentitiesOnly yes
    HostKeyAlias %s
    BatchMode yes
    ConnectTimeout 30
    ServerAliveInterval 15
    ServerAliveCountMax 4
`, c.Alias, c.Host, c.Port, c.KeyFile, c.Alias)
}
