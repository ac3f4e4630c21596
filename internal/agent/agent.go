// Package agent is the protocol between the coordinator and the
// `nixfarm worker` agents that dial in to it, both ends.
//
// An agent connects out to the coordinator over SSH (so it works behind
// NAT), authenticates with its own credential (package credentials) as its
// password and its name as its user, and opens a control channel on which it registers its
// capabilities and sends heartbeats. For each build the coordinator opens
// a channel back to the agent, on which the agent runs
// `nix-store --serve --write` against its own Nix store; the coordinator
// drives it with the same serve-protocol executor it uses for every other
// worker, so inputs go over only if the worker lacks them, logs stream
// live, and outputs come back verified. The coordinator can run nothing
// else on the agent. A name is held by one worker at a time: an agent
// logging in under the name of a connected agent, the built-in worker or
// a static machine is refused, never put in its place.
package agent

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/credentials"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/usage"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// SSH channel types of the protocol.
const (
	controlChannel = "nixfarm-control@nixfarm"
	buildChannel   = "nixfarm-serve@nixfarm"
)

// message is one line on the control channel.
type message struct {
	// register, welcome, heartbeat, goodbye, error. An agent that stops
	// on purpose (SIGTERM, Ctrl-C) says goodbye before it hangs up, so
	// the coordinator does not count it lost unless builds were running
	// on it; coordinators that predate goodbye ignore it.
	Type string `json:"type"`

	// register
	Name         string               `json:"name,omitempty"`
	Version      string               `json:"version,omitempty"`
	Capabilities *worker.Capabilities `json:"capabilities,omitempty"`

	// welcome
	HeartbeatMillis int64 `json:"heartbeatMillis,omitempty"`

	// heartbeat
	Load *scheduler.Load `json:"load,omitempty"`

	// error
	Message string `json:"message,omitempty"`
}

func encode(m message) []byte {
	b, _ := json.Marshal(m)
	return append(b, '\n')
}

// buildOptions travel with each build channel.
type buildOptions struct {
	Cores int `json:"cores,omitempty"`
}

// usageRequest is the request an agent sends on a build channel just
// before its exit status, when it measured its nix-store session (package
// usage): the CPU time and peak memory of the session's process tree, the
// builder included. It is optional both ways: a coordinator that does not
// know it ignores it, and without it the build's usage is unknown.
const usageRequest = "nixfarm-usage@nixfarm"

// usageReport is the payload of a usageRequest.
type usageReport struct {
	CPUNanos   int64 `json:"cpuNanos"`
	PeakMemory int64 `json:"peakMemory"`
}

// maxReported bounds what an agent may report: a year of CPU time, a
// pebibyte of memory. Anything beyond (or negative) is ignored.
const (
	maxReportedCPU    = int64(365 * 24 * time.Hour)
	maxReportedMemory = int64(1) << 50
)

// parseUsage reads a usageRequest's payload.
func parseUsage(payload []byte) (usage.Usage, error) {
	var r usageReport
	if err := json.Unmarshal(payload, &r); err != nil {
		return usage.Usage{}, fmt.Errorf("bad usage report: %w", err)
	}
	if r.CPUNanos < 0 || r.CPUNanos > maxReportedCPU || r.PeakMemory < 0 || r.PeakMemory > maxReportedMemory {
		return usage.Usage{}, fmt.Errorf("usage report out of range: %d ns of CPU, %d bytes of memory", r.CPUNanos, r.PeakMemory)
	}
	return usage.Usage{CPU: time.Duration(r.CPUNanos), PeakMemory: r.PeakMemory, Measured: true}, nil
}

// reportedUsage is the usage.Probe of a build channel: what the agent
// reported, known once the channel has ended. The agent measures its
// whole session (a session serves one build).
type reportedUsage struct {
	mu sync.Mutex
	u  usage.Usage
}

func (r *reportedUsage) set(u usage.Usage) {
	r.mu.Lock()
	r.u = u
	r.mu.Unlock()
}

func (r *reportedUsage) Reset() error { return nil }
func (r *reportedUsage) Close() error { return nil }
func (r *reportedUsage) Sample() (usage.Usage, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.u, nil
}

// ValidName checks a worker name: 1 to 64 letters, digits, '.', '_' or
// '-', and not the built-in worker's.
func ValidName(name string) error { return credentials.ValidName(name) }

// HostKeyCallback checks the coordinator's host key against want, which
// may be an OpenSSH public key line, its base64 (as in machines files) or
// a SHA256 fingerprint. An empty want accepts any key.
func HostKeyCallback(want string) (ssh.HostKeyCallback, error) {
	want = strings.TrimSpace(want)
	if want == "" {
		return ssh.InsecureIgnoreHostKey(), nil
	}
	if strings.HasPrefix(want, "SHA256:") {
		return func(host string, remote net.Addr, key ssh.PublicKey) error {
			if got := ssh.FingerprintSHA256(key); got != want {
				return fmt.Errorf("the coordinator's host key is %s, not the expected %s", got, want)
			}
			return nil
		}, nil
	}
	line := want
	if !strings.Contains(want, " ") {
		decoded, err := base64.StdEncoding.DecodeString(want)
		if err != nil {
			return nil, fmt.Errorf("coordinator host key %q is neither a key line, its base64, nor a SHA256 fingerprint", want)
		}
		line = string(decoded)
	}
	expected, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return nil, fmt.Errorf("coordinator host key: %w", err)
	}
	return ssh.FixedHostKey(expected), nil
}
