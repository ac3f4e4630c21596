// Package clientconfig works out what a Nix client needs to build through
// a farm (`nixfarm client-config`): the farm's SSH host key, fetched and
// shown by fingerprint; what its worker pool offers (systems, features,
// free slots); and, from those, the machines line, the ssh config block
// for the user who runs the builds, and NixOS / nix-darwin snippets;
// and writes them: managed blocks, backed up and replaced atomically
// (Apply), and a new key (GenerateKey).
package clientconfig

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// errGotKey ends the handshake once the host key is known: nothing more
// is needed, and no credential is offered.
var errGotKey = errors.New("host key received")

// FetchHostKey connects to the farm's SSH endpoint at addr and returns
// its host key, without authenticating: the key comes in the key
// exchange, before any credential would be offered.
func FetchHostKey(ctx context.Context, addr string) (ssh.PublicKey, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to the farm at %s: %w", addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(20 * time.Second))
	}
	var key ssh.PublicKey
	cfg := &ssh.ClientConfig{
		User: "nixfarm",
		HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
			key = k
			return errGotKey
		},
		// The algorithm the farm's key uses (ed25519) first.
		HostKeyAlgorithms: []string{ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256},
	}
	_, _, _, err = ssh.NewClientConn(conn, addr, cfg)
	if key != nil {
		return key, nil
	}
	if err == nil {
		err = errors.New("no host key offered")
	}
	return nil, fmt.Errorf("reading the farm's host key at %s (is it nixfarm's SSH port?): %w", addr, err)
}

// HostKeyLine is a host key as the machines file's 8th field wants it:
// base64 of its authorized_keys line.
func HostKeyLine(k ssh.PublicKey) string {
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
	return base64.StdEncoding.EncodeToString([]byte(line))
}

// ParseHostKeyLine reads a host key in the form HostKeyLine writes (the
// machines file's 8th field).
func ParseHostKeyLine(b64 string) (ssh.PublicKey, error) {
	data, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	return k, nil
}

// Pool is what a farm's workers offer together.
type Pool struct {
	Systems  []string // every system some worker builds for, sorted
	Features []string // every feature some worker supports, sorted
	// Mandatory are features every worker requires; empty unless all do.
	Mandatory []string
	// Slots is how many builds the workers run at once in all; Free, how
	// many of those are free now.
	Slots, Free int
	Workers     int
	// Groups are the workers by what they offer: one machines line
	// each, so that the client never sends a build a combination that no
	// single worker has (an aarch64 build needing the kvm only an x86_64
	// worker has).
	Groups []Group
	// Refused counts workers left out for names a client cannot write
	// safely (see worker.ValidName).
	Refused int
}

// Group is workers that offer the same systems and features.
type Group struct {
	Systems, Features, Mandatory []string // sorted; Features has no mandatory one
	Slots                        int
}

// PoolOf sums up a worker listing (the farm's /api/v1/workers, or
// `nixfarm workers --json`). Quarantined workers are left out, and so is
// any worker whose systems or features are not plain names: they come
// from the farm, and end up in nix.conf.
func PoolOf(workers []scheduler.WorkerInfo) Pool {
	var p Pool
	systems, features := map[string]bool{}, map[string]bool{}
	var mandatory map[string]bool
	groups := map[string]*Group{}
	for _, w := range workers {
		if w.State == "quarantined" {
			continue
		}
		caps := w.Capabilities
		if !plainNames(caps) {
			p.Refused++
			continue
		}
		p.Workers++
		for _, s := range caps.Systems {
			systems[s] = true
		}
		for _, f := range caps.SupportedFeatures {
			features[f] = true
		}
		m := map[string]bool{}
		for _, f := range caps.MandatoryFeatures {
			features[f] = true
			if mandatory == nil || mandatory[f] {
				m[f] = true
			}
		}
		mandatory = m
		p.Slots += caps.MaxJobs
		p.Free += max(0, caps.MaxJobs-len(w.Running))

		g := Group{Systems: sortedSet(caps.Systems), Mandatory: sortedSet(caps.MandatoryFeatures)}
		g.Features = slices.DeleteFunc(sortedSet(caps.SupportedFeatures), func(f string) bool { return slices.Contains(g.Mandatory, f) })
		key := strings.Join(g.Systems, ",") + " " + strings.Join(g.Features, ",") + " " + strings.Join(g.Mandatory, ",")
		if groups[key] == nil {
			groups[key] = &g
		}
		groups[key].Slots += caps.MaxJobs
	}
	p.Systems = sortedKeys(systems)
	p.Features = sortedKeys(features)
	p.Mandatory = sortedKeys(mandatory)
	for _, key := range sortedKeys(mapKeys(groups)) {
		p.Groups = append(p.Groups, *groups[key])
	}
	return p
}

