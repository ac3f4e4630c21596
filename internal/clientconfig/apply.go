package clientconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// The lines around the part of a file client-config manages. Both are
// comments in nix.conf and in ssh config.
const (
	BeginMarker = "# nixfarm client-config: begin (edits between these lines are replaced)"
	EndMarker   = "# nixfarm client-config: end"
)

// SSHConfigBlock is SSHConfig followed by `Host *`, for WithBlock at the
// top of an ssh config: a Host block lasts until the next Host or Match
// line, so without it the options the file had before its first Host
// line would apply to the farm alone.
func SSHConfigBlock(c Client) string {
	return SSHConfig(c) + "# what follows applies to every host again\nHost *\n"
}

// WithBlock returns existing with block between BeginMarker and
// EndMarker: in place of the managed block if the file has one, else at
// the top (atTop: ssh config, where the first value found wins) or at the
// end (nix.conf, where the last setting wins), separated from the rest by
// a blank line. Applying it twice gives the same bytes as once.
func WithBlock(existing []byte, block string, atTop bool) ([]byte, error) {
	section, err := managedSection(block)
	if err != nil {
		return nil, err
	}
	lines := splitLines(existing)
	var begins, ends []int
	for i, l := range lines {
		switch strings.TrimSpace(string(l)) {
		case BeginMarker:
			begins = append(begins, i)
		case EndMarker:
			ends = append(ends, i)
		}
	}
	switch {
	case len(begins) == 0 && len(ends) == 0:
	case len(begins) == 1 && len(ends) == 1 && begins[0] < ends[0]:
		var out bytes.Buffer
		for _, l := range lines[:begins[0]] {
			out.Write(l)
		}
		out.WriteString(section)
		for _, l := range lines[ends[0]+1:] {
			out.Write(l)
		}
		return out.Bytes(), nil
	case len(begins) == 1 && len(ends) == 1:
		return nil, fmt.Errorf("the managed block's end line (line %d) comes before its begin line (line %d); fix or remove them by hand", ends[0]+1, begins[0]+1)
	default:
		return nil, fmt.Errorf("expected one managed block, found %d begin and %d end lines (%q, %q); fix or remove them by hand",
			len(begins), len(ends), BeginMarker, EndMarker)
	}
	if len(existing) == 0 {
		return []byte(section), nil
	}
	var out bytes.Buffer
	if atTop {
		out.WriteString(section)
		out.WriteString("\n")
		out.Write(existing)
		return out.Bytes(), nil
	}
	out.Write(existing)
	if existing[len(existing)-1] != '\n' {
		out.WriteString("\n")
	}
	out.WriteString("\n")
	out.WriteString(section)
	return out.Bytes(), nil
}

// managedSection is block between the markers, each line ending in a
// newline. A block holding a marker line itself is refused: the file
// would then have two blocks.
func managedSection(block string) (string, error) {
	if block != "" && !strings.HasSuffix(block, "\n") {
		block += "\n"
	}
	for _, l := range strings.Split(block, "\n") {
		if t := strings.TrimSpace(l); t == BeginMarker || t == EndMarker {
			return "", errors.New("the block to write holds a nixfarm client-config marker line")
		}
	}
	return BeginMarker + "\n" + block + EndMarker + "\n", nil
}

// splitLines splits b after each newline; the last line may lack one.
func splitLines(b []byte) [][]byte {
	var lines [][]byte
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			lines = append(lines, b)
			break
		}
		lines = append(lines, b[:i+1])
		b = b[i+1:]
	}
	return lines
}

// WithLine returns existing with line appended (a known_hosts entry, for
// instance) unless an identical line is already there. A line holding
// newlines is taken as several lines, each added unless present.
func WithLine(existing []byte, line string) []byte {
	have := map[string]bool{}
	for _, l := range splitLines(existing) {
		have[strings.TrimRight(string(l), "\r\n")] = true
	}
	out := existing
	for _, l := range strings.Split(line, "\n") {
		l = strings.TrimRight(l, "\r")
		if l == "" || have[l] {
			continue
		}
		if len(out) > 0 && out[len(out)-1] != '\n' {
			out = append(bytes.Clone(out), '\n')
		}
		out = append(bytes.Clone(out), l+"\n"...)
		have[l] = true
	}
	return out
}

