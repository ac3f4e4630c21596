package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/clientconfig"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// checkNix: 1. Nix is installed, which, and whether a daemon builds.
func (d *doctor) checkNix(ctx context.Context) bool {
	c := Check{ID: "nix", Title: "Nix is installed", ForUser: d.user.Name}
	if d.user != d.self {
		c.AsUser = d.user.Name
	}
	out, stderr, err := d.exec(ctx, d.user, d.envFor(d.user), "nix", "--version")
	if err != nil {
		c.Status, c.Problem = Fail, fmt.Sprintf("`nix --version` failed as %s: %v %s", d.user.Name, err, lastLines(stderr, 2))
		c.Why = "without Nix on PATH nothing builds, locally or remotely"
		c.Fix = "install Nix (https://nixos.org/download), then open a new shell so PATH has it"
		return d.add(c)
	}
	if d.nix, err = clientconfig.ParseVersion(out); err != nil {
		c.Status, c.Problem = Fail, err.Error()
		c.Why = "doctor knows Nix and Lix; this is neither, so nothing below can be trusted"
		c.Fix = "check which `nix` is first on PATH (command -v nix)"
		return d.add(c)
	}
	d.system = clientconfig.DetectSystem("/", runtime.GOOS, os.Getenv)
	nixRemote := os.Getenv("NIX_REMOTE")
	if d.user != d.self {
		nixRemote = ""
		if d.user.UID != 0 && d.system.Daemon {
			nixRemote = "daemon"
		}
	}
	d.daemon = d.system.Daemon && (d.user.UID != 0 || nixRemote == "daemon")
	d.builder = d.user
	if d.daemon {
		root, err := lookupAccount("root")
		if err != nil {
			root = &account{Name: "root", Home: "/root"}
		}
		d.builder = root
		d.proc = findDaemon()
	}
	c.Status = OK
	kind := "single-user: builds, and the ssh that reaches the farm, run as " + d.builder.Name
	if d.daemon {
		kind = "builds go through nix-daemon"
		if d.proc != nil {
			kind += fmt.Sprintf(" (pid %d, running since %s)", d.proc.PID, d.proc.Started.Format("2006-01-02 15:04:05"))
		}
		kind += ", which runs ssh as root: root's key and ssh config are the ones that matter"
	}
	osName := map[string]string{"linux": "Linux", "darwin": "macOS"}[d.system.OS]
	if d.system.NixOS {
		osName = "NixOS"
	} else if d.system.NixDarwin {
		osName = "macOS with nix-darwin"
	}
	c.Detail = fmt.Sprintf("%s on %s; %s", d.nix, osName, kind)
	if strings.HasPrefix(nixRemote, "ssh") {
		c.Detail += fmt.Sprintf("\nNIX_REMOTE=%s: your commands use that store directly (remote-store mode), not builders", nixRemote)
	}
	return d.add(c)
}

