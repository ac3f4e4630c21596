package clientconfig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/scheduler"
)

var hostRE = regexp.MustCompile(`^[A-Za-z0-9._:-]+$`)

// ValidFarm checks a farm address, HOST[:PORT], given on the command
// line: it goes into ssh config and commands, so only a plain host name or
// address and a port number are accepted.
func ValidFarm(farm string) error {
	if farm == "" {
		return errors.New("--farm HOST[:PORT] is required")
	}
	host, port := farm, "22"
	if h, p, err := net.SplitHostPort(farm); err == nil {
		host, port = h, p
	}
	if !hostRE.MatchString(host) || strings.HasPrefix(host, "-") {
		return fmt.Errorf("--farm %q: not a host name or address", farm)
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return fmt.Errorf("--farm %q: port %q is not a port number", farm, port)
	}
	return nil
}

// Options are what `nixfarm client-config` was asked to do.
type Options struct {
	Farm      string // HOST[:PORT]
	Alias     string // the ssh Host alias of the builders line
	Account   string // the account, for the operator's command ("" = NAME)
	KeyFile   string // the key to use ("" = find or make one)
	Scheme    string // ssh-ng or ssh
	HostKeyFP string // the host key's expected fingerprint ("" = shown, trusted)
	MaxJobs   int    // 0 = the slots of each kind of worker
	Apply     bool   // write the files, rather than print them
	Root      string // the client's "/" ("/" = this machine)
}

// Configure sets up (or, without Apply, prints how to set up) this
// machine's Nix to build through the farm: it detects the client, fetches
// and shows the host key, finds or makes the build user's key, asks the
// farm for its workers with it, and writes the builders line, the ssh
// block and known_hosts (or prints a NixOS / nix-darwin snippet), then
// restarts nix-daemon. What it does is told to out.
func Configure(ctx context.Context, opts Options, out io.Writer) error {
	cc := &clientConfig{farm: opts.Farm, alias: opts.Alias, account: opts.Account, keyFile: opts.KeyFile, scheme: opts.Scheme,
		hostKeyFP: opts.HostKeyFP, maxJobs: opts.MaxJobs, apply: opts.Apply, root: opts.Root, out: out}
	if cc.root == "" {
		cc.root = "/"
	}
	return cc.run(ctx)
}

// clientConfig is one run of Configure.
type clientConfig struct {
	farm, alias, account, keyFile, scheme string
	hostKeyFP                             string
	maxJobs                               int
	apply                                 bool
	root                                  string
	out                                   io.Writer

	sys       System
	nix       string
	buildUser *user.User
	home      string // the build user's home, as the client sees it
	owner     *Owner
}

func (cc *clientConfig) say(format string, a ...any) { fmt.Fprintf(cc.out, format+"\n", a...) }

// real is where p, as the client sees it, is here: links are followed
// under --root, never out of it.
func (cc *clientConfig) real(p string) string {
	r, err := RealPath(cc.root, p)
	if err != nil {
		return filepath.Join(cc.root, "/nonexistent", p) // refused: as if missing
	}
	return r
}