// plainNames reports whether every system and feature is a name that
// can go into nix.conf as it is.
func plainNames(c worker.Capabilities) bool {
	for _, list := range [][]string{c.Systems, c.SupportedFeatures, c.MandatoryFeatures} {
		for _, n := range list {
			if !worker.ValidName(n) {
				return false
			}
		}
	}
	return len(c.Systems) > 0
}

// groups is the pool's groups, or, for a pool that has none (the farm
// was not asked), one made of the pool's totals.
func (p Pool) groups() []Group {
	if len(p.Groups) > 0 {
		return p.Groups
	}
	features := slices.DeleteFunc(slices.Clone(p.Features), func(f string) bool { return slices.Contains(p.Mandatory, f) })
	return []Group{{Systems: p.Systems, Features: features, Mandatory: p.Mandatory, Slots: p.Slots}}
}

func sortedSet(xs []string) []string {
	out := slices.Clone(xs)
	slices.Sort(out)
	return slices.Compact(out)
}

func mapKeys[V any](m map[string]V) map[string]bool {
	out := make(map[string]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// ErrNotAuthorized is returned by AskFarm when the farm does not accept
// the key; Banner holds what the farm said, which names the fix.
var ErrNotAuthorized = errors.New("the farm does not accept this key")

// FarmAnswer is what AskFarm got.
type FarmAnswer struct {
	Stdout []byte
	Banner string // the farm's banner lines, e.g. why a key was refused
}

// AskFarm runs one nixfarm command (e.g. "nixfarm workers --json") on the
// farm at addr as the holder of signer, accepting only hostKey.
func AskFarm(ctx context.Context, addr string, hostKey ssh.PublicKey, signer ssh.Signer, command string) (*FarmAnswer, error) {
	ans := &FarmAnswer{}
	d := net.Dialer{Timeout: 10 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to the farm at %s: %w", addr, err)
	}
	defer conn.Close()
	deadline := time.Now().Add(30 * time.Second)
	if dl, ok := ctx.Deadline(); ok {
		deadline = dl
	}
	conn.SetDeadline(deadline)
	cfg := &ssh.ClientConfig{
		User:              "nixfarm",
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback:   ssh.FixedHostKey(hostKey),
		HostKeyAlgorithms: []string{hostKey.Type()},
		BannerCallback: func(msg string) error {
			ans.Banner += msg
			return nil
		},
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		switch {
		case strings.Contains(ans.Banner, "is not authorized"):
			return ans, ErrNotAuthorized
		case ans.Banner != "":
			// The farm refused for another reason (a limit, say), and
			// said which: the key itself is fine.
			return ans, fmt.Errorf("the farm at %s refused the login:\n%s", addr, Printable(strings.TrimSpace(ans.Banner)))
		case strings.Contains(err.Error(), "unable to authenticate"):
			return ans, ErrNotAuthorized
		}
		return ans, fmt.Errorf("logging in to the farm at %s: %w", addr, err)
	}
	client := ssh.NewClient(c, chans, reqs)
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return ans, fmt.Errorf("opening a session on the farm: %w", err)
	}
	defer sess.Close()
	var stderr strings.Builder
	sess.Stderr = &stderr
	out, err := sess.Output(command)
	ans.Stdout = out
	if err != nil {
		return ans, fmt.Errorf("the farm ran %q: %w: %s", command, err, strings.TrimSpace(stderr.String()))
	}
	return ans, nil
}

// Printable is s with every control character but newline and tab
// replaced by '?': text a farm sent (banners, worker names, errors) must
// not reach a terminal as escape sequences.
func Printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || (r >= 0x20 && r != 0x7f && (r < 0x80 || r >= 0xa0)) {
			return r
		}
		return '?'
	}, s)
}
