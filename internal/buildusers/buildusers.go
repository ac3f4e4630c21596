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
// takes fewer jobs than the users that are free when it starts.
package buildusers

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// DefaultGroup is the group nixfarm creates for its builds.
const DefaultGroup = "nixfarmbld"

// User is a member of a build-users group.
type User struct {
	Name string
	UID  int
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
// exist.
var ErrNoGroup = errors.New("no such group")

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
	// Group is the group the worker should build as.
	Group string
	// NixGroup is the build-users-group the machine's Nix is configured
	// with ("" if none).
	NixGroup string
	// DaemonStore is whether the worker builds through the machine's
	// nix-daemon, which chooses the users itself: its group is then
	// NixGroup, whatever Group says.
	DaemonStore bool
	// Jobs is how many builds the worker wants to run at once.
	Jobs int
}

// Plan is the decision.
type Plan struct {
	// Group is the build-users-group the worker's Nix must build as, ""
	// when Nix uses no build users.
	Group string
	// Jobs is the worker's jobs, no more than its users allow.
	Jobs int
	// Shared is whether Group is the machine's Nix's own.
	Shared bool
	// Members is how many users Group has; Free how many of them no Nix
	// used at start (counted only when Shared).
	Members, Free int
	// Created lists the group and users made now.
	Created []string
}

// Describe says in a sentence what the plan means, for the log at start.
func (p Plan) Describe() string {
	switch {
	case p.Group == "":
		return "builds run as the user nixfarm runs as: Nix uses build users only as root"
	case p.Shared:
		return fmt.Sprintf("builds share the machine's Nix build users (group %s, %d members, %d free at start): the worker takes %d jobs, so at least one stays for the machine's own builds; give nixfarm a group of its own (--build-users-group %s) to stop sharing",
			p.Group, p.Members, p.Free, p.Jobs, DefaultGroup)
	default:
		return fmt.Sprintf("builds run as the %d users of group %s, nixfarm's own, so the machine's Nix keeps all of its build users", p.Members, p.Group)
	}
}

// Decide works out which group the worker builds as and how many jobs it
// may run, creating nixfarm's group and users when they are missing.
func Decide(ctx context.Context, sys System, req Request) (Plan, error) {
	jobs := max(req.Jobs, 1)
	if !req.Root {
		return Plan{Jobs: jobs}, nil
	}
	name := req.Group
	if req.DaemonStore {
		name = req.NixGroup
	}
	if name == "" {
		// Nix as root with no build users runs builders as root. Only the
		// machine's daemon can be configured so; nixfarm never asks it.
		return Plan{}, errors.New("the machine's nix-daemon has no build-users-group, so builds through it would run as root; give the built-in worker a store of its own (the default) or configure build users")
	}
	if err := validName(name); err != nil {
		return Plan{}, err
	}
	plan := Plan{Group: name, Shared: name == req.NixGroup}
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
		have := map[string]bool{}
		for _, m := range g.Members {
			have[m.Name] = true
		}
		for i, added := 1, 0; len(g.Members)+added < jobs; i++ {
			user := name + strconv.Itoa(i)
			if have[user] {
				continue
			}
			if err := sys.AddUser(ctx, user, name, fmt.Sprintf("nixfarm build user %d", i)); err != nil {
				return Plan{}, fmt.Errorf("creating build user %s: %w", user, err)
			}
			plan.Created = append(plan.Created, "user "+user)
			added++
		}
		if g, err = sys.LookupGroup(ctx, name); err != nil {
			return Plan{}, fmt.Errorf("looking up the build users group %s: %w", name, err)
		}
	}
	plan.Members = len(g.Members)
	if plan.Members == 0 {
		return Plan{}, fmt.Errorf("the build users group %s has no members (Nix needs users listed in the group)", name)
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
	// Leave at least one free user to the machine's own Nix.
	plan.Jobs = max(1, min(jobs, plan.Free-1))
	return plan, nil
}

// ownGroup reports whether every member of g is named after it and a
// number, as the users nixfarm creates are: only such a group may grow.
// nixfarm never adds users to a group someone else made.
func ownGroup(g *Group) bool {
	for _, m := range g.Members {
		rest, ok := strings.CutPrefix(m.Name, g.Name)
		if !ok || rest == "" || strings.Trim(rest, "0123456789") != "" {
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