// checkDaemonSettings: 2. the settings builds use, as the daemon sees
// them, and whether it has read them since nix.conf last changed.
func (d *doctor) checkDaemonSettings(ctx context.Context) bool {
	c := Check{ID: "settings", Title: "nix-daemon's settings", ForUser: "nix-daemon"}
	var err error
	if !d.daemon {
		c.Title, c.ForUser = "Nix's settings", d.user.Name
		d.daemonCfg, err = d.userConfig(ctx)
	} else {
		env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + d.self.Home, "NIX_USER_CONF_FILES=/nonexistent/nixfarm-doctor"}
		if d.proc != nil && d.proc.Env != nil && d.proc.Env["NIX_CONF_DIR"] != "" {
			env = append(env, "NIX_CONF_DIR="+d.proc.Env["NIX_CONF_DIR"])
		}
		d.daemonCfg, err = d.showConfig(ctx, d.self, env)
	}
	if err != nil {
		c.Status, c.Problem = Fail, err.Error()
		c.Why = "Nix cannot read its own settings, so it cannot build either"
		c.Fix = "fix the error in nix.conf that Nix names above"
		return d.add(c)
	}
	builders := d.daemonCfg.str("builders")
	c.Detail = fmt.Sprintf("builders = %s\nmax-jobs = %s\nbuilders-use-substitutes = %s\nsubstituters = %s",
		orNone(builders), d.daemonCfg.str("max-jobs"), d.daemonCfg.str("builders-use-substitutes"), orNone(d.daemonCfg.str("substituters")))
	confDir := "/etc/nix"
	if d.proc != nil && d.proc.Env != nil && d.proc.Env["NIX_CONF_DIR"] != "" {
		confDir = d.proc.Env["NIX_CONF_DIR"]
	}
	confFile := filepath.Join(confDir, "nix.conf")
	if d.daemon && d.proc != nil {
		// A second's grace: the daemon's start is known to a hundredth of a
		// second, and a set-up tool writes nix.conf and restarts the
		// daemon in the same moment.
		if file, mtime := newestConf(confFile); mtime.After(d.proc.Started.Add(time.Second)) {
			c.Status = Fail
			c.Problem = fmt.Sprintf("%s changed at %s, after nix-daemon (pid %d) started at %s",
				file, mtime.Format("15:04:05"), d.proc.PID, d.proc.Started.Format("15:04:05"))
			c.Why = "nix-daemon reads nix.conf only when it starts: it still builds with the settings it read then, so what was added (builders, for one) is not used yet. The values above are the file's, not the running daemon's."
			c.Fix = d.restartCommand()
			d.machines, _ = worker.ParseMachines(builders, d.daemonCfg.str("system"))
			return d.add(c)
		}
	} else if d.daemon && d.proc == nil {
		c.Detail += "\n(doctor did not find the running nix-daemon, so it cannot tell whether nix.conf changed after it started"
		if !d.root {
			c.Detail += "; sudo nixfarm doctor may"
		}
		c.Detail += ")"
	}
	d.machines, err = worker.ParseMachines(builders, d.daemonCfg.str("system"))
	switch {
	case err != nil:
		c.Status, c.Problem = Fail, fmt.Sprintf("the builders setting cannot be used: %v", err)
		c.Why = "Nix does not build remotely with a builders line it cannot read"
		c.Fix = d.clientConfigFix()
	case len(d.machines) == 0:
		c.Status, c.Problem = Fail, "no builders are configured for "+c.ForUser
		c.Why = "Nix builds everything on this machine, or, with max-jobs = 0, fails with \"unable to start any build; either increase '--max-jobs' or enable remote builds\""
		c.Fix = d.clientConfigFix() + " (it writes the builders line and the build user's ssh set-up" + map[bool]string{true: ", and restarts nix-daemon)", false: ")"}[d.daemon]
	case !d.daemonCfg.boolean("builders-use-substitutes"):
		c.Status, c.Problem = Warn, "builders-use-substitutes is false"
		c.Why = "every input the farm could fetch from a binary cache itself is uploaded from this machine instead"
		c.Fix = "add `builders-use-substitutes = true` to " + confFile + d.restartHint()
	default:
		c.Status = OK
	}
	return d.add(c)
}

// newestConf is the most recently changed of nix.conf and the files it
// includes (include and !include lines, relative to its directory), and
// when that was.
func newestConf(conf string) (string, time.Time) {
	files := []string{conf}
	if data, err := os.ReadFile(conf); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && (f[0] == "include" || f[0] == "!include") {
				p := f[1]
				if !filepath.IsAbs(p) {
					p = filepath.Join(filepath.Dir(conf), p)
				}
				files = append(files, p)
			}
		}
	}
	var newest string
	var at time.Time
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && fi.ModTime().After(at) {
			newest, at = f, fi.ModTime()
		}
	}
	return newest, at
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func (d *doctor) restartHint() string {
	if d.daemon {
		return ", then " + d.restartCommand()
	}
	return ""
}

func (d *doctor) farmArg() string {
	if d.opts.Farm != "" {
		return d.opts.Farm
	}
	if d.target != nil {
		return net.JoinHostPort(d.target.host, d.target.port)
	}
	return "HOST[:PORT]"
}