func (cc *clientConfig) run(ctx context.Context) error {
	host, port := cc.farm, "22"
	if h, p, err := net.SplitHostPort(cc.farm); err == nil {
		host, port = h, p
	}
	addr := net.JoinHostPort(host, port)

	// 1. This client.
	cc.sys = DetectSystem(cc.root, runtime.GOOS, os.Getenv)
	if cc.root != "/" {
		cc.nix = "Nix (under " + cc.root + ")"
	} else if out, err := exec.Command("nix", "--version").Output(); err == nil {
		if impl, err := ParseVersion(string(out)); err == nil {
			cc.nix = impl.String()
		}
	}
	if cc.nix == "" {
		cc.nix = "Nix (not found on PATH: install it before building)"
	}
	me, err := user.Current()
	if err != nil {
		return err
	}
	cc.buildUser, cc.home = me, me.HomeDir
	if cc.sys.Daemon {
		cc.buildUser = &user.User{Username: "root", Uid: "0", Gid: "0", HomeDir: "/root"}
		cc.home = "/root"
		if cc.sys.OS == "darwin" {
			cc.home = "/var/root"
		}
	} else if me.Uid != "0" {
		uid, _ := strconv.Atoi(me.Uid)
		gid, _ := strconv.Atoi(me.Gid)
		cc.owner = &Owner{UID: uid, GID: gid}
	}
	mode := "single-user: builds run as " + cc.buildUser.Username
	if cc.sys.Daemon {
		mode = "multi-user: nix-daemon builds, and runs ssh as root"
	}
	cc.say("This client: %s on %s; %s.", cc.nix, cc.osName(), mode)
	if cc.apply && cc.root == "/" && cc.sys.Daemon && os.Geteuid() != 0 {
		return errors.New("--apply writes root's files (nix-daemon runs ssh as root): run it with sudo")
	}

	// 2. The farm's host key.
	hk, err := FetchHostKey(ctx, addr)
	if err != nil {
		return fmt.Errorf("%w\nIs the farm running there? `nixfarm doctor --farm %s` explains more", err, cc.farm)
	}
	if cc.hostKeyFP != "" {
		if got := ssh.FingerprintSHA256(hk); got != cc.hostKeyFP {
			return fmt.Errorf("the farm at %s presents host key %s, not %s (--host-key): refusing it; a man in the middle, or a key that changed (ask the farm's operator)", addr, got, cc.hostKeyFP)
		}
		cc.say("The farm at %s has host key %s %s, as --host-key says.", addr, hk.Type(), ssh.FingerprintSHA256(hk))
	} else {
		cc.say("The farm at %s has host key %s %s.\n  Compare it with the fingerprint the farm's operator sees (nixfarm serve prints it when it starts), or pass it as --host-key.", addr, hk.Type(), ssh.FingerprintSHA256(hk))
	}

	// 3. The build user's key.
	key, signer, made, err := cc.key()
	if err != nil {
		return err
	}

	// 4. What the farm offers, if it knows the key already.
	client := Client{Alias: cc.alias, Host: host, Port: port, KeyFile: key, Scheme: cc.scheme,
		HostKey: HostKeyLine(hk), MaxJobs: cc.maxJobs}
	var pool Pool
	authorized := false
	if signer != nil {
		ans, err := AskFarm(ctx, addr, hk, signer, "nixfarm workers --json")
		switch {
		case err == nil:
			var list struct {
				Workers []scheduler.WorkerInfo `json:"workers"`
			}
			if err := json.Unmarshal(ans.Stdout, &list); err != nil {
				return fmt.Errorf("reading the farm's workers: %w", err)
			}
			pool = PoolOf(list.Workers)
			authorized = true
		case errors.Is(err, ErrNotAuthorized):
		default:
			return err
		}
	}
	pub := ""
	if signer != nil {
		pub = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	} else if made != "" {
		pub = made
	}
	name := cc.account
	if name == "" {
		name = "NAME"
	}
	if authorized {
		cc.say("The farm accepts the key %s: %d worker(s), systems %s, features %s, %d slots (%d free now).",
			key, pool.Workers, strings.Join(pool.Systems, ","), dashed(pool.Features), pool.Slots, pool.Free)
		if len(pool.Systems) == 0 {
			return errors.New("the farm has no workers that take builds yet: ask its operator to start one, then run client-config again")
		}
	} else {
		local := localSystem()
		pool = Pool{Systems: []string{local}, Slots: 1}
		how := fmt.Sprintf("echo '%s' | nixfarm keys add --account %s -", pub, name)
		if pub == "" {
			how = fmt.Sprintf("nixfarm keys add --account %s FILE    (FILE: a copy of %s.pub, once made)", name, key)
		}
		cc.say("\nThe farm does not know the key %s yet. The farm's operator adds it to your account%s, on the farm's host:\n\n  %s\n\nUntil then this set-up assumes the farm builds %s, one job at a time: run client-config again once the key is added, to take the farm's real systems, features and slots.",
			key, accountNote(cc.account), how, local)
	}
	if client.MaxJobs <= 0 {
		client.MaxJobs = max(1, pool.Slots)
	}

	// 5. The files.
	if cc.sys.NixOS || cc.sys.NixDarwin {
		snippet, file, rebuild := NixOSSnippet(client, pool), "configuration.nix", "sudo nixos-rebuild switch"
		if cc.sys.NixDarwin {
			snippet, file, rebuild = DarwinSnippet(client, pool), "darwin-configuration.nix (or your flake's darwin module)", "darwin-rebuild switch"
		}
		cc.say("\nThis system's /etc/nix is generated from its configuration: add this to %s, then run %s.\n\n%s", file, rebuild, snippet)
		return nil
	}
	return cc.files(client, pool, authorized)
}

