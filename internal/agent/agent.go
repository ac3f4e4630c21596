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

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/credentials"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// SSH channel types of the protocol.
const (
	controlChannel = "nixfarm-control@nixfarm"
	buildChannel   = "nixfarm-serve@nixfarm"
)

// message is one line on the control channel.
type message struct {
	Type string `json:"type"` // register, welcome, heartbeat, error

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