func (d *doctor) clientConfigFix() string {
	sudo := ""
	if d.daemon {
		sudo = "sudo "
	}
	return fmt.Sprintf("%snixfarm client-config --farm %s --apply", sudo, d.farmArg())
}

// userConfig is the user's own view of Nix's settings: nix.conf, their
// user nix.conf, NIX_CONFIG, and any --builders they pass.
func (d *doctor) userConfig(ctx context.Context) (nixConfig, error) {
	var extra []string
	if d.opts.Builders != "" {
		extra = []string{"--builders", d.opts.Builders}
	}
	return d.showConfig(ctx, d.user, d.envFor(d.user), extra...)
}

// checkTrust: 3. whether the user's own builders setting (or other
// restricted settings) would be ignored by the daemon.
func (d *doctor) checkTrust(ctx context.Context) {
	if !d.daemon {
		d.pickTarget(ctx, d.machines)
		return
	}
	c := Check{ID: "trust", Title: "Settings you pass reach the daemon", AsUser: d.user.Name, ForUser: d.user.Name}
	if d.user != d.self {
		c.AsUser = d.user.Name
	}
	d.trusted = isTrusted(d.daemonCfg.list("trusted-users"), d.user)
	cfg, err := d.userConfig(ctx)
	if err != nil {
		c.Status, c.Problem, c.Why = Fail, err.Error(), "Nix cannot read the settings your commands use"
		c.Fix = "fix the error Nix names (NIX_CONFIG, ~/.config/nix/nix.conf or --builders)"
		d.add(c)
		d.pickTarget(ctx, d.machines)
		return
	}
	d.userCfg = cfg
	mine, theirs := cfg.str("builders"), d.daemonCfg.str("builders")
	trust := "not a trusted user"
	if d.trusted {
		trust = "a trusted user"
	}
	machines := d.machines
	// Other restricted settings the user sets differently, which an
	// untrusted user's daemon ignores just as silently.
	var ignored []string
	for _, k := range []string{"builders-use-substitutes", "substituters", "trusted-public-keys"} {
		if cfg.str(k) != d.daemonCfg.str(k) && !(k == "substituters" && subset(cfg.list(k), d.daemonCfg.list("trusted-substituters"))) {
			ignored = append(ignored, fmt.Sprintf("%s = %s (the daemon has %s)", k, orNone(cfg.str(k)), orNone(d.daemonCfg.str(k))))
		}
	}
	switch {
	case mine == theirs && !d.trusted && len(ignored) > 0:
		c.Status = Warn
		c.Problem = fmt.Sprintf("%s is not a trusted user, so nix-daemon ignores these settings of yours: %s", d.user.Name, strings.Join(ignored, "; "))
		c.Why = "your builds run with the daemon's values instead"
		c.Fix = "set them in the daemon's nix.conf (" + d.restartCommand() + " after), or drop them from yours"
	case mine == theirs:
		c.Status = OK
		c.Detail = fmt.Sprintf("%s is %s; your builders setting is the daemon's", d.user.Name, trust)
	case d.trusted:
		c.Status = OK
		c.Detail = fmt.Sprintf("%s is %s: your builders (%s) replace the daemon's", d.user.Name, trust, orNone(mine))
		if ms, err := worker.ParseMachines(mine, d.daemonCfg.str("system")); err == nil {
			machines = ms
		}
	default:
		if len(machines) == 0 {
			// Check the farm the user meant, even though the daemon
			// will not use it.
			if ms, err := worker.ParseMachines(mine, d.daemonCfg.str("system")); err == nil {
				machines = ms
			}
		}
		c.Status = Fail
		c.Problem = fmt.Sprintf("your builders setting (%s, from %s) differs from nix-daemon's (%s), and %s is not a trusted user",
			orNone(mine), d.builderSources(), orNone(theirs), d.user.Name)
		if len(ignored) > 0 {
			c.Problem += "; ignored too: " + strings.Join(ignored, "; ")
		}
		c.Why = "nix-daemon ignores builders, and every other restricted setting, from users it does not trust (older Nix says nothing; newer Nix prints \"ignoring the client-specified setting 'builders'\"): your builds use the daemon's builders"
		c.Fix = fmt.Sprintf("put the builders line in the daemon's nix.conf instead: %s; or make %s a trusted user (trusted-users = root %s in /etc/nix/nix.conf, then %s), which gives %s root's power over the store",
			d.clientConfigFix(), d.user.Name, d.user.Name, d.restartCommand(), d.user.Name)
	}
	d.add(c)
	d.pickTarget(ctx, machines)
}

