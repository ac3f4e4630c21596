package doctor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// probeExpr is the test build: a derivation with no inputs, new each time
// (the nonce), so it is really built and not found in a store. Its
// builder is /bin/sh, which NixOS's sandbox and nixfarm's workers
// provide.
func probeExpr(system string, nonce int64) string {
	if !systemRE.MatchString(system) {
		// A system name comes from the farm or a builders line: never
		// let one become Nix code.
		system = "invalid-system"
	}
	return fmt.Sprintf(`derivation {
  name = "nixfarm-doctor-probe";
  system = "%s";
  builder = "/bin/sh";
  args = [ "-c" "echo nixfarm-doctor-ok > $out" ];
  nonce = "%d";
}
`, system, nonce)
}

// probeSystem is the system the test build asks for: this machine's, if
// the farm builds it, or else the first the builders line offers.
func (d *doctor) probeSystem() string {
	local := d.daemonCfg.str("system")
	if m := d.target; m != nil && m.machine != nil && len(m.machine.Systems) > 0 && !slices.Contains(m.machine.Systems, local) {
		return m.machine.Systems[0]
	}
	if d.pool != nil && len(d.pool.Systems) > 0 && !slices.Contains(d.pool.Systems, local) {
		return d.pool.Systems[0]
	}
	return local
}

