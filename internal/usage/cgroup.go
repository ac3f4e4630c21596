package usage

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// ParentName is the group, in the group nixfarm runs in, under which
// every session's group is made.
const ParentName = "nixfarm"

// seq numbers the groups this process makes.
var seq atomic.Int64

// groupName names a new session's group: nixfarm-<pid>-<n>.
func groupName() string {
	return fmt.Sprintf("nixfarm-%d-%d", os.Getpid(), seq.Add(1))
}

// fsys is how the cgroup meters touch the control group file system: the
// real one, or a directory laid out like it in tests.
type fsys struct {
	// mkdir makes a group.
	mkdir func(string) error
	// rmdir removes a group (on cgroupfs a group's directory is removed
	// with its control files in it).
	rmdir func(string) error
	// alive reports whether a process runs.
	alive func(pid int) bool
}

func realFS() fsys {
	return fsys{mkdir: func(d string) error { return os.Mkdir(d, 0o755) }, rmdir: syscall.Rmdir, alive: func(pid int) bool {
		err := syscall.Kill(pid, 0)
		return err == nil || errors.Is(err, syscall.EPERM)
	}}
}

// writeFile writes s to a control file.
func writeFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %q to %s: %w", s, path, err)
	}
	return nil
}

// uncharge asks the kernel to reclaim the memory a group is still charged
// for, before the group is removed: mostly page cache of the files the
// build wrote (its outputs). A group removed while charged lingers in the
// kernel as a dying group until that cache is reclaimed some day, so a
// farm's thousands of builds leave thousands of them (1,200 on a test
// machine after a day of test runs), which the kernel walks in its
// memory accounting; emptied first, it goes at once. Best effort: file is
// the version's control file (v1 memory.force_empty, v2 memory.reclaim,
// Linux 5.19 and later), and a kernel without it keeps the old behaviour.
func uncharge(file, amount string) {
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		return
	}
	f.WriteString(amount) // v2 answers EAGAIN if it reclaimed less
	f.Close()
}

// readInt reads a control file holding one integer.
func readInt(path string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	return n, nil
}

// readKey reads the value of key in a flat keyed file such as cpu.stat.
func readKey(path, key string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok && k == key {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("reading %s of %s: %w", key, path, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("%s has no %s", path, key)
}

// removeTree removes a group and the groups under it, deepest first. A
// group whose processes have just ended may be busy for a moment: it is
// tried again for up to a second.
func (fs fsys) removeTree(dir string) error {
	entries, _ := os.ReadDir(dir)
	var errs []error
	for _, e := range entries {
		if e.IsDir() {
			errs = append(errs, fs.removeTree(filepath.Join(dir, e.Name())))
		}
	}
	var err error
	for i := 0; i < 20; i++ {
		err = fs.rmdir(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return errors.Join(errs...)
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.Join(append(errs, fmt.Errorf("removing control group %s: %w", dir, err))...)
}

// sweep removes the groups under parent that a nixfarm process no longer
// running left behind.
func (fs fsys) sweep(parent string, log *slog.Logger) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, ok := groupPID(e.Name())
		if !e.IsDir() || !ok || pid == os.Getpid() || fs.alive(pid) {
			continue
		}
		if err := fs.removeTree(filepath.Join(parent, e.Name())); err != nil {
			log.Warn("could not remove a control group a previous nixfarm left behind", "err", err)
		} else {
			log.Info("removed a control group a previous nixfarm left behind", "group", filepath.Join(parent, e.Name()))
		}
	}
}

// groupPID parses the pid out of nixfarm-<pid>-<n>.
func groupPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "nixfarm-")
	if !ok {
		return 0, false
	}
	p, n, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(p)
	if _, err2 := strconv.Atoi(n); err != nil || err2 != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}
