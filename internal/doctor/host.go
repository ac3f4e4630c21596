package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nixfarm/nixfarm/internal/clientconfig"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// account is a local user doctor runs commands as.
type account struct {
	Name     string
	Home     string
	UID, GID int
	Groups   []string // names of its groups
	gids     []uint32
}

func lookupAccount(name string) (*account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("there is no user %q on this machine", name)
	}
	return accountOf(u), nil
}

func accountOf(u *user.User) *account {
	a := &account{Name: u.Username, Home: u.HomeDir}
	a.UID, _ = strconv.Atoi(u.Uid)
	a.GID, _ = strconv.Atoi(u.Gid)
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			n, _ := strconv.Atoi(id)
			a.gids = append(a.gids, uint32(n))
			if g, err := user.LookupGroupId(id); err == nil {
				a.Groups = append(a.Groups, g.Name)
			}
		}
	}
	return a
}

// doctor holds what the checks found so far.
type doctor struct {
	opts   Options
	report *Report
	self   *account // runs doctor
	user   *account // builds (runs nix-build)
	root   bool     // doctor runs as root

	nix     clientconfig.Implementation
	daemon  bool        // builds go through nix-daemon
	proc    *daemonProc // the running daemon, if found
	system  clientconfig.System
	builder *account // runs ssh for builds: root under a daemon

	daemonCfg nixConfig // the daemon's settings (or the user's, single-user)
	userCfg   nixConfig // the user's own view
	trusted   bool      // the user is a trusted user of the daemon

	machines []worker.Machine // the builders line in effect
	target   *target          // the farm's builder entry

	keyFile string // the key ssh will use
	keyLine string // its public half
	hostKey string // the farm's host key line, as Nix's 8th field
	pool    *clientconfig.Pool
	workers []workerInfo
}

func newDoctor(opts Options) (*doctor, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	me, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("who runs doctor: %w", err)
	}
	d := &doctor{opts: opts, self: accountOf(me), root: os.Geteuid() == 0}
	d.user = d.self
	name := opts.User
	if name == "" && d.root {
		name = os.Getenv("SUDO_USER")
	}
	if name != "" && name != d.self.Name {
		if !d.root {
			return nil, fmt.Errorf("only root can check as another user (%s runs doctor, --user %s)", d.self.Name, name)
		}
		if d.user, err = lookupAccount(name); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// canActAs reports whether doctor can run commands as a.
func (d *doctor) canActAs(a *account) bool { return d.root || a.UID == d.self.UID }

// envFor is the environment of a command run as a: ours when a runs
// doctor, otherwise a login-like one.
func (d *doctor) envFor(a *account) []string {
	if a.UID == d.self.UID {
		env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "PATH=") })
		return append(env, "PATH="+d.pathFor(a))
	}
	env := []string{"PATH=" + d.pathFor(a), "HOME=" + a.Home, "USER=" + a.Name, "LOGNAME=" + a.Name}
	if d.daemon && a.UID != 0 {
		env = append(env, "NIX_REMOTE=daemon")
	}
	return env
}

// pathFor is PATH for a's commands: doctor's own, then where Nix
// installs put its commands, which sudo's secure_path and minimal
// environments leave out.
func (d *doctor) pathFor(a *account) string {
	dirs := filepath.SplitList(os.Getenv("PATH"))
	for _, dir := range []string{
		filepath.Join(a.Home, ".nix-profile/bin"),
		"/etc/profiles/per-user/" + a.Name + "/bin",
		"/nix/var/nix/profiles/default/bin",
		"/run/current-system/sw/bin",
	} {
		if !slices.Contains(dirs, dir) {
			dirs = append(dirs, dir)
		}
	}
	return strings.Join(dirs, string(filepath.ListSeparator))
}

// lookPath finds a program on a's PATH (pathFor), as a's shell would.
func (d *doctor) lookPath(a *account, name string) string {
	for _, dir := range filepath.SplitList(d.pathFor(a)) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return name
}