// builderSources names where the user's builders setting comes from.
func (d *doctor) builderSources() string {
	var src []string
	if d.opts.Builders != "" {
		src = append(src, "--builders")
	}
	if d.user == d.self && strings.Contains(os.Getenv("NIX_CONFIG"), "builders") {
		src = append(src, "NIX_CONFIG")
	}
	for _, f := range []string{filepath.Join(d.user.Home, ".config/nix/nix.conf")} {
		if data, err := os.ReadFile(f); err == nil && strings.Contains(string(data), "builders") {
			src = append(src, f)
		}
	}
	if len(src) == 0 {
		return "your environment"
	}
	return strings.Join(src, ", ")
}

// isTrusted applies trusted-users: names, @groups and *.
func isTrusted(list []string, a *account) bool {
	if a.UID == 0 {
		return true
	}
	for _, t := range list {
		switch {
		case t == "*", t == a.Name:
			return true
		case strings.HasPrefix(t, "@") && slices.Contains(a.Groups, t[1:]):
			return true
		}
	}
	return false
}

// target is the builder entry for the farm, as ssh resolves it.
type target struct {
	machine *worker.Machine // nil: the farm is on no builders line
	alias   string          // what ssh is given
	host    string          // where it connects
	port    string
	sshOpt  map[string][]string // ssh -G, as the build user
	// unsure: ssh -G ran as doctor's user, not the build user, and did
	// not resolve the alias; where it leads is unknown.
	unsure bool
}

func (t *target) describe() string {
	uri := "ssh-ng://" + t.alias
	if t.machine != nil {
		uri = t.machine.URI
	}
	return fmt.Sprintf("%s (%s)", uri, net.JoinHostPort(t.host, t.port))
}

// pickTarget chooses the builder entry doctor checks: the one that
// reaches --farm, or the first ssh or ssh-ng one.
func (d *doctor) pickTarget(ctx context.Context, machines []worker.Machine) {
	var farmHost, farmPort string
	if d.opts.Farm != "" {
		farmHost, farmPort = splitHostPort(d.opts.Farm)
	}
	for i := range machines {
		m := &machines[i]
		t := d.resolve(ctx, m.Host, "")
		t.machine = m
		if d.opts.Farm == "" || (t.host == farmHost && t.port == farmPort) || hostOnly(m.Host) == farmHost {
			d.target = t
			return
		}
	}
	if d.opts.Farm == "" {
		return
	}
	d.target = d.resolve(ctx, farmHost, farmPort)
	if len(machines) > 0 {
		d.add(Check{ID: "farm", Title: "The farm is a builder", ForUser: d.builder.Name, Status: Fail,
			Problem: fmt.Sprintf("no builder reaches %s: the builders are %s", d.opts.Farm, describeMachines(machines)),
			Why:     "Nix sends builds only to the machines on the builders line",
			Fix:     d.clientConfigFix()})
	}
}

func describeMachines(ms []worker.Machine) string {
	var out []string
	for _, m := range ms {
		out = append(out, m.URI)
	}
	return strings.Join(out, ", ")
}

func hostOnly(h string) string {
	if i := strings.LastIndexByte(h, '@'); i >= 0 {
		return h[i+1:]
	}
	return h
}

func splitHostPort(s string) (string, string) {
	if h, p, err := net.SplitHostPort(s); err == nil {
		return h, p
	}
	return strings.Trim(s, "[]"), "22"
}

