package clientconfig_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/clientconfig"
)

const (
	begin = clientconfig.BeginMarker + "\n"
	end   = clientconfig.EndMarker + "\n"
)

func TestWithBlock(t *testing.T) {
	for _, tc := range []struct {
		name, existing, block string
		atTop                 bool
		want                  string
	}{
		{"empty", "", "a = 1\n", false, begin + "a = 1\n" + end},
		{"empty at top", "", "a = 1", true, begin + "a = 1\n" + end},
		{"appended", "x = 1\n", "a = 1\n", false, "x = 1\n\n" + begin + "a = 1\n" + end},
		{"appended, no final newline", "x = 1", "a = 1\n", false, "x = 1\n\n" + begin + "a = 1\n" + end},
		{"at top", "Host x\n", "Host y\n", true, begin + "Host y\n" + end + "\nHost x\n"},
		{"replaced", "x\n" + begin + "old\nold\n" + end + "y\n", "new\n", false, "x\n" + begin + "new\n" + end + "y\n"},
		{"replaced, markers indented, no final newline", "x\n  " + clientconfig.BeginMarker + "\nold\n" + clientconfig.EndMarker + " ", "new\n", true, "x\n" + begin + "new\n" + end},
	} {
		got, err := clientconfig.WithBlock([]byte(tc.existing), tc.block, tc.atTop)
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: got %q, %v\nwant %q", tc.name, got, err, tc.want)
			continue
		}
		again, err := clientconfig.WithBlock(got, tc.block, tc.atTop)
		if err != nil || !bytes.Equal(again, got) {
			t.Errorf("%s: second run gave %q, %v", tc.name, again, err)
		}
	}
	for name, existing := range map[string]string{
		"two blocks":       begin + end + begin + end,
		"begin only":       "x\n" + begin,
		"end only":         end,
		"end before begin": end + begin,
	} {
		if _, err := clientconfig.WithBlock([]byte(existing), "a\n", false); err == nil || !strings.Contains(err.Error(), "by hand") {
			t.Errorf("%s: %v, want an error saying to fix it by hand", name, err)
		}
	}
	if _, err := clientconfig.WithBlock(nil, "a\n"+end, false); err == nil {
		t.Error("a block holding a marker line was accepted")
	}
}

func TestWithLine(t *testing.T) {
	for _, tc := range []struct{ existing, line, want string }{
		{"", "a", "a\n"},
		{"a\n", "a", "a\n"},
		{"a", "a", "a"},
		{"b", "a", "b\na\n"},
		{"b\r\na\r\n", "a", "b\r\na\r\n"},
		{"a\n", "a\nb\n", "a\nb\n"},
	} {
		if got := clientconfig.WithLine([]byte(tc.existing), tc.line); string(got) != tc.want {
			t.Errorf("WithLine(%q, %q) = %q, want %q", tc.existing, tc.line, got, tc.want)
		}
	}
}

// FuzzWithBlock: whatever the file holds, WithBlock never panics, a
// second run changes nothing, and what lies outside the block is kept.
func FuzzWithBlock(f *testing.F) {
	f.Add([]byte(""), "a = 1\n", false)
	f.Add([]byte("Host x\n  User y"), "Host z\n", true)
	f.Add([]byte("x\n"+begin+"old\n"+end+"y"), "new", false)
	f.Add([]byte(begin+begin+end), "", true)
	f.Add([]byte("\r\n"+end), "\n\n", false)
	f.Fuzz(func(t *testing.T, existing []byte, block string, atTop bool) {
		out, err := clientconfig.WithBlock(existing, block, atTop)
		if err != nil {
			if !hasMarker(existing) && !hasMarker([]byte(block)) {
				t.Fatalf("no markers anywhere, yet: %v", err)
			}
			return
		}
		again, err := clientconfig.WithBlock(out, block, atTop)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("not idempotent: %q then %q, %v", out, again, err)
		}
		if !bytes.Contains(out, []byte(begin+strings.TrimSuffix(block, "\n"))) {
			t.Fatalf("block %q missing from %q", block, out)
		}
		if !hasMarker(existing) {
			if atTop && !bytes.HasSuffix(out, existing) || !atTop && !bytes.HasPrefix(out, existing) {
				t.Fatalf("%q lost from %q", existing, out)
			}
			return
		}
		// One block: the lines before and after it are kept as they were.
		lines := bytes.SplitAfter(existing, []byte("\n"))
		b := slices.IndexFunc(lines, func(l []byte) bool { return string(bytes.TrimSpace(l)) == clientconfig.BeginMarker })
		e := slices.IndexFunc(lines, func(l []byte) bool { return string(bytes.TrimSpace(l)) == clientconfig.EndMarker })
		before, after := bytes.Join(lines[:b], nil), bytes.Join(lines[e+1:], nil)
		if !bytes.HasPrefix(out, before) || !bytes.HasSuffix(out, after) {
			t.Fatalf("outside of the block lost: %q became %q", existing, out)
		}
	})
}