// writeProbe writes the test build's expression where a can read it.
func (d *doctor) writeProbe() (string, func(), error) {
	dir, err := os.MkdirTemp("", "nixfarm-doctor-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	os.Chmod(dir, 0o755)
	file := filepath.Join(dir, "probe.nix")
	if err := os.WriteFile(file, []byte(probeExpr(d.probeSystem(), d.opts.Now().UnixNano())), 0o644); err != nil {
		cleanup()
		return "", nil, err
	}
	return file, cleanup, nil
}

// checkRemoteBuild: 7a. a real build through the remote-builder path, as
// the user who builds, with no local jobs.
func (d *doctor) checkRemoteBuild(ctx context.Context) {
	c := Check{ID: "build-remote", Title: "A test build goes to the farm (nix-build --max-jobs 0)", AsUser: d.user.Name, ForUser: d.user.Name}
	file, cleanup, err := d.writeProbe()
	if err != nil {
		c.Status, c.Problem, c.Why, c.Fix = Fail, err.Error(), "doctor cannot write its test build", "check the temporary directory ($TMPDIR)"
		d.add(c)
		return
	}
	defer cleanup()
	args := []string{file, "--no-out-link", "--max-jobs", "0"}
	if d.opts.Builders != "" {
		args = append(args, "--builders", d.opts.Builders)
	}
	start := d.opts.Now()
	out, stderr, err := d.exec(ctx, d.user, d.envFor(d.user), "nix-build", args...)
	c.Millis = max(1, d.opts.Now().Sub(start).Milliseconds())
	if err != nil {
		c.Status = Fail
		if strings.Contains(stderr, "executing '/bin/sh'") {
			c.Status = Warn // the build did reach a worker
		}
		c.Problem, c.Why, c.Fix = d.diagnose(stderr)
		said := "Nix said:\n" + lastLines(stderr, 8)
		if c.Problem == "" {
			c.Problem = said
			c.Why = "every remote build takes this path"
			c.Fix = "fix the failures above first; if none failed, run the build with -v for more"
		} else {
			c.Problem += "\n" + said
		}
		d.add(c)
		return
	}
	c.Status = OK
	where := "through nix-daemon, whose ssh runs as root"
	if !d.daemon {
		where = "as " + d.user.Name
	}
	c.Detail = fmt.Sprintf("built %s on the farm, %s", strings.TrimSpace(out), where)
	d.add(c)
}

// checkStoreBuild: 7b. a build in remote-store mode (nix build --store
// ssh-ng://farm), which runs ssh as the user, not root.
func (d *doctor) checkStoreBuild(ctx context.Context) {
	c := Check{ID: "build-store", Title: "A test build in remote-store mode (nix build --store ssh-ng://...)", ForUser: d.user.Name}
	if d.target == nil {
		return
	}
	if d.target.machine == nil && d.target.port != "22" {
		c.Status, c.AsUser = Skip, d.user.Name
		c.Detail = fmt.Sprintf("a store URI cannot name port %s: remote-store mode needs an ssh Host alias for the farm (nixfarm client-config writes one)", d.target.port)
		d.add(c)
		return
	}
	as := d.user
	note := ""
	if d.user != d.builder && d.canActAs(d.builder) {
		// The user's own ssh must reach the farm; if it does not know
		// the alias or has no key, check the farm as a store as root.
		t := d.resolve(ctx, d.target.alias, "")
		if len(userKeys(d.user)) == 0 || (t.host == hostOnly(d.target.alias) && t.host != d.target.host) {
			as = d.builder
			note = fmt.Sprintf("%s has no ssh set-up for %s (a key and a Host block), so this ran as %s: remote-store mode as %s needs them in %s's own ~/.ssh",
				d.user.Name, d.target.alias, as.Name, d.user.Name, d.user.Name)
		}
	}
	c.AsUser = as.Name
	if !d.canActAs(as) {
		c.Status, c.Detail = Skip, "doctor cannot run it as "+as.Name
		d.add(c)
		return
	}
	file, cleanup, err := d.writeProbe()
	if err != nil {
		c.Status, c.Problem = Warn, err.Error()
		d.add(c)
		return
	}
	defer cleanup()
	uri := "ssh-ng://" + d.target.alias
	if m := d.target.machine; m != nil && as == d.builder {
		uri = strings.Replace(m.URI, "ssh://", "ssh-ng://", 1)
		var q []string
		if m.SSHKey != "" {
			q = append(q, "ssh-key="+m.SSHKey)
		}
		if m.HostKey != "" {
			q = append(q, "base64-ssh-public-host-key="+m.HostKey)
		}
		if len(q) > 0 && !strings.Contains(uri, "?") {
			uri += "?" + strings.Join(q, "&")
		}
	}
	args := []string{"--extra-experimental-features", "nix-command", "build", "--store", uri, "--eval-store", "auto", "--no-link", "-f", file}
	start := d.opts.Now()
	_, stderr, err := d.exec(ctx, as, d.envFor(as), "nix", args...)
	c.Millis = max(1, d.opts.Now().Sub(start).Milliseconds())
	if err != nil {
		// Remote builders are what doctor answers for; remote-store
		// mode is a second way in, so its failure is a warning.
		c.Status = Warn
		c.Problem, c.Why, c.Fix = d.diagnose(stderr)
		c.Problem = strings.TrimSpace(c.Problem + "\nNix said:\n" + lastLines(stderr, 8))
		if c.Why == "" {
			c.Why = "nix build --store ssh-ng://... and nix copy to the farm fail the same way"
			c.Fix = "run it by hand with -v: nix build --store " + uri + " ..."
		}
		if note != "" {
			c.Problem = note + "\n" + c.Problem
		}
		d.add(c)
		return
	}
	c.Status = OK
	c.Detail = "built in the farm's store, as " + as.Name
	if note != "" {
		c.Status, c.Problem = Warn, note
		c.Why = "remote-store mode runs ssh as the user who runs nix, not as root"
		c.Fix = fmt.Sprintf("as %s: ssh-keygen -t ed25519 -N '' -f ~/.ssh/nixfarm_ed25519; have the farm's operator add ~/.ssh/nixfarm_ed25519.pub to your account; and copy root's \"Host %s\" block into ~/.ssh/config, with IdentityFile ~/.ssh/nixfarm_ed25519", d.user.Name, d.target.alias)
	}
	d.add(c)
}

// farmSaid is what the farm's banner said, other than that a key is
// unknown: its "nixfarm: " lines.
func farmSaid(stderr string) string {
	var lines []string
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "nixfarm: ") {
			lines = append(lines, strings.TrimPrefix(l, "nixfarm: "))
		}
	}
	said := strings.Join(lines, " ")
	if strings.Contains(said, "is not authorized") {
		return ""
	}
	return said
}

var systemRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

var keyCommand = regexp.MustCompile(`echo '[^']+' \| nixfarm keys add --account NAME -`)