// resolve runs `ssh -G` as the build user to learn where alias leads.
func (d *doctor) resolve(ctx context.Context, alias, port string) *target {
	t := &target{alias: alias, host: hostOnly(alias), port: port}
	if t.port == "" {
		t.port = "22"
	}
	a := d.builder
	if a == nil || !d.canActAs(a) {
		a = d.self
	}
	args := []string{"-G"}
	if port != "" {
		args = append(args, "-p", port)
	}
	out, _, err := d.exec(ctx, a, d.envFor(a), "ssh", append(args, alias)...)
	if err != nil {
		return t
	}
	t.sshOpt = parseSSHG(out)
	if v := t.sshOpt["hostname"]; len(v) > 0 {
		t.host = v[0]
	}
	t.unsure = a != d.builder && t.host == hostOnly(alias) && port == ""
	if v := t.sshOpt["port"]; len(v) > 0 {
		t.port = v[0]
	}
	return t
}

// parseSSHG reads `ssh -G` output: one "keyword value..." per line.
func parseSSHG(out string) map[string][]string {
	opts := map[string][]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		k := strings.ToLower(f[0])
		opts[k] = append(opts[k], f[1:]...)
	}
	return opts
}

// expandHome expands ~ and %d in an ssh path for a.
func expandHome(p string, a *account) string {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		return filepath.Join(a.Home, rest)
	}
	return strings.ReplaceAll(p, "%d", a.Home)
}

// checkReach: the farm's address answers as an SSH server; its host key.
func (d *doctor) checkReach(ctx context.Context) bool {
	addr := net.JoinHostPort(d.target.host, d.target.port)
	c := Check{ID: "reach", Title: "The farm answers at " + addr, ForUser: d.builder.Name}
	if d.target.unsure {
		c.Title = "The farm answers"
		c.Status = Skip
		c.Detail = fmt.Sprintf("where %s leads is in %s's ssh config, which doctor, running as %s, cannot read: run sudo nixfarm doctor, or nixfarm doctor --farm HOST:PORT", d.target.alias, d.builder.Name, d.self.Name)
		return d.add(c)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := d.opts.Now()
	key, err := clientconfig.FetchHostKey(ctx, addr)
	c.Millis = max(1, d.opts.Now().Sub(start).Milliseconds())
	if err == nil {
		d.hostKey = clientconfig.HostKeyLine(key)
		c.Status = OK
		c.Detail = fmt.Sprintf("an SSH server with host key %s %s (the farm's operator sees its fingerprint in nixfarm serve's first lines)", key.Type(), ssh.FingerprintSHA256(key))
		return d.add(c)
	}
	c.Status = Fail
	var dnsErr *net.DNSError
	var opErr *net.OpError
	switch {
	case errors.As(err, &dnsErr):
		c.Problem = fmt.Sprintf("the name %s does not resolve", d.target.host)
		c.Why = "ssh cannot find the farm"
		c.Fix = "correct HostName in the build user's ssh config (or the builders line), or add the name to DNS or /etc/hosts"
	case errors.As(err, &opErr) && opErr.Op == "dial" && strings.Contains(err.Error(), "refused"):
		c.Problem = fmt.Sprintf("nothing listens at %s: the connection was refused", addr)
		c.Why = "the farm is not running there, or the port is wrong; Nix reports it as \"cannot connect\" or \"unexpected end-of-file\""
		c.Fix = fmt.Sprintf("start the farm (nixfarm serve --ssh-listen :%s) or correct the Port/HostName in the build user's ssh config", d.target.port)
	case isTimeout(err):
		c.Problem = fmt.Sprintf("%s did not answer as an SSH server within 10 s", addr)
		if opErr != nil && opErr.Op == "dial" {
			c.Problem = fmt.Sprintf("connecting to %s timed out", addr)
		}
		c.Why = "a port that accepts but never answers leaves every build waiting on it; Nix hangs, then fails with \"unexpected end-of-file\""
		c.Fix = fmt.Sprintf("check that %s is the farm's SSH port (nixfarm serve --ssh-listen) and not another service, and that no firewall or proxy holds the connection", addr)
	default:
		c.Problem = err.Error()
		c.Why = "ssh cannot reach the farm"
		c.Fix = fmt.Sprintf("check that %s is the farm's SSH port (nixfarm serve --ssh-listen)", addr)
	}
	return d.add(c)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
