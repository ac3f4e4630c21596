package buildusers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Host is the machine itself: its user database through getent (so NSS
// sources count, as they do for Nix's getgrnam), shadow's groupadd and
// useradd to add to it, and the lock files of Nix's user pool.
type Host struct {
	// StateDir is Nix's state directory, which holds the user pool;
	// NIX_STATE_DIR or /nix/var/nix if empty, as for Nix.
	StateDir string
}

// LookupGroup implements System.
func (h Host) LookupGroup(ctx context.Context, name string) (*Group, error) {
	out, err := getent(ctx, "group", name)
	if errors.Is(err, errNotFound) {
		return nil, ErrNoGroup
	}
	if err != nil {
		return nil, err
	}
	// name:password:gid:member,member
	fields := strings.Split(strings.TrimSpace(out), ":")
	if len(fields) != 4 {
		return nil, fmt.Errorf("getent group %s: unexpected answer %q", name, out)
	}
	gid, err := strconv.Atoi(fields[2])
	if err != nil {
		return nil, fmt.Errorf("getent group %s: gid %q", name, fields[2])
	}
	g := &Group{Name: fields[0], GID: gid}
	if fields[3] == "" {
		return g, nil
	}
	names := strings.Split(fields[3], ",")
	out, err = getent(ctx, "passwd", names...)
	if err != nil && !errors.Is(err, errNotFound) { // some missing: below
		return nil, err
	}
	users := map[string]User{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		// name:password:uid:gid:comment:home:shell
		f := strings.Split(line, ":")
		if len(f) < 5 {
			continue
		}
		if uid, err := strconv.Atoi(f[2]); err == nil {
			users[f[0]] = User{Name: f[0], UID: uid, Comment: f[4]}
		}
	}
	for _, n := range names {
		u, ok := users[n]
		if !ok {
			// Nix fails the build in this case; say so now.
			return nil, fmt.Errorf("the user %s in group %s does not exist", n, name)
		}
		g.Members = append(g.Members, u)
	}
	return g, nil
}

var errNotFound = errors.New("not found")

// getent runs getent; exit status 2 (a key not found) is errNotFound.
func getent(ctx context.Context, db string, keys ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "getent", append([]string{db}, keys...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 2 {
		return string(out), errNotFound
	}
	if err != nil {
		return "", fmt.Errorf("getent %s: %w %s", db, err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// AddGroup implements System with groupadd --system. A group that exists
// already (another nixfarm made it first) is not an error: the caller
// looks it up again.
func (Host) AddGroup(ctx context.Context, name string) error {
	err := shadow(ctx, "groupadd", "--system", name)
	if errors.Is(err, errNameTaken) {
		return nil
	}
	return err
}

// AddUser implements System with useradd --system: no home, no login,
// listed as a member of group (Nix reads the member list). A name already
// taken is ErrUserExists.
func (Host) AddUser(ctx context.Context, name, group, comment string) error {
	err := shadow(ctx, "useradd", "--system", "--no-create-home", "--home-dir", "/var/empty",
		"--shell", "/usr/sbin/nologin", "--gid", group, "--groups", group, "--comment", comment, name)
	if errors.Is(err, errNameTaken) {
		return ErrUserExists
	}
	return err
}

var errNameTaken = errors.New("name taken")

// shadow runs a shadow-utils tool. Exit status 9 means the name is taken
// (errNameTaken); 10 means the user database was locked by someone else,
// so it tries again.
func shadow(ctx context.Context, tool string, args ...string) error {
	var err error
	for attempt := 0; attempt < 10; attempt++ {
		var out []byte
		out, err = exec.CommandContext(ctx, tool, args...).CombinedOutput()
		var exit *exec.ExitError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &exit) && exit.ExitCode() == 9:
			return errNameTaken
		case errors.As(err, &exit) && exit.ExitCode() == 10:
			err = fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(50*(attempt+1)) * time.Millisecond):
			}
		default:
			return fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return err
}

// InUse implements System: Nix holds an exclusive flock on
// STATE-DIR/userpool/UID while it builds as uid. The test takes and drops
// the lock at once; a Nix that tries in that instant moves on to its next
// user, as it would for a user in use.
func (h Host) InUse(uid int) (bool, error) {
	f, err := os.OpenFile(filepath.Join(h.stateDir(), "userpool", strconv.Itoa(uid)), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // no Nix has built as uid yet
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return false, syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}

func (h Host) stateDir() string {
	if h.StateDir != "" {
		return h.StateDir
	}
	if d := os.Getenv("NIX_STATE_DIR"); d != "" {
		return d
	}
	return "/nix/var/nix"
}