// diagnose turns what Nix or ssh printed into what is wrong, why, and the
// fix. It returns empty strings when it does not recognise the failure.
func (d *doctor) diagnose(stderr string) (problem, why, fix string) {
	who := "root"
	if d.builder != nil {
		who = d.builder.Name
	}
	switch {
	case strings.Contains(stderr, "is not authorized on this farm"):
		fix = "ask the farm's operator to add the key to your account"
		if m := keyCommand.FindString(stderr); m != "" {
			fix += ", on the farm's host: " + m
		} else if d.keyLine != "" {
			fix += fmt.Sprintf(", on the farm's host: echo '%s' | nixfarm keys add --account NAME -", d.keyLine)
		}
		key := d.keyFile
		if key == "" {
			key = "its key"
		}
		return fmt.Sprintf("the farm does not know %s's key (%s)", who, key),
			"the farm identifies accounts by SSH key: an unknown key gets no account, and Nix shows only \"cannot connect\"", fix
	case farmSaid(stderr) != "":
		// The farm refused the login for a reason of its own (a limit,
		// say), and its banner names the fix.
		return "the farm refused the login: " + farmSaid(stderr), "the farm did not accept the connection",
			"do what the farm's message says"
	case strings.Contains(stderr, "executing '/bin/sh'") || strings.Contains(stderr, "executing \"/bin/sh\""):
		return "the build reached a farm worker, but its sandbox has no /bin/sh, which doctor's test build runs",
			"remote building itself works; derivations that use /bin/sh (as on NixOS builders) fail on that worker",
			"the farm's operator adds a static shell to that worker's sandbox: sandbox-paths = /bin/sh=/path/to/static/busybox in its nix.conf"
	case strings.Contains(stderr, "Host key verification failed"), strings.Contains(stderr, "REMOTE HOST IDENTIFICATION HAS CHANGED"):
		return "ssh does not know (or does not accept) the farm's host key",
			"ssh refuses to connect, and nix-daemon has no terminal to ask on",
			fmt.Sprintf("put the farm's host key on the builders line (8th field): %s", d.clientConfigFix())
	case strings.Contains(stderr, "Permission denied"):
		problem = fmt.Sprintf("the farm refused %s's login: no key ssh offered was accepted", who)
		fix = fmt.Sprintf("make sure %s has a key without a passphrase that the farm knows (see the key check above)", who)
		if d.keyLine != "" {
			problem = fmt.Sprintf("the farm does not know %s's key (%s), or ssh did not offer it", who, d.keyFile)
			fix = fmt.Sprintf("ask the farm's operator to add it to your account, on the farm's host: echo '%s' | nixfarm keys add --account NAME -; if they did, check that %s.pub (if any) matches it", d.keyLine, d.keyFile)
		}
		return problem, "the farm identifies accounts by SSH key: an unknown key gets no account, and Nix shows only \"cannot connect\"", fix
	case strings.Contains(stderr, "Connection refused"):
		return "nothing listens at the farm's address", "the farm is not running there, or the port is wrong",
			"start the farm, or correct HostName/Port in the build user's ssh config"
	case strings.Contains(stderr, "timed out"):
		return "the connection to the farm timed out", "a port that never answers stalls every build",
			"check the farm's address, and that it is the farm's SSH port"
	case strings.Contains(stderr, "Could not resolve hostname"):
		return "the build user's ssh cannot resolve the farm's name", "ssh does not know where the builders line points",
			"add the Host block to the build user's ssh config: " + d.clientConfigFix()
	case strings.Contains(stderr, "ignoring the client-specified setting 'builders'"), strings.Contains(stderr, "is a restricted setting"):
		return "the daemon ignored the builders you passed: you are not a trusted user", "untrusted users cannot choose builders",
			"put the builders line in the daemon's nix.conf: " + d.clientConfigFix()
	case strings.Contains(stderr, "nixfarm has no worker that can build"):
		return "the farm has no worker for the test build's system", "the farm refuses builds it cannot place",
			"list only the farm's systems on the builders line (see the offer check above)"
	case strings.Contains(stderr, "is required to build") && strings.Contains(stderr, "but I am a"):
		return "Nix tried to build it locally, for a system this machine is not", "no builder on the builders line matched, or none was reachable",
			"check the builders line's systems and features, and build with --max-jobs 0"
	case strings.Contains(stderr, "unable to start any build"):
		return "Nix found no builder to use: none on the builders line matches, or it ignored the line", "with max-jobs 0, Nix can only build remotely",
			"check the checks above: the daemon's builders, trust, and the systems on the line; " + d.clientConfigFix()
	case strings.Contains(stderr, "bad permissions"), strings.Contains(stderr, "UNPROTECTED PRIVATE KEY FILE"):
		return "ssh refused a private key that others can read", "the key is not used, so the login fails", "chmod 600 the key file"
	case strings.Contains(stderr, "unexpected end-of-file"), strings.Contains(stderr, "cannot connect"), strings.Contains(stderr, "failed to start SSH connection"):
		return "the connection to the farm broke off", "ssh failed before the farm answered; its own message is in the lines below",
			"run sudo nixfarm doctor, whose checks above name the cause (key, host key, address)"
	}
	return "", "", ""
}
