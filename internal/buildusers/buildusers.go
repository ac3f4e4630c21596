// Package buildusers decides which Unix users the builds of a worker on
// this machine run as.
//
// Nix running as root builds as the members of its build-users-group, one
// user per build, and it keeps one pool of them per machine: a lock file
// per uid under its state directory (/nix/var/nix/userpool), which every
// Nix on the machine shares whatever store it builds in. A worker drawing
// from the machine's own group (nixbld) competes with the machine's
// nix-daemon and with any local client. When they run out, Nix waits for a
// user, and Nix 2.8, in a build that mixes local and remote work, can then
// abort with "Assertion 'uid != 0' failed" in killUser.
//
// So a worker builds as a group of its own, disjoint from the machine's:
// nixfarm creates it (DefaultGroup, one user per job) unless it exists. An
// operator may instead choose to share the machine's group; the worker then
// takes fewer jobs than the users that are free when it starts. A worker
// that builds in the machine's own /nix/store must share: Nix running as
// root makes its store owned by the group it builds as (chown and mode
// 1775 in the LocalStore constructor), so two groups would take the store
// from each other's builders.
package buildusers

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// DefaultGroup is the group nixfarm creates for its builds.
const DefaultGroup = "nixfarmbld"

// User is a member of a build-users group.
type User struct {
	Name    string
	UID     int
	Comment string // the GECOS field
}

// Group is a Unix group and its members (the supplementary members, as
// Nix's getgrnam reads them: a user whose primary group it is but who is
// not listed does not count, for Nix either).
type Group struct {
	Name    string
	GID     int
	Members []User
}

// ErrNoGroup is returned by System.LookupGroup for a group that does not
// exist, and ErrUserExists by System.AddUser for a name already taken.
var (
	ErrNoGroup    = errors.New("no such group")
	ErrUserExists = errors.New("user exists")
)

// System is what the package needs of the machine: its user database, the
// tools that add to it, and Nix's user pool. Host is the real machine; a
// test gives a fake.
type System interface {
	LookupGroup(ctx context.Context, name string) (*Group, error)
	AddGroup(ctx context.Context, name string) error
	AddUser(ctx context.Context, name, group, comment string) error
	// InUse reports whether a Nix on this machine builds as uid now.
	InUse(uid int) (bool, error)
}

// Request is what a worker asks for.
type Request struct {
	// Root is whether the worker's Nix runs as root. Only then does Nix
	// use build users; otherwise builds run as the worker's own user.
	Root bool
	// Group is the group the worker should build as (DefaultGroup if
	// empty).
	Group string
	// NixGroup is the build-users-group the machine's Nix is configured
	// with ("" if none).
	NixGroup string
	// MachineStore is whether the worker builds in the machine's own
	// /nix/store. Nix running as root makes its store owned by its
	// build-users-group when it opens it, so a worker there must use the
	// machine's group, or the two would take the store from each other.
	MachineStore bool
	// Daemon is whether the worker reaches that store through the
	// machine's nix-daemon, which picks the users itself.
	Daemon bool
	// Jobs is how many builds the worker wants to run at once.
	Jobs int
}

// Plan is the decision.
type Plan struct {
	// Group is the build-users-group the worker's Nix builds as, ""
	// when Nix uses no build users.
	Group string
	// Jobs is the worker's jobs, no more than its users allow.
	Jobs int
	// Shared is whether Group is the machine's Nix's own.
	Shared bool
	// Daemon is whether the machine's nix-daemon picks the users.
	Daemon bool
	// Members is how many users Group has; Free how many of them no Nix
	// used at start (counted only when Shared and nixfarm is root).
	Members, Free int
	// Created lists the group and users made now.
	Created []string
	// Note is a warning for the operator: what was asked for and could
	// not be done, or a shared pool with hardly a user free.
	Note string
}

// Settings are the Nix settings the worker's own nix-store must be given:
// none when the daemon picks the users.
func (p Plan) Settings() map[string]string {
	if p.Group == "" || p.Daemon {
		return nil
	}
	return map[string]string{"build-users-group": p.Group}
}

