package worker

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Machine is one entry of a Nix machines file.
type Machine struct {
	// URI is the store URI as written (ssh:// is added to bare hosts).
	URI string
	// Host is [user@]host, taken from the URI.
	Host string
	// RemoteStore and RemoteProgram come from the URI's query.
	RemoteStore   string
	RemoteProgram string
	Capabilities
	// SSHKey is the private key file ("" = ssh's default).
	SSHKey string
	// HostKey is the base64 of the host's public key line ("" = known_hosts).
	HostKey string
}

// ParseMachines parses Nix's machines format (see Nix's machines.cc):
// entries separated by newlines or ';', '#' comments, "@file" includes
// (a missing file is ignored, as Nix does), and whitespace-separated
// fields where "" or "-" means the default:
//
//	URI systems sshKey maxJobs speedFactor supportedFeatures mandatoryFeatures hostKey
//
// thisSystem is the default system. Only ssh:// and ssh-ng:// machines
// can be static workers; both are driven with the serve protocol.
func ParseMachines(text, thisSystem string) ([]Machine, error) {
	return parseMachines(text, thisSystem, 0)
}

// ReadMachinesFile reads and parses a machines file.
func ReadMachinesFile(path, thisSystem string) ([]Machine, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("machines file: %w", err)
	}
	ms, err := ParseMachines(string(data), thisSystem)
	if err != nil {
		return nil, fmt.Errorf("machines file %s: %w", path, err)
	}
	return ms, nil
}

func parseMachines(text, thisSystem string, depth int) ([]Machine, error) {
	if depth > 16 {
		return nil, errors.New("machines files include each other too deeply")
	}
	var out []Machine
	for _, line := range strings.FieldsFunc(text, func(r rune) bool { return r == '\n' || r == ';' }) {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if include, ok := strings.CutPrefix(line, "@"); ok {
			data, err := os.ReadFile(strings.TrimSpace(include))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, err
			}
			ms, err := parseMachines(string(data), thisSystem, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, ms...)
			continue
		}
		m, err := parseMachine(line, thisSystem)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func parseMachine(line, thisSystem string) (Machine, error) {
	f := strings.Fields(line)
	set := func(i int) bool { return len(f) > i && f[i] != "-" && f[i] != "" }
	m := Machine{Capabilities: Capabilities{Systems: []string{thisSystem}, MaxJobs: 1, SpeedFactor: 1}}
	m.URI = f[0]
	// As Nix: a bare host gets ssh://, but not paths or store words.
	special := m.URI == "auto" || m.URI == "daemon" || m.URI == "local" || strings.HasPrefix(m.URI, "?") ||
		strings.HasPrefix(m.URI, "auto?") || strings.HasPrefix(m.URI, "daemon?") || strings.HasPrefix(m.URI, "local?")
	if !strings.Contains(m.URI, "://") && !strings.Contains(m.URI, "/") && !special {
		m.URI = "ssh://" + m.URI
	}
	if !strings.Contains(m.URI, "://") {
		return m, fmt.Errorf("machine %q: nixfarm drives static workers over ssh:// and ssh-ng://, not the store %q", line, m.URI)
	}
	u, err := url.Parse(m.URI)
	if err != nil {
		return m, fmt.Errorf("machine %q: %w", line, err)
	}
	// The scheme as written: url.Parse lowers its case, Nix does not.
	if scheme, _, _ := strings.Cut(m.URI, "://"); scheme != "ssh" && scheme != "ssh-ng" {
		return m, fmt.Errorf("machine %q: nixfarm drives static workers over ssh:// and ssh-ng://, not %s://", line, scheme)
	}
	m.Host = u.Host
	if u.User != nil {
		m.Host = u.User.Username() + "@" + u.Host
	}
	if m.Host == "" || strings.HasPrefix(m.Host, "-") {
		return m, fmt.Errorf("machine %q: invalid host", line)
	}
	q := u.Query()
	m.RemoteStore = q.Get("remote-store")
	if u.Scheme == "ssh" {
		m.RemoteProgram = q.Get("remote-program") // ssh-ng's names nix-daemon
	}
	if set(1) {
		m.Systems = strings.Split(f[1], ",")
	}
	if set(2) {
		m.SSHKey = f[2]
	}
	if set(3) {
		n, err := strconv.ParseUint(f[3], 10, 31)
		if err != nil {
			return m, fmt.Errorf("machine %q: max jobs %q is not a whole number", line, f[3])
		}
		m.MaxJobs = int(n)
	}
	if set(4) {
		n, err := strconv.ParseFloat(f[4], 64)
		if err != nil || n < 0 || math.IsNaN(n) || math.IsInf(n, 0) {
			return m, fmt.Errorf("machine %q: speed factor %q is not a finite number of at least 0", line, f[4])
		}
		m.SpeedFactor = max(n, 1) // as Nix: 0 means 1
	}
	if set(5) {
		m.SupportedFeatures = splitSet(f[5])
	}
	if set(6) {
		m.MandatoryFeatures = splitSet(f[6])
	}
	if set(7) {
		if _, err := base64.StdEncoding.DecodeString(f[7]); err != nil {
			return m, fmt.Errorf("machine %q: host key is not base64: %w", line, err)
		}
		m.HostKey = f[7]
	}
	if len(f) > 8 {
		return m, fmt.Errorf("machine %q: %d fields; a machines entry has at most 8", line, len(f))
	}
	return m, nil
}

func splitSet(s string) []string {
	out := strings.Split(s, ",")
	slices.Sort(out)
	return slices.Compact(out)
}