// Owner is who new files and directories belong to, e.g. the user whose
// ~/.ssh is written to by root.
type Owner struct{ UID, GID int }

// Edit is one file to change. Path is absolute, as the client sees it.
// Change gets the file's content (empty when it does not exist) and
// returns the new content. Mode and Owner apply to a new file (Mode 0
// means 0644; Owner nil leaves the owner to whoever runs nixfarm); an
// existing file keeps its own.
type Edit struct {
	Path   string
	Change func(old []byte) ([]byte, error)
	Mode   os.FileMode
	Owner  *Owner
}

// Result is what Apply did to one file. Backup is where its old content
// was saved, if it had any and changed; paths are as the client sees them.
type Result struct {
	Path, Backup     string
	Changed, Created bool
}

// ErrManagedByNix is returned for a file that is a link into /nix/store:
// NixOS and nix-darwin build it from their configuration.
var ErrManagedByNix = errors.New("this file is managed by NixOS or nix-darwin (a link into /nix/store); use the snippet instead")

// Apply makes the edits under root ("/" for the real system; another
// directory stands for it in tests). Every file is read and every change
// computed first, so that a refused edit leaves every file as it was;
// then each changed file is backed up next to itself as
// FILE.nixfarm-backup-YYYYMMDDTHHMMSSZ (the time from now, in UTC) and
// replaced atomically. A file whose content is already right is not
// touched, so a second run changes nothing and makes no backup.
func Apply(root string, edits []Edit, now time.Time) ([]Result, error) {
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("root directory %s: not a directory (%v)", root, err)
	}
	rootReal := filepath.Clean(root)
	type pending struct {
		edit       Edit
		real       string
		old, new   []byte
		existed    bool
		mode       os.FileMode
		uid, gid   int
		ownerKnown bool
		results    []int // the edits of this file
	}
	var plan []*pending
	byReal := map[string]*pending{}
	results := make([]Result, len(edits))
	for i, e := range edits {
		results[i].Path = e.Path
		real, err := resolve(rootReal, e.Path)
		if err != nil {
			return nil, err
		}
		p := byReal[real]
		if p == nil {
			p = &pending{edit: e, real: real, mode: e.Mode}
			if p.mode == 0 {
				p.mode = 0o644
			}
			info, err := os.Stat(real)
			switch {
			case err == nil && !info.Mode().IsRegular():
				return nil, fmt.Errorf("%s is not a regular file", e.Path)
			case err == nil:
				p.existed, p.mode = true, info.Mode().Perm()
				if st, ok := info.Sys().(*syscall.Stat_t); ok {
					p.uid, p.gid, p.ownerKnown = int(st.Uid), int(st.Gid), true
				}
				if p.old, err = os.ReadFile(real); err != nil {
					return nil, fmt.Errorf("reading %s: %w", e.Path, err)
				}
			case errors.Is(err, fs.ErrNotExist):
				if e.Owner != nil {
					p.uid, p.gid, p.ownerKnown = e.Owner.UID, e.Owner.GID, true
				}
			default:
				return nil, fmt.Errorf("reading %s: %w", e.Path, err)
			}
			p.new = p.old
			byReal[real] = p
			plan = append(plan, p)
		}
		p.results = append(p.results, i)
		if p.new, err = e.Change(bytes.Clone(p.new)); err != nil {
			return nil, fmt.Errorf("editing %s: %w", e.Path, err)
		}
	}
	for _, p := range plan {
		if bytes.Equal(p.old, p.new) && (p.existed || len(p.new) == 0) {
			continue
		}
		if !p.existed {
			if err := mkdirs(rootReal, filepath.Dir(p.real), p.edit.Owner); err != nil {
				return results, fmt.Errorf("creating the directory of %s: %w", p.edit.Path, err)
			}
		} else {
			backup, err := backUp(p.real, p.old, p.mode, p.uid, p.gid, p.ownerKnown, now)
			if err != nil {
				return results, fmt.Errorf("backing up %s: %w", p.edit.Path, err)
			}
			for _, i := range p.results {
				results[i].Backup = clientPath(rootReal, backup)
			}
		}
		if err := writeAtomic(p.real, p.new, p.mode, p.uid, p.gid, p.ownerKnown); err != nil {
			return results, fmt.Errorf("writing %s: %w", p.edit.Path, err)
		}
		for _, i := range p.results {
			results[i].Changed, results[i].Created = true, !p.existed
		}
	}
	return results, nil
}