// Describe says in a sentence what the plan means, for the log at start.
func (p Plan) Describe() string {
	switch {
	case p.Daemon && p.Members == 0:
		return fmt.Sprintf("builds go through the machine's nix-daemon, which builds as its own users (group %s), shared with the machine's own builds", p.Group)
	case p.Group == "":
		return "builds run as the user nixfarm runs as: Nix uses build users only as root"
	case p.Shared:
		return fmt.Sprintf("builds share the machine's Nix build users (group %s, %d members, %d free at start): the worker takes %s, the rest stay for the machine's own builds; a store and a group of nixfarm's own (the default for the built-in worker) stop the sharing",
			p.Group, p.Members, p.Free, plural(p.Jobs, "job"))
	default:
		return fmt.Sprintf("builds run as the %d users of group %s, nixfarm's own, so the machine's Nix keeps all of its build users", p.Members, p.Group)
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// Logger is what Configure logs to (a *slog.Logger).
type Logger interface {
	Info(msg string, args ...any)
	Warn(msg string, args ...any)
}

// Configure decides (Decide) and says what it decided: the users it
// created, what it could not do, fewer jobs than asked for, and the plan.
func Configure(ctx context.Context, sys System, req Request, log Logger) (Plan, error) {
	plan, err := Decide(ctx, sys, req)
	if err != nil {
		return Plan{}, err
	}
	if len(plan.Created) > 0 {
		log.Info("created build users", "created", strings.Join(plan.Created, ", "))
	}
	if plan.Note != "" {
		log.Warn(plan.Note)
	}
	if plan.Jobs < max(req.Jobs, 1) {
		log.Warn("fewer jobs than asked for: not enough build users", "asked", req.Jobs, "jobs", plan.Jobs, "group", plan.Group)
	}
	log.Info("build users", "group", plan.Group, "jobs", plan.Jobs, "shared", plan.Shared, "members", plan.Members,
		"free", plan.Free, "detail", plan.Describe())
	return plan, nil
}

// Decide works out which group the worker builds as and how many jobs it
// may run, creating nixfarm's group and users when they are missing.
func Decide(ctx context.Context, sys System, req Request) (Plan, error) {
	jobs := max(req.Jobs, 1)
	if !req.Root {
		if req.MachineStore && req.Daemon {
			// The daemon builds as its users; their locks are root's, so
			// they cannot be counted from here.
			return Plan{Group: req.NixGroup, Shared: true, Daemon: true, Jobs: jobs}, nil
		}
		return Plan{Jobs: jobs}, nil
	}
	name := req.Group
	if name == "" {
		name = DefaultGroup
	}
	plan := Plan{Daemon: req.MachineStore && req.Daemon}
	if req.MachineStore {
		if name != req.NixGroup {
			plan.Note = fmt.Sprintf("build users group %s was asked for, but the worker builds in this machine's own /nix/store, which Nix hands to the group it builds as: the worker shares the machine's group %q instead; give it a store of its own to build as %s", name, req.NixGroup, name)
		}
		name = req.NixGroup
	}
	if name == "" {
		// Nix as root with no build users runs builders as root.
		return Plan{}, errors.New("the machine's Nix has no build-users-group, so builds in its store would run as root; give the worker a store of its own (the built-in worker's default) or configure build users")
	}
	plan.Group = name
	plan.Shared = name == req.NixGroup
	if !plan.Shared {
		if err := validName(name); err != nil {
			return Plan{}, err
		}
	}
	g, err := sys.LookupGroup(ctx, name)
	if errors.Is(err, ErrNoGroup) && !plan.Shared {
		if err := sys.AddGroup(ctx, name); err != nil {
			return Plan{}, fmt.Errorf("creating the build users group %s: %w", name, err)
		}
		plan.Created = append(plan.Created, "group "+name)
		g, err = sys.LookupGroup(ctx, name)
	}
	if err != nil {
		return Plan{}, fmt.Errorf("looking up the build users group %s: %w", name, err)
	}
	if !plan.Shared && ownGroup(g) && len(g.Members) < jobs {
		if g, err = grow(ctx, sys, g, jobs, &plan); err != nil {
			return Plan{}, err
		}
	}
	plan.Members = len(g.Members)
	if plan.Members == 0 {
		return Plan{}, fmt.Errorf("the build users group %s has no members (Nix needs users listed in the group)", name)
	}
	for _, m := range g.Members {
		if m.UID == 0 {
			return Plan{}, fmt.Errorf("the build users group %s lists %s, whose uid is 0: Nix refuses to build as root", name, m.Name)
		}
	}
	if !plan.Shared {
		// More jobs than users would only make builds wait for a user.
		plan.Jobs = min(jobs, plan.Members)
		return plan, nil
	}
	for _, m := range g.Members {
		busy, err := sys.InUse(m.UID)
		if err != nil {
			return Plan{}, fmt.Errorf("checking build user %s: %w", m.Name, err)
		}
		if !busy {
			plan.Free++
		}
	}
	// Leave at least one free user to the machine's own Nix, if there is
	// one to leave.
	plan.Jobs = max(1, min(jobs, plan.Free-1))
	if plan.Free <= 1 {
		plan.Note = fmt.Sprintf("only %d of the %d users of the shared build users group %s were free at start: the worker takes 1 job, and builds here may wait for a user", plan.Free, plan.Members, name)
	}
	return plan, nil
}

// grow adds nixfarm's numbered users to its group g until it has jobs
// members, and returns the group as it is then.
func grow(ctx context.Context, sys System, g *Group, jobs int, plan *Plan) (*Group, error) {
	have := map[string]bool{}
	for _, m := range g.Members {
		have[m.Name] = true
	}
	for i, added := 1, 0; len(g.Members)+added < jobs; i++ {
		user := g.Name + strconv.Itoa(i)
		if have[user] {
			continue
		}
		err := sys.AddUser(ctx, user, g.Name, fmt.Sprintf("%s %d", userComment, i))
		switch {
		case errors.Is(err, ErrUserExists):
			// Another nixfarm starting at the same time may have made it;
			// anything else of that name is not nixfarm's to take.
			now, lerr := sys.LookupGroup(ctx, g.Name)
			if lerr != nil {
				return nil, fmt.Errorf("looking up the build users group %s: %w", g.Name, lerr)
			}
			if !slices.ContainsFunc(now.Members, func(m User) bool { return m.Name == user }) {
				return nil, fmt.Errorf("a user named %s exists but is not a member of %s: remove it, or add it to the group (usermod -a -G %s %s) if it is a build user", user, g.Name, g.Name, user)
			}
		case err != nil:
			return nil, fmt.Errorf("creating build user %s: %w", user, err)
		default:
			plan.Created = append(plan.Created, "user "+user)
		}
		added++
	}
	name := g.Name
	g, err := sys.LookupGroup(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("looking up the build users group %s: %w", name, err)
	}
	return g, nil
}

// userComment starts the comment (GECOS) of every user nixfarm creates;
// it is how nixfarm knows its own.
const userComment = "nixfarm build user"

// ownGroup reports whether every member of g is a user nixfarm created,
// by its comment: only such a group may grow. nixfarm never adds users to
// a group someone else made (the machine's nixbld1, nixbld2... look much
// like nixfarm's own, but were not made by it).
func ownGroup(g *Group) bool {
	for _, m := range g.Members {
		if !strings.HasPrefix(m.Comment, userComment+" ") {
			return false
		}
	}
	return true
}

var nameRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,23}$`)

// validName checks a group name before it reaches groupadd: letters,
// digits, '_' and '-', short enough that its numbered users fit the
// 32-character limit.
func validName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid build users group name %q: use up to 24 lower-case letters, digits, '_' or '-', starting with a letter or '_'", name)
	}
	return nil
}