func accountNote(acct string) string {
	if acct == "" {
		return " (NAME: your account)"
	}
	return ""
}

func dashed(xs []string) string {
	if len(xs) == 0 {
		return "(none)"
	}
	return strings.Join(xs, ",")
}

func (cc *clientConfig) osName() string {
	switch {
	case cc.sys.NixOS:
		return "NixOS"
	case cc.sys.NixDarwin:
		return "macOS with nix-darwin"
	case cc.sys.OS == "darwin":
		return "macOS (launchd)"
	case exists(cc.real("/run/systemd/system")):
		return "Linux (systemd)"
	}
	return "Linux"
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// localSystem is this machine's Nix system name.
func localSystem() string {
	if out, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "eval", "--raw", "--impure", "--expr", "builtins.currentSystem").Output(); err == nil && len(out) > 0 {
		return strings.TrimSpace(string(out))
	}
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "386": "i686"}[runtime.GOARCH]
	if arch == "" {
		arch = runtime.GOARCH
	}
	return arch + "-" + runtime.GOOS
}

// key finds the build user's usable key, or makes one (with --apply).
// It returns the key's path as the client sees it, its signer if it
// exists now, and the public line of a key it would make.
func (cc *clientConfig) key() (string, ssh.Signer, string, error) {
	candidates := []string{cc.keyFile}
	if cc.keyFile == "" {
		candidates = nil
		for _, n := range []string{"nixfarm_ed25519", "id_ed25519", "id_ecdsa", "id_rsa"} {
			candidates = append(candidates, filepath.Join(cc.home, ".ssh", n))
		}
	}
	var refused []string
	for _, p := range candidates {
		state, err := CheckKey(cc.real(p))
		switch state {
		case KeyUsable:
			data, _ := os.ReadFile(cc.real(p))
			signer, err := ssh.ParsePrivateKey(data)
			if err != nil {
				return "", nil, "", fmt.Errorf("reading %s: %w", p, err)
			}
			cc.say("The key: %s (%s), no passphrase.", p, ssh.FingerprintSHA256(signer.PublicKey()))
			return p, signer, "", nil
		case KeyPassphrase:
			refused = append(refused, p+" has a passphrase, which nix-daemon cannot type")
		case KeyUnreadable:
			if errors.Is(err, fs.ErrPermission) {
				return "", nil, "", fmt.Errorf("cannot read %s as %s: run client-config with sudo (nix-daemon runs ssh as %s, so its key and files are the ones to set up)",
					p, currentUser(), cc.buildUser.Username)
			}
			refused = append(refused, fmt.Sprintf("%s cannot be used (%v)", p, err))
		}
	}
	if cc.keyFile != "" && len(refused) > 0 {
		return "", nil, "", fmt.Errorf("--key: %s", refused[0])
	}
	newKey := cc.keyFile
	if newKey == "" {
		newKey = filepath.Join(cc.home, ".ssh", "nixfarm_ed25519")
	}
	why := "has no SSH key"
	if len(refused) > 0 {
		why = "has no usable SSH key (" + strings.Join(refused, "; ") + ")"
	}
	if !cc.apply {
		cc.say("%s %s: make one without a passphrase:\n  %sssh-keygen -t ed25519 -N '' -C nixfarm -f %s\n(--apply does it.)", cc.buildUser.Username, why, sudo(cc.sys.Daemon), newKey)
		return newKey, nil, "", nil
	}
	pub, err := GenerateKey(cc.real(newKey), "nixfarm@"+hostname(), cc.owner)
	if err != nil {
		return "", nil, "", fmt.Errorf("making a key: %w", err)
	}
	cc.say("%s %s: made %s (%s), with no passphrase.", cc.buildUser.Username, why, newKey, ssh.FingerprintSHA256(pub))
	data, err := os.ReadFile(cc.real(newKey))
	if err != nil {
		return "", nil, "", err
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return "", nil, "", err
	}
	return newKey, signer, "", nil
}

func currentUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "this user"
}

func sudo(daemon bool) string {
	if daemon && os.Geteuid() != 0 {
		return "sudo "
	}
	return ""
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "client"
	}
	return h
}

