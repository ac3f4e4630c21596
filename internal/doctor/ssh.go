package doctor

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/nixfarm/nixfarm/internal/clientconfig"
)

// cannotActAs is the Skip for a check of the build user's files that
// doctor, not run as root, cannot read.
func (d *doctor) cannotActAs(c Check) bool {
	c.Status = Skip
	c.Detail = fmt.Sprintf("doctor runs as %s and cannot read %s's ssh files; nix-daemon runs ssh as %s. Run sudo nixfarm doctor to check them; the test build below tries them anyway.",
		d.self.Name, d.builder.Name, d.builder.Name)
	return d.add(c)
}

// checkKey: 4a. the build user has a key ssh will use, with no passphrase.
func (d *doctor) checkKey(ctx context.Context) bool {
	c := Check{ID: "key", Title: "The build user has a usable SSH key", ForUser: d.builder.Name}
	if !d.canActAs(d.builder) {
		return d.cannotActAs(c)
	}
	var candidates []string
	if m := d.target.machine; m != nil && m.SSHKey != "" {
		candidates = append(candidates, m.SSHKey)
	}
	for _, f := range d.target.sshOpt["identityfile"] {
		candidates = append(candidates, expandHome(f, d.builder))
	}
	var passphrase, unreadable, missing []string
	for _, path := range candidates {
		state, err := clientconfig.CheckKey(path)
		switch state {
		case clientconfig.KeyMissing:
			missing = append(missing, path)
			continue
		case clientconfig.KeyPassphrase:
			passphrase = append(passphrase, path)
			continue
		case clientconfig.KeyUnreadable:
			unreadable = append(unreadable, fmt.Sprintf("%s (%v)", path, err))
			continue
		}
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
			c.Status = Fail
			c.Problem = fmt.Sprintf("%s's key %s can be read by others (mode %04o)", d.builder.Name, path, fi.Mode().Perm())
			c.Why = "ssh refuses to use it (\"UNPROTECTED PRIVATE KEY FILE\"), so the login fails"
			c.Fix = "chmod 600 " + path
			return d.add(c)
		}
		data, _ := os.ReadFile(path)
		if signer, err := ssh.ParsePrivateKey(data); err == nil {
			d.keyFile = path
			d.keyLine = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
			c.Status = OK
			c.Detail = fmt.Sprintf("%s will use %s (%s %s)", d.builder.Name, path, signer.PublicKey().Type(), ssh.FingerprintSHA256(signer.PublicKey()))
			return d.add(c)
		}
	}
	c.Status = Fail
	keygen := fmt.Sprintf("ssh-keygen -t ed25519 -N '' -f %s", filepath.Join(d.builder.Home, ".ssh", "nixfarm_ed25519"))
	if d.builder.UID == 0 && d.self.UID != 0 {
		keygen = "sudo " + keygen
	}
	whose := fmt.Sprintf("%s's", d.builder.Name)
	fix := fmt.Sprintf("%s (no passphrase), put it on the builders line (3rd field) or as IdentityFile in %s's ssh config, and have the farm's operator add the .pub file to your account; or run %s, which does all of that",
		keygen, d.builder.Name, d.clientConfigFix())
	switch {
	case len(passphrase) > 0:
		c.Problem = fmt.Sprintf("%s key %s has a passphrase", whose, strings.Join(passphrase, ", "))
		c.Why = "nix-daemon runs ssh with no terminal and no agent: nobody can type the passphrase, so ssh gives up and Nix says only \"cannot connect\""
		c.Fix = "use a key without a passphrase: " + fix
	case len(unreadable) > 0:
		c.Problem = fmt.Sprintf("%s key cannot be used: %s", whose, strings.Join(unreadable, "; "))
		c.Why = "ssh cannot log in to the farm with it"
		c.Fix = fix
	default:
		c.Problem = fmt.Sprintf("%s has no SSH key for the farm: none of %s exists", d.builder.Name, strings.Join(missing, ", "))
		if d.builder != d.user {
			if own := userKeys(d.user); len(own) > 0 {
				c.Problem += fmt.Sprintf(".\n%s has %s, but nix-daemon runs ssh as %s, so %s's key is never used", d.user.Name, strings.Join(own, ", "), d.builder.Name, d.user.Name)
			}
		}
		c.Why = "ssh cannot log in to the farm; Nix reports it as \"cannot connect\" or \"unexpected end-of-file\""
		c.Fix = fix
	}
	return d.add(c)
}

