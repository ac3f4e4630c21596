package clientconfig

import (
	"fmt"
	"strings"
)

// NixOSSnippet is the farm as a NixOS module fragment, for the user to
// paste into configuration.nix: on NixOS /etc/nix and /etc/ssh are built
// from the configuration, so client-config prints this instead of
// editing files.
func NixOSSnippet(c Client, p Pool) string {
	return snippet(c, p, "NixOS: paste into configuration.nix, then run `sudo nixos-rebuild switch`.", "")
}

// DarwinSnippet is the same for nix-darwin (darwin-configuration.nix).
// nix-darwin's programs.ssh.extraConfig is written to
// /etc/ssh/ssh_config.d/100-nix-darwin.conf, which macOS's ssh_config
// includes, so root (who runs the builds under nix-daemon) reads it.
func DarwinSnippet(c Client, p Pool) string {
	return snippet(c, p, "nix-darwin: paste into darwin-configuration.nix, then run `darwin-rebuild switch`.",
		"# programs.ssh.extraConfig goes to /etc/ssh/ssh_config.d/100-nix-darwin.conf.\n")
}

// snippet writes the attributes of nix.buildMachines as the NixOS and
// nix-darwin modules name them (nixos/modules/config/nix-remote-build.nix,
// nix-darwin modules/nix/default.nix). Every value from the farm is
// quoted by nixString or nixIndented: none can end its string.
func snippet(c Client, p Pool, how, note string) string {
	var b strings.Builder
	b.WriteString("# nixfarm client-config: build through the farm.\n")
	b.WriteString("# " + how + "\n")
	b.WriteString(note)
	b.WriteString("nix.distributedBuilds = true;\n")
	b.WriteString("nix.buildMachines = [\n")
	attr := func(name, value string) { fmt.Fprintf(&b, "    %s = %s;\n", name, value) }
	for _, g := range p.groups() {
		b.WriteString("  {\n")
		attr("hostName", nixString(c.Alias))
		attr("protocol", nixString(c.scheme()))
		attr("systems", nixList(g.Systems))
		attr("maxJobs", fmt.Sprint(c.jobs(g)))
		attr("speedFactor", fmt.Sprint(max(1, c.SpeedFac)))
		// The modules add mandatoryFeatures to supportedFeatures themselves.
		attr("supportedFeatures", nixList(g.Features))
		attr("mandatoryFeatures", nixList(g.Mandatory))
		attr("sshUser", nixString("nixfarm"))
		attr("sshKey", nixString(c.KeyFile))
		attr("publicHostKey", nixString(c.HostKey))
		b.WriteString("  }\n")
	}
	b.WriteString("];\n")
	b.WriteString("nix.settings.builders-use-substitutes = true;\n")
	b.WriteString("programs.ssh.extraConfig = " + nixIndented(SSHConfig(c), "  ") + ";\n")
	return b.String()
}

// jobs is a machines entry's maximum of builds at once: the client's
// choice, else every slot its group of workers has.
func (c Client) jobs(g Group) int {
	if c.MaxJobs > 0 {
		return c.MaxJobs
	}
	return max(1, g.Slots)
}

// nixString quotes s as a Nix "..." string. Every $ is escaped (so no
// `${` can start an interpolation), as are \ and ", and control
// characters are written as escapes or dropped (NUL, which Nix strings
// cannot hold).
func nixString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '\\', '"', '$':
			b.WriteByte('\\')
			b.WriteRune(r)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case 0:
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func nixList(xs []string) string {
	if len(xs) == 0 {
		return "[ ]"
	}
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = nixString(x)
	}
	return "[ " + strings.Join(q, " ") + " ]"
}

// nixIndented quotes s as a Nix indented string (two single quotes
// around it), each line indented by indent, which Nix strips again.
// Every single quote and every dollar is escaped:
//
//	'  ->  ''\'
//	$  ->  ''$
//
// Escaping only a doubled quote and a dollar-brace is not enough: a
// quote just before such an escape joins it into three quotes, which
// Nix reads as an escaped pair, and the dollar-brace that follows then
// interpolates.
func nixIndented(s, indent string) string {
	var b strings.Builder
	b.WriteString("''\n")
	s = strings.ReplaceAll(s, "\x00", "")
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	for _, line := range lines {
		if strings.TrimSpace(line) != "" {
			b.WriteString(indent)
		}
		for _, r := range line {
			switch r {
			case '\'':
				b.WriteString(`''\'`)
			case '$':
				b.WriteString(`''$`)
			case '\r':
				b.WriteString(`''\r`)
			default:
				b.WriteRune(r)
			}
		}
		b.WriteByte('\n')
	}
	b.WriteString("''")
	return b.String()
}