func hasMarker(b []byte) bool {
	for _, l := range bytes.Split(b, []byte("\n")) {
		if t := string(bytes.TrimSpace(l)); t == clientconfig.BeginMarker || t == clientconfig.EndMarker {
			return true
		}
	}
	return false
}

func setTo(content string) func([]byte) ([]byte, error) {
	return func([]byte) ([]byte, error) { return []byte(content), nil }
}

func listDir(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err == nil {
			out = append(out, strings.TrimPrefix(p, root)+" "+info.Mode().String()+" "+info.ModTime().String())
		}
		return nil
	})
	return out
}

func TestApply(t *testing.T) {
	root := t.TempDir()
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("X", 3600))
	if err := os.MkdirAll(filepath.Join(root, "etc/nix"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(root, "etc/nix/nix.conf")
	if err := os.WriteFile(conf, []byte("sandbox = true\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	os.Chown(conf, 4321, 4321)
	alice := &clientconfig.Owner{UID: 1234, GID: 1235}
	edits := []clientconfig.Edit{
		{Path: "/etc/nix/nix.conf", Change: func(old []byte) ([]byte, error) {
			return clientconfig.WithBlock(old, "builders-use-substitutes = true\n", false)
		}},
		{Path: "/home/alice/.ssh/config", Mode: 0o600, Owner: alice, Change: func(old []byte) ([]byte, error) {
			return clientconfig.WithBlock(old, "Host nixfarm\n", true)
		}},
		{Path: "/home/alice/.ssh/known_hosts", Owner: alice, Change: func(old []byte) ([]byte, error) {
			return clientconfig.WithLine(old, "nixfarm ssh-ed25519 AAAA"), nil
		}},
		{Path: "/home/alice/untouched", Change: setTo("")},
	}
	res, err := clientconfig.Apply(root, edits, now)
	if err != nil {
		t.Fatal(err)
	}
	backup := "/etc/nix/nix.conf.nixfarm-backup-20260304T040607Z"
	want := []clientconfig.Result{
		{Path: "/etc/nix/nix.conf", Backup: backup, Changed: true},
		{Path: "/home/alice/.ssh/config", Changed: true, Created: true},
		{Path: "/home/alice/.ssh/known_hosts", Changed: true, Created: true},
		{Path: "/home/alice/untouched"},
	}
	if !slices.Equal(res, want) {
		t.Fatalf("got %+v\nwant %+v", res, want)
	}
	checkFile := func(path, content string, mode os.FileMode, uid int) {
		t.Helper()
		full := filepath.Join(root, path)
		info, err := os.Stat(full)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(full); content != "" && string(got) != content {
			t.Errorf("%s holds %q, want %q", path, got, content)
		}
		if info.Mode().Perm() != mode || int(info.Sys().(*syscall.Stat_t).Uid) != uid {
			t.Errorf("%s: mode %v uid %d, want %v %d", path, info.Mode().Perm(), info.Sys().(*syscall.Stat_t).Uid, mode, uid)
		}
	}
	checkFile(backup, "sandbox = true\n", 0o640, 4321)
	checkFile("/etc/nix/nix.conf", "sandbox = true\n\n"+begin+"builders-use-substitutes = true\n"+end, 0o640, 4321)
	checkFile("/home/alice/.ssh/config", begin+"Host nixfarm\n"+end, 0o600, 1234)
	checkFile("/home/alice/.ssh/known_hosts", "nixfarm ssh-ed25519 AAAA\n", 0o644, 1234)
	checkFile("/home/alice/.ssh", "", 0o700, 1234)
	checkFile("/home/alice", "", 0o755, 1234)
	if _, err := os.Stat(filepath.Join(root, "home/alice/untouched")); err == nil {
		t.Error("an edit leaving a missing file empty created it")
	}

	// Again: nothing changes, nothing is written, no new backup.
	before := listDir(t, root)
	res, err = clientconfig.Apply(root, edits, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Changed || r.Created || r.Backup != "" {
			t.Errorf("second run: %+v", r)
		}
	}
	if after := listDir(t, root); !slices.Equal(before, after) {
		t.Errorf("second run wrote:\n%v\n%v", before, after)
	}

	// A change in the same second gets a backup of its own.
	res, err = clientconfig.Apply(root, []clientconfig.Edit{{Path: "/etc/nix/nix.conf", Change: setTo("x\n")}}, now)
	if err != nil || res[0].Backup != backup+"-2" {
		t.Fatalf("%+v, %v; want a backup %s-2", res, err, backup)
	}
	checkFile(backup+"-2", "sandbox = true\n\n"+begin+"builders-use-substitutes = true\n"+end, 0o640, 4321)
	checkFile(backup, "sandbox = true\n", 0o640, 4321)
}

// A refused edit leaves every file as it was, the others too.
func TestApplyRefuses(t *testing.T) {
	root, elsewhere := t.TempDir(), t.TempDir()
	now := time.Unix(0, 0)
	for _, d := range []string{"etc/nix", "etc/ssh", "root/dotfiles", "root/.ssh"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.Symlink("/nix/store/00000000000000000000000000000000-nix.conf", filepath.Join(root, "etc/nix/nix.conf"))
	os.Symlink(elsewhere, filepath.Join(root, "etc/outside"))
	os.Symlink("../../../../../../.."+elsewhere+"/x", filepath.Join(root, "etc/ssh/up"))
	os.WriteFile(filepath.Join(root, "etc/regular"), []byte("keep\n"), 0o644)
	os.WriteFile(filepath.Join(root, "root/dotfiles/ssh_config"), []byte("Host a\n"), 0o600)
	os.Symlink("../dotfiles/ssh_config", filepath.Join(root, "root/.ssh/config"))
	regular := clientconfig.Edit{Path: "/etc/regular", Change: setTo("changed\n")}
	for _, tc := range []struct {
		edit clientconfig.Edit
		want string
	}{
		{clientconfig.Edit{Path: "/etc/nix/nix.conf", Change: setTo("x")}, "managed by NixOS"},
		{clientconfig.Edit{Path: "etc/relative", Change: setTo("x")}, "not an absolute path"},
		{clientconfig.Edit{Path: "/etc", Change: setTo("x")}, "not a regular file"},
		{clientconfig.Edit{Path: "/etc/new", Change: func([]byte) ([]byte, error) { return nil, errors.New("no") }}, "editing /etc/new: no"},
	} {
		_, err := clientconfig.Apply(root, []clientconfig.Edit{regular, tc.edit}, now)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.edit.Path) {
			t.Errorf("%s: %v, want an error naming it and saying %q", tc.edit.Path, err, tc.want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/regular")); string(b) != "keep\n" {
		t.Errorf("a refused run changed another file: %q", b)
	}
	// Links are followed as the client sees them: an absolute target, or
	// one climbing past "/", stays under root, as in a chroot.
	if _, err := clientconfig.Apply(root, []clientconfig.Edit{
		{Path: "/etc/outside/nix.conf", Change: setTo("x")},
		{Path: "/etc/ssh/up", Change: setTo("y")},
	}, now); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, elsewhere, "nix.conf")); err != nil || string(b) != "x" {
		t.Errorf("the absolute link was not followed under root: %q %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(root, elsewhere, "x")); err != nil || string(b) != "y" {
		t.Errorf("the climbing link was not followed under root: %q %v", b, err)
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Errorf("wrote outside root: %v", ents)
	}
	// A link through a missing directory and back up with "..", then
	// through another link, is refused (the kernel would not follow it,
	// and joining the words would skip the second link's check).
	os.MkdirAll(filepath.Join(root, "opt"), 0o755)
	os.Symlink("x/../y", filepath.Join(root, "opt/nix"))
	os.Symlink(elsewhere, filepath.Join(root, "opt/y"))
	if _, err := clientconfig.Apply(root, []clientconfig.Edit{{Path: "/opt/nix/nix.conf", Change: setTo("z")}}, now); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("a link back up through a missing directory: %v", err)
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Errorf("wrote outside root: %v", ents)
	}
	// A root that is itself a link (as /proc/PID/root is) is used as
	// given, never resolved into the host's view of it.
	linked := filepath.Join(t.TempDir(), "root-link")
	os.Symlink(root, linked)
	if _, err := clientconfig.Apply(linked, []clientconfig.Edit{{Path: "/etc/regular", Change: setTo("via link\n")}}, now); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/regular")); string(b) != "via link\n" {
		t.Errorf("writing through a linked root: %q", b)
	}
	// A link inside root is written through, and stays a link.
	if _, err := clientconfig.Apply(root, []clientconfig.Edit{{Path: "/root/.ssh/config", Change: setTo("Host b\n")}}, now); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "root/dotfiles/ssh_config")); string(b) != "Host b\n" {
		t.Errorf("the link's target holds %q", b)
	}
	if fi, err := os.Lstat(filepath.Join(root, "root/.ssh/config")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was replaced: %v %v", fi, err)
	}
}