// userKeys lists a's default private keys that exist.
func userKeys(a *account) []string {
	var out []string
	for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa", "nixfarm_ed25519"} {
		p := filepath.Join(a.Home, ".ssh", n)
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// checkHostKey: 4b. ssh knows the farm's host key.
func (d *doctor) checkHostKey(ctx context.Context) bool {
	c := Check{ID: "hostkey", Title: "The farm's host key is known", ForUser: d.builder.Name}
	if m := d.target.machine; m != nil && m.HostKey != "" {
		if sameHostKey(m.HostKey, d.hostKey) {
			c.Status, c.Detail = OK, "given on the builders line (8th field), and it is the farm's"
		} else {
			c.Status = Fail
			c.Problem = "the host key on the builders line (8th field) is not the key the farm presents"
			c.Why = "ssh refuses the connection (\"Host key verification failed\"): that is how it stops a man in the middle, or the farm's key changed"
			c.Fix = fmt.Sprintf("compare the fingerprint above with the farm operator's; if it is the farm's, replace the 8th field with %s (or run %s)", d.hostKey, d.clientConfigFix())
		}
		return d.add(c)
	}
	if !d.canActAs(d.builder) {
		return d.cannotActAs(c)
	}
	opt := d.target.sshOpt
	if v := opt["stricthostkeychecking"]; len(v) > 0 && (v[0] == "false" || v[0] == "no") {
		c.Status, c.Problem = Warn, "StrictHostKeyChecking is off for the farm in "+d.builder.Name+"'s ssh config"
		c.Why = "ssh connects to whatever answers at that address, so a man in the middle could feed your builds"
		c.Fix = "put the farm's host key on the builders line (8th field): " + d.hostKey
		return d.add(c)
	}
	var files []string
	for _, f := range append(append([]string{}, opt["userknownhostsfile"]...), opt["globalknownhostsfile"]...) {
		if p := expandHome(f, d.builder); exists(p) {
			files = append(files, p)
		}
	}
	name := d.target.host
	if v := opt["hostkeyalias"]; len(v) > 0 {
		name = v[0]
	}
	lookup := net.JoinHostPort(name, d.target.port)
	if len(opt["hostkeyalias"]) > 0 {
		lookup = net.JoinHostPort(name, "22") // ssh looks an alias up as it is
	}
	key, _ := clientconfig.ParseHostKeyLine(d.hostKey)
	known, other := false, false
	if key != nil && len(files) > 0 {
		cb, err := knownhosts.New(files...)
		if err == nil {
			err = cb(lookup, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22}, key)
			var ke *knownhosts.KeyError
			switch {
			case err == nil:
				known = true
			case errors.As(err, &ke) && len(ke.Want) > 0:
				other = true
			}
		}
	}
	pattern := knownhosts.Normalize(lookup)
	line := pattern + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
	switch {
	case known:
		c.Status, c.Detail = OK, fmt.Sprintf("%s's known_hosts has it, as %s", d.builder.Name, pattern)
	case other:
		c.Status = Fail
		c.Problem = fmt.Sprintf("%s's known_hosts holds another key for %s", d.builder.Name, pattern)
		c.Why = "ssh refuses the connection (\"REMOTE HOST IDENTIFICATION HAS CHANGED\"), and Nix says only \"cannot connect\""
		c.Fix = fmt.Sprintf("if the farm's key really changed (ask its operator; its fingerprint is above): ssh-keygen -R '%s' -f %s, then add: %s", pattern, firstOr(files, "~/.ssh/known_hosts"), line)
	default:
		c.Status = Fail
		c.Problem = fmt.Sprintf("%s's known_hosts does not know the farm's host key (as %s), and the builders line gives none", d.builder.Name, pattern)
		c.Why = "ssh would ask whether to trust it, but nix-daemon has no terminal: ssh fails with \"Host key verification failed\" and Nix says \"cannot connect\" or \"unexpected end-of-file\""
		c.Fix = fmt.Sprintf("put the host key on the builders line as its 8th field, %s (%s does it); or, after comparing the fingerprint above with the operator's: echo '%s' >> %s",
			d.hostKey, d.clientConfigFix(), line, filepath.Join(d.builder.Home, ".ssh", "known_hosts"))
	}
	return d.add(c)
}

func firstOr(xs []string, def string) string {
	if len(xs) > 0 {
		return xs[0]
	}
	return def
}

func sameHostKey(a, b string) bool {
	ka, err1 := clientconfig.ParseHostKeyLine(a)
	kb, err2 := clientconfig.ParseHostKeyLine(b)
	return err1 == nil && err2 == nil && string(ka.Marshal()) == string(kb.Marshal())
}