// resolve is where writing to path under root really goes, with links
// followed as the client sees them: an absolute target is taken under
// root, and ".." stops at root, as in a chroot, so nothing resolves
// outside root. Nothing is resolved through the host's view of root
// itself (root may be /proc/PID/root, whose target reads as "/"). A path
// that leads into /nix/store is refused: NixOS and nix-darwin manage it.
func resolve(root, path string) (string, error) { return RealPath(root, path) }

// RealPath is where path, as a client with root as its "/" sees it, is
// on this machine (see resolve).
func RealPath(root, path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("%s: not an absolute path", path)
	}
	parts := strings.Split(filepath.Clean(path), "/")
	cur := "/" // resolved so far, as the client sees it
	for hops := 0; len(parts) > 0; {
		name := parts[0]
		parts = parts[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, name)
		fi, err := os.Lstat(filepath.Join(root, next))
		if errors.Is(err, fs.ErrNotExist) {
			// What is missing is created; a ".." below it could only
			// lead back up past links nobody checked, so it is refused.
			if slices.Contains(parts, "..") {
				return "", fmt.Errorf("%s: a link leads through %s, which does not exist, and back up with \"..\"; refusing to follow it", path, next)
			}
			cur = filepath.Join(append([]string{next}, parts...)...)
			break
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", fmt.Errorf("%s: too many levels of links", path)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		parts = append(strings.Split(target, "/"), parts...)
	}
	if inStore(cur) {
		return "", fmt.Errorf("%s: %w", path, ErrManagedByNix)
	}
	return filepath.Join(root, cur), nil
}

func inStore(p string) bool { return p == "/nix/store" || strings.HasPrefix(p, "/nix/store/") }

// clientPath is p as the client sees it (root stripped).
func clientPath(root, p string) string {
	rel, err := filepath.Rel(root, p)
	if err != nil {
		return p
	}
	return "/" + filepath.ToSlash(rel)
}

// mkdirs creates dir and its missing parents below root: 0700 for one
// named .ssh, 0755 otherwise, given to owner.
func mkdirs(root, dir string, owner *Owner) error {
	if _, err := os.Stat(dir); err == nil || dir == root || dir == filepath.Dir(dir) {
		return nil
	}
	if err := mkdirs(root, filepath.Dir(dir), owner); err != nil {
		return err
	}
	mode := os.FileMode(0o755)
	if filepath.Base(dir) == ".ssh" {
		mode = 0o700
	}
	if err := os.Mkdir(dir, mode); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := os.Chmod(dir, mode); err != nil { // past the umask
		return err
	}
	if owner != nil {
		return os.Chown(dir, owner.UID, owner.GID)
	}
	return nil
}

// backUp saves old next to path under a name no file has yet.
func backUp(path string, old []byte, mode os.FileMode, uid, gid int, chown bool, now time.Time) (string, error) {
	base := path + ".nixfarm-backup-" + now.UTC().Format("20060102T150405Z")
	for n := 1; ; n++ {
		name := base
		if n > 1 {
			name = fmt.Sprintf("%s-%d", base, n)
		}
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		err = finish(f, old, mode, uid, gid, chown)
		if err != nil {
			os.Remove(name)
			return "", err
		}
		return name, nil
	}
}

// writeAtomic replaces path with data: a temporary file in the same
// directory, synced, renamed over it.
func writeAtomic(path string, data []byte, mode os.FileMode, uid, gid int, chown bool) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".nixfarm-*")
	if err != nil {
		return err
	}
	if err := finish(f, data, mode, uid, gid, chown); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// finish writes data to f, sets its mode and owner, syncs and closes it.
func finish(f *os.File, data []byte, mode os.FileMode, uid, gid int, chown bool) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil && chown {
		err = f.Chown(uid, gid)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