// exec runs a program as a, with env, and returns its output.
func (d *doctor) exec(ctx context.Context, a *account, env []string, name string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.lookPath(a, name), args...)
	cmd.Env = env
	cmd.Dir = "/"
	if a.UID != d.self.UID {
		if !d.root {
			return "", "", fmt.Errorf("cannot run %s as %s", name, a.Name)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
			Uid: uint32(a.UID), Gid: uint32(a.GID), Groups: a.gids}}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("%s did not finish within %s", name, d.opts.Timeout)
	}
	return stdout.String(), stderr.String(), err
}

// nixConfig is Nix's settings, as `nix show-config --json` gives them.
type nixConfig map[string]any

func (c nixConfig) str(k string) string {
	switch v := c[k].(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	case []any:
		return strings.Join(c.list(k), " ")
	}
	return ""
}

func (c nixConfig) list(k string) []string {
	switch v := c[k].(type) {
	case []any:
		var out []string
		for _, x := range v {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
		return out
	case string:
		return strings.Fields(v)
	}
	return nil
}

func (c nixConfig) boolean(k string) bool { b, _ := c[k].(bool); return b }

// parseConfig reads `nix show-config --json`: each setting's value.
func parseConfig(out []byte) (nixConfig, error) {
	var raw map[string]struct {
		Value any `json:"value"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, fmt.Errorf("reading nix show-config --json: %w", err)
	}
	c := nixConfig{}
	for k, v := range raw {
		c[k] = v.Value
	}
	return c, nil
}

// showConfig asks Nix, as a with env, for its settings.
func (d *doctor) showConfig(ctx context.Context, a *account, env []string, extra ...string) (nixConfig, error) {
	// `nix config show` from Nix 2.20 on; `nix show-config` before (and
	// in Lix, whose versions say nothing of which it has): try both.
	forms := [][]string{{"show-config"}, {"config", "show"}}
	if d.nix.Name == "Nix" && (d.nix.Major > 2 || d.nix.Minor >= 20) {
		forms[0], forms[1] = forms[1], forms[0]
	}
	var firstErr error
	for _, sub := range forms {
		args := append(append([]string{"--extra-experimental-features", "nix-command"}, sub...), "--json")
		out, stderr, err := d.exec(ctx, a, env, "nix", append(args, extra...)...)
		if err == nil {
			return parseConfig([]byte(out))
		}
		if firstErr == nil {
			firstErr = fmt.Errorf("nix %s --json: %w: %s", strings.Join(sub, " "), err, lastLines(stderr, 3))
		}
	}
	return nil, firstErr
}

// daemonProc is the running nix-daemon.
type daemonProc struct {
	PID     int
	Started time.Time
	// Env is its environment (nil if doctor may not read it).
	Env map[string]string
}

// findDaemon finds the nix-daemon that accepts connections: a nix-daemon
// process whose parent is not one (its children serve one client each),
// with the same root directory as doctor. It returns nil if there is
// none, or if doctor cannot tell which of several it is.
func findDaemon() *daemonProc {
	if runtime.GOOS != "linux" {
		return nil
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	ourRoot, _ := os.Stat("/")
	now, up := time.Now(), uptime()
	type cand struct {
		pid, ppid int
		start     uint64
		sameRoot  int // 1 same, 0 unknown, -1 other
	}
	var cands []cand
	comm := map[int]string{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		name, ppid, start, ok := parseStat(string(stat))
		if !ok || zombie(string(stat)) {
			continue
		}
		comm[pid] = name
		if name != "nix-daemon" {
			continue
		}
		c := cand{pid: pid, ppid: ppid, start: start}
		if fi, err := os.Stat(filepath.Join("/proc", e.Name(), "root")); err == nil {
			c.sameRoot = -1
			if ourRoot != nil && os.SameFile(fi, ourRoot) {
				c.sameRoot = 1
			}
		}
		cands = append(cands, c)
	}
	var found []cand
	for _, c := range cands {
		if comm[c.ppid] == "nix-daemon" || c.sameRoot < 0 {
			continue
		}
		found = append(found, c)
	}
	if len(found) > 1 {
		// A connection's process outlives a restarted daemon until its
		// client is done; the daemon itself holds the listening socket.
		listening := listeningSockets()
		var holders []cand
		for _, c := range found {
			if holdsSocket(c.pid, listening) {
				holders = append(holders, c)
			}
		}
		found = holders
	}
	if len(found) != 1 || up < 0 {
		return nil
	}
	c := found[0]
	// Its age: the time since boot now, less the time since boot it
	// started at; both to a hundredth of a second.
	age := up - time.Duration(c.start)*time.Second/clockTicks
	p := &daemonProc{PID: c.pid, Started: now.Add(-age)}
	if data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(c.pid), "environ")); err == nil {
		p.Env = map[string]string{}
		for _, kv := range bytes.Split(data, []byte{0}) {
			if k, v, ok := strings.Cut(string(kv), "="); ok {
				p.Env[k] = v
			}
		}
	}
	return p
}

// zombie reports whether a /proc/PID/stat line is of a process that has
// ended (Z) or is ending (X).
func zombie(stat string) bool {
	i := strings.LastIndexByte(stat, ')')
	f := strings.Fields(stat[i+1:])
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// listeningSockets are the inodes of the listening Unix sockets named
// like nix-daemon's, from /proc/net/unix.
func listeningSockets() map[string]bool {
	data, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return nil
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		// Num RefCount Protocol Flags Type St Inode Path; Flags 00010000
		// is __SO_ACCEPTCON: listening.
		if len(f) >= 8 && f[3] == "00010000" && strings.HasSuffix(f[7], "daemon-socket/socket") {
			out[f[6]] = true
		}
	}
	return out
}

// holdsSocket reports whether process pid has one of the sockets open.
func holdsSocket(pid int, inodes map[string]bool) bool {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	fds, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(dir, fd.Name()))
		if inode, ok := strings.CutPrefix(target, "socket:["); err == nil && ok && inodes[strings.TrimSuffix(inode, "]")] {
			return true
		}
	}
	return false
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on
// every Linux architecture Nix runs on.
const clockTicks = 100

// parseStat reads the command name, parent and start time (in clock
// ticks after boot) from /proc/PID/stat. The name is in parentheses and
// may itself hold spaces and parentheses: it ends at the last ')'.
func parseStat(s string) (name string, ppid int, start uint64, ok bool) {
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < open {
		return "", 0, 0, false
	}
	name = s[open+1 : close]
	f := strings.Fields(s[close+1:])
	// f[0] is field 3 (state); ppid is field 4, starttime field 22.
	if len(f) < 20 {
		return "", 0, 0, false
	}
	p, err1 := strconv.Atoi(f[1])
	st, err2 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil {
		return "", 0, 0, false
	}
	return name, p, st, true
}

// uptime is the time since boot, from /proc/uptime (-1 if unknown).
func uptime() time.Duration {
	data, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return -1
	}
	secs, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return time.Duration(secs * float64(time.Second))
}

// restartCommand is how to restart nix-daemon on this machine.
func (d *doctor) restartCommand() string {
	switch {
	case d.system.OS == "darwin":
		return "sudo launchctl kickstart -k system/org.nixos.nix-daemon"
	case exists("/run/systemd/system"):
		return "sudo systemctl restart nix-daemon"
	case d.proc != nil:
		return fmt.Sprintf("restart nix-daemon: stop it (sudo kill %d) and start it again the way this machine starts it", d.proc.PID)
	}
	return "restart nix-daemon the way this machine starts it"
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// lastLines is the last n non-empty lines of s.
func lastLines(s string, n int) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