// sshFarm runs a nixfarm command on the farm as the build user, the way
// Nix starts ssh: its key, and the builders line's host key.
func (d *doctor) sshFarm(ctx context.Context, as *account, command ...string) (string, string, error) {
	args := []string{"-x", "-a", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"}
	if m := d.target.machine; m != nil && m.SSHKey != "" && as == d.builder {
		args = append(args, "-i", m.SSHKey)
	}
	if m := d.target.machine; m != nil && m.HostKey != "" {
		dir, err := os.MkdirTemp("", "nixfarm-doctor-")
		if err != nil {
			return "", "", err
		}
		defer os.RemoveAll(dir)
		data, _ := base64.StdEncoding.DecodeString(m.HostKey)
		file := filepath.Join(dir, "known_hosts")
		if err := os.WriteFile(file, []byte(hostOnly(d.target.alias)+" "+string(data)+"\n"), 0o644); err != nil {
			return "", "", err
		}
		os.Chmod(dir, 0o755)
		args = append(args, "-o", "UserKnownHostsFile="+file)
	}
	if d.target.machine == nil && d.target.port != "22" {
		args = append(args, "-p", d.target.port)
	}
	if d.proc != nil && d.proc.Env != nil {
		args = append(args, strings.Fields(d.proc.Env["NIX_SSHOPTS"])...)
	}
	args = append(append(args, d.target.alias), command...)
	return d.exec(ctx, as, d.envFor(as), "ssh", args...)
}

// checkConnect: 4c and 5. the build user logs in without a prompt, and
// the farm maps the key to an account.
func (d *doctor) checkConnect(ctx context.Context) bool {
	c := Check{ID: "login", Title: "The build user logs in to the farm", ForUser: d.builder.Name}
	if !d.canActAs(d.builder) {
		return d.cannotActAs(c)
	}
	c.AsUser = d.builder.Name
	start := d.opts.Now()
	out, stderr, err := d.sshFarm(ctx, d.builder, "nixfarm", "whoami", "--json")
	c.Millis = max(1, d.opts.Now().Sub(start).Milliseconds())
	if err != nil {
		c.Status = Fail
		c.Problem, c.Why, c.Fix = d.diagnose(stderr)
		if c.Problem == "" {
			c.Problem = fmt.Sprintf("ssh %s nixfarm whoami failed: %v\n%s", d.target.alias, err, lastLines(stderr, 6))
			c.Why = "Nix starts ssh the same way: its builds would fail to connect too"
			c.Fix = "run the same command by hand, as " + d.builder.Name + ", with ssh -v to see why"
		}
		return d.add(c)
	}
	var st struct {
		Account     string                     `json:"account"`
		Fingerprint string                     `json:"fingerprint"`
		Limits      map[string]json.RawMessage `json:"limits"`
		Usage       struct {
			Builds, Running, Queued int64
		} `json:"usage"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Account == "" {
		c.Status = Fail
		c.Problem = fmt.Sprintf("%s logged in, but `nixfarm whoami --json` did not answer as a nixfarm farm does: %.200q", d.target.alias, out)
		c.Why = "this is an SSH server, but not a nixfarm farm (or one too old for doctor)"
		c.Fix = "check the farm's address (HostName/Port in the build user's ssh config)"
		return d.add(c)
	}
	c.Status = OK
	c.Detail = fmt.Sprintf("%s logs in without a prompt; the farm maps key %s to account %s", d.builder.Name, st.Fingerprint, st.Account)
	d.add(c)
	a := Check{ID: "account", Title: "The farm's account", ForUser: st.Account, AsUser: d.builder.Name, Status: OK}
	a.Detail = fmt.Sprintf("account %s: %d builds so far, %d running, %d queued", st.Account, st.Usage.Builds, st.Usage.Running, st.Usage.Queued)
	if len(st.Limits) > 0 {
		var names []string
		for k := range st.Limits {
			names = append(names, k)
		}
		sort.Strings(names)
		var parts []string
		for _, k := range names {
			var v struct {
				Value int64 `json:"value"`
			}
			json.Unmarshal(st.Limits[k], &v)
			val := "no limit"
			if v.Value > 0 {
				val = fmt.Sprint(v.Value)
			}
			parts = append(parts, k+" "+val)
		}
		a.Detail += "\nlimits: " + strings.Join(parts, ", ")
	}
	return d.add(a)
}
