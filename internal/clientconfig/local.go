package clientconfig

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Implementation is a Nix implementation and its version.
type Implementation struct {
	Name         string // "Nix" or "Lix"
	Version      string // e.g. "2.8.0"
	Major, Minor int
}

func (i Implementation) String() string { return i.Name + " " + i.Version }

// versionRE matches `nix --version`: "nix (Nix) 2.8.0",
// "nix (Lix, like Nix) 2.91.1", "nix (Nix) 2.34.8pre".
// The rest of the version is what release names use: "2.26.0pre20241201_1a2b3c",
// "2.8.0-dirty"; not control characters, which \S would take.
var versionRE = regexp.MustCompile(`^nix \((Nix|Lix)[^)]*\) (\d+)\.(\d+)([0-9A-Za-z.+~_-]*)`)

// ParseVersion reads the first line of `nix --version`.
func ParseVersion(out string) (Implementation, error) {
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	m := versionRE.FindStringSubmatch(line)
	if m == nil {
		return Implementation{}, fmt.Errorf("unrecognised `nix --version` output %q", line)
	}
	major, _ := strconv.Atoi(m[2])
	minor, _ := strconv.Atoi(m[3])
	return Implementation{Name: m[1], Version: m[2] + "." + m[3] + m[4], Major: major, Minor: minor}, nil
}

// System is the kind of machine a client runs on, which decides how its
// daemon restarts and whether files are edited or a snippet is printed.
type System struct {
	OS        string // "linux" or "darwin"
	NixOS     bool   // /etc/NIXOS exists: configure with nix.buildMachines
	NixDarwin bool   // nix-darwin manages /etc/nix
	// Daemon is true when builds go through nix-daemon (multi-user):
	// then root's ssh key and config matter, not the user's.
	Daemon bool
}

// DetectSystem looks at root (a directory standing for "/", for tests)
// and env (NIX_REMOTE) to tell what kind of client this is.
func DetectSystem(root, goos string, env func(string) string) System {
	exists := func(p string) bool { _, err := os.Stat(filepath.Join(root, p)); return err == nil }
	s := System{OS: goos}
	s.NixOS = exists("etc/NIXOS")
	s.NixDarwin = goos == "darwin" && exists("run/current-system/darwin-version")
	switch env("NIX_REMOTE") {
	case "daemon", "unix:///nix/var/nix/daemon-socket/socket":
		s.Daemon = true
	case "":
		s.Daemon = exists("nix/var/nix/daemon-socket/socket") || exists("etc/systemd/system/nix-daemon.service") ||
			exists("lib/systemd/system/nix-daemon.service") || exists("Library/LaunchDaemons/org.nixos.nix-daemon.plist")
	}
	return s
}

// KeyState is what a private key file is good for.
type KeyState int

const (
	KeyMissing    KeyState = iota // no such file
	KeyUsable                     // parses without a passphrase
	KeyPassphrase                 // needs a passphrase: nix-daemon cannot use it
	KeyUnreadable                 // exists, but cannot be read or parsed
)

// CheckKey reports whether the private key at path can be used without
// anyone typing a passphrase, as a build run by nix-daemon needs.
func CheckKey(path string) (KeyState, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return KeyMissing, nil
	}
	if err != nil {
		return KeyUnreadable, err
	}
	_, err = ssh.ParseRawPrivateKey(data)
	var pp *ssh.PassphraseMissingError
	switch {
	case err == nil:
		return KeyUsable, nil
	case errors.As(err, &pp):
		return KeyPassphrase, nil
	}
	return KeyUnreadable, fmt.Errorf("%s is not a private key ssh can read: %w", path, err)
}