// files prints or writes nix.conf, the ssh config and known_hosts.
func (cc *clientConfig) files(c Client, pool Pool, authorized bool) error {
	nixConf := "/etc/nix/nix.conf"
	if !cc.sys.Daemon {
		nixConf = filepath.Join(cc.home, ".config/nix/nix.conf")
	}
	sshDir := filepath.Join(cc.home, ".ssh")
	nixBlock := "builders = " + MachinesLine(c, pool) + "\nbuilders-use-substitutes = true\n"
	sshBlock := SSHConfigBlock(c)
	hk, err := ParseHostKeyLine(c.HostKey)
	if err != nil {
		return err
	}
	known := c.Alias + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hk)))
	// nix.conf last: if anything before it fails, no builders line names
	// an alias the ssh config does not have yet.
	edits := []Edit{
		{Path: filepath.Join(sshDir, "known_hosts"), Mode: 0o600, Owner: cc.owner, Change: func(old []byte) ([]byte, error) { return WithLine(old, known), nil }},
		{Path: filepath.Join(sshDir, "config"), Mode: 0o600, Owner: cc.owner, Change: func(old []byte) ([]byte, error) { return WithBlock(old, sshBlock, true) }},
		{Path: nixConf, Mode: 0o644, Owner: cc.owner, Change: func(old []byte) ([]byte, error) { return WithBlock(old, nixBlock, false) }},
	}
	if !cc.apply {
		cc.say("\nAdd to %s:\n\n%s\nAdd to %s (at the top):\n\n%s\nAdd to %s:\n\n%s\n", nixConf, indent(nixBlock), filepath.Join(sshDir, "config"), indent(sshBlock), filepath.Join(sshDir, "known_hosts"), indent(known+"\n"))
		if cc.sys.Daemon {
			cc.say("Then restart nix-daemon: %s.", restartCommand(cc.sys))
		}
		cc.say("Or let nixfarm do all of it: %snixfarm client-config --farm %s --apply; then check with nixfarm doctor.", sudo(cc.sys.Daemon), cc.farm)
		return nil
	}
	results, err := Apply(cc.root, edits, time.Now())
	changed := false
	for _, r := range results {
		switch {
		case r.Created:
			cc.say("wrote %s (new)", r.Path)
		case r.Changed:
			cc.say("updated %s (the old one is in %s)", r.Path, r.Backup)
		default:
			cc.say("%s is already right", r.Path)
		}
		if r.Path == nixConf && (r.Changed || r.Created) {
			changed = true
		}
	}
	if err != nil {
		if errors.Is(err, ErrManagedByNix) {
			return fmt.Errorf("%w (the NixOS or nix-darwin snippet: run client-config without --apply)", err)
		}
		return err
	}
	switch {
	case !cc.sys.Daemon:
		cc.say("Single-user Nix reads the files at each command: nothing to restart.")
	case !changed:
		cc.say("nix.conf did not change: nix-daemon needs no restart.")
	case cc.root != "/":
		cc.say("Not restarting anything under --root %s; on that system: %s.", cc.root, restartCommand(cc.sys))
	default:
		cc.restartDaemon()
	}
	if !authorized {
		cc.say("\nBuilds will work once the farm's operator has added the key (see above). Then: nixfarm doctor")
	} else {
		cc.say("\nDone. Check it end to end with: nixfarm doctor")
	}
	return nil
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}

func restartCommand(sys System) string {
	if sys.OS == "darwin" {
		return "sudo launchctl kickstart -k system/org.nixos.nix-daemon"
	}
	if exists("/run/systemd/system") {
		return "sudo systemctl restart nix-daemon"
	}
	return "stop nix-daemon and start it again the way this machine starts it"
}

// restartDaemon restarts nix-daemon the way this system runs it.
func (cc *clientConfig) restartDaemon() {
	var cmd *exec.Cmd
	switch {
	case cc.sys.OS == "darwin":
		cmd = exec.Command("launchctl", "kickstart", "-k", "system/org.nixos.nix-daemon")
	case exists("/run/systemd/system"):
		cmd = exec.Command("systemctl", "restart", "nix-daemon")
	default:
		cc.say("nix.conf changed: restart nix-daemon now (no systemd or launchd here, so nixfarm cannot): it reads nix.conf only when it starts.")
		return
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		cc.say("Restarting nix-daemon (%s) failed: %v %s\nRestart it yourself: it reads nix.conf only when it starts.", strings.Join(cmd.Args, " "), err, strings.TrimSpace(string(out)))
		return
	}
	cc.say("Restarted nix-daemon (%s).", strings.Join(cmd.Args, " "))
}
