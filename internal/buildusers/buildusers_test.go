package buildusers_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/nixfarm/nixfarm/internal/buildusers"
)

// fakeSystem is a user database in memory.
type fakeSystem struct {
	groups  map[string]*buildusers.Group
	users   map[string]buildusers.User // every user, member of a group or not
	busy    map[int]bool
	nextUID int
	calls   []string
}

func newFake() *fakeSystem {
	f := &fakeSystem{groups: map[string]*buildusers.Group{}, users: map[string]buildusers.User{}, busy: map[int]bool{}, nextUID: 900}
	var nixbld []buildusers.User
	for i := 1; i <= 10; i++ {
		u := buildusers.User{Name: fmt.Sprintf("nixbld%d", i), UID: 30000 + i, Comment: fmt.Sprintf("Nix build user %d", i)}
		nixbld = append(nixbld, u)
		f.users[u.Name] = u
	}
	f.groups["nixbld"] = &buildusers.Group{Name: "nixbld", GID: 30000, Members: nixbld}
	return f
}

func (f *fakeSystem) LookupGroup(ctx context.Context, name string) (*buildusers.Group, error) {
	g, ok := f.groups[name]
	if !ok {
		return nil, buildusers.ErrNoGroup
	}
	c := *g
	c.Members = slices.Clone(g.Members)
	return &c, nil
}

func (f *fakeSystem) AddGroup(ctx context.Context, name string) error {
	f.calls = append(f.calls, "groupadd "+name)
	f.groups[name] = &buildusers.Group{Name: name, GID: 800}
	return nil
}

func (f *fakeSystem) AddUser(ctx context.Context, name, group, comment string) error {
	if _, ok := f.users[name]; ok {
		return buildusers.ErrUserExists
	}
	f.calls = append(f.calls, "useradd "+name)
	f.nextUID++
	u := buildusers.User{Name: name, UID: f.nextUID, Comment: comment}
	f.users[name] = u
	f.groups[group].Members = append(f.groups[group].Members, u)
	return nil
}

func (f *fakeSystem) InUse(uid int) (bool, error) { return f.busy[uid], nil }

func decide(t *testing.T, sys *fakeSystem, req buildusers.Request) buildusers.Plan {
	t.Helper()
	plan, err := buildusers.Decide(context.Background(), sys, req)
	if err != nil {
		t.Fatalf("%+v: %v", req, err)
	}
	return plan
}

func TestOwnGroupCreated(t *testing.T) {
	sys := newFake()
	plan := decide(t, sys, buildusers.Request{Root: true, NixGroup: "nixbld", Jobs: 4})
	want := []string{"groupadd nixfarmbld", "useradd nixfarmbld1", "useradd nixfarmbld2", "useradd nixfarmbld3", "useradd nixfarmbld4"}
	if !slices.Equal(sys.calls, want) {
		t.Errorf("calls %v, want %v", sys.calls, want)
	}
	if plan.Group != "nixfarmbld" || plan.Jobs != 4 || plan.Shared || plan.Members != 4 || len(plan.Created) != 5 || plan.Note != "" {
		t.Errorf("plan %+v", plan)
	}
	if !strings.Contains(plan.Describe(), "nixfarm's own") || !maps.Equal(plan.Settings(), map[string]string{"build-users-group": "nixfarmbld"}) {
		t.Errorf("describe %q, settings %v", plan.Describe(), plan.Settings())
	}

	// The next start finds them; more jobs add users, fewer change nothing.
	sys.calls = nil
	plan = decide(t, sys, buildusers.Request{Root: true, Group: "nixfarmbld", NixGroup: "nixbld", Jobs: 6})
	if !slices.Equal(sys.calls, []string{"useradd nixfarmbld5", "useradd nixfarmbld6"}) || plan.Jobs != 6 || plan.Members != 6 {
		t.Errorf("growing: %+v %v", plan, sys.calls)
	}
	sys.calls = nil
	plan = decide(t, sys, buildusers.Request{Root: true, Group: "nixfarmbld", NixGroup: "nixbld", Jobs: 2})
	if len(sys.calls) != 0 || plan.Jobs != 2 || plan.Members != 6 {
		t.Errorf("fewer jobs: %+v %v", plan, sys.calls)
	}
}

// A group nixfarm did not make is used as it is: never grown, and the
// jobs are capped at its members. The machine's nixbld, named after its
// group and a number like nixfarm's users, is not nixfarm's either, even
// when the machine's Nix could not say that nixbld is its group.
func TestForeignGroupNotTouched(t *testing.T) {
	sys := newFake()
	sys.groups["builders"] = &buildusers.Group{Name: "builders", GID: 700, Members: []buildusers.User{{Name: "builders1", UID: 1002}}}
	plan := decide(t, sys, buildusers.Request{Root: true, Group: "builders", NixGroup: "nixbld", Jobs: 8})
	if len(sys.calls) != 0 || plan.Jobs != 1 || plan.Shared {
		t.Errorf("plan %+v, calls %v", plan, sys.calls)
	}
	plan = decide(t, sys, buildusers.Request{Root: true, Group: "nixbld", NixGroup: "", Jobs: 16})
	if len(sys.calls) != 0 || plan.Jobs != 10 || len(sys.groups["nixbld"].Members) != 10 {
		t.Errorf("nixbld grown: %+v, calls %v", plan, sys.calls)
	}
}

// Sharing the machine's group: the worker takes fewer jobs than the users
// free at start.
func TestSharedGroupCapped(t *testing.T) {
	sys := newFake()
	for uid := 30001; uid <= 30006; uid++ { // the machine builds as 6 of its 10
		sys.busy[uid] = true
	}
	plan := decide(t, sys, buildusers.Request{Root: true, Group: "nixbld", NixGroup: "nixbld", Jobs: 8})
	if !plan.Shared || plan.Free != 4 || plan.Jobs != 3 || plan.Members != 10 || len(sys.calls) != 0 || plan.Note != "" {
		t.Errorf("plan %+v, calls %v", plan, sys.calls)
	}
	if d := plan.Describe(); !strings.Contains(d, "share") || !strings.Contains(d, "3 jobs") {
		t.Errorf("describe: %s", d)
	}
	// One free: one job, and a warning that it is the last.
	for uid := 30001; uid <= 30009; uid++ {
		sys.busy[uid] = true
	}
	plan = decide(t, sys, buildusers.Request{Root: true, Group: "nixbld", NixGroup: "nixbld", Jobs: 8})
	if plan.Jobs != 1 || plan.Free != 1 || !strings.Contains(plan.Note, "only 1 of the 10") || !strings.Contains(plan.Describe(), "1 job,") {
		t.Errorf("one free: %+v %q", plan, plan.Describe())
	}
}

// A worker in the machine's own store shares the machine's group whatever
// it asked for, and says so; through the daemon it sets nothing.
func TestMachineStoreShares(t *testing.T) {
	sys := newFake()
	plan := decide(t, sys, buildusers.Request{Root: true, Group: "nixfarmbld", NixGroup: "nixbld", MachineStore: true, Jobs: 4})
	if plan.Group != "nixbld" || !plan.Shared || plan.Daemon || !strings.Contains(plan.Note, "this machine's own /nix/store") || len(sys.calls) != 0 {
		t.Errorf("machine store: %+v %v", plan, sys.calls)
	}
	if got := plan.Settings(); got["build-users-group"] != "nixbld" {
		t.Errorf("settings %v", got)
	}
	plan = decide(t, sys, buildusers.Request{Root: true, NixGroup: "nixbld", MachineStore: true, Daemon: true, Jobs: 4})
	if plan.Group != "nixbld" || !plan.Shared || !plan.Daemon || plan.Settings() != nil {
		t.Errorf("daemon: %+v", plan)
	}
	// Not as root, through the daemon: its users, which cannot be counted.
	plan = decide(t, sys, buildusers.Request{Root: false, NixGroup: "nixbld", MachineStore: true, Daemon: true, Jobs: 4})
	if plan.Group != "nixbld" || !plan.Daemon || plan.Jobs != 4 || !strings.Contains(plan.Describe(), "nix-daemon") || plan.Settings() != nil {
		t.Errorf("daemon, not root: %+v %q", plan, plan.Describe())
	}
}

// Another nixfarm starting at the same moment may create a user first;
// a user of that name outside the group is not nixfarm's to take.
func TestUserExists(t *testing.T) {
	sys := newFake()
	decide(t, sys, buildusers.Request{Root: true, Group: "farm", NixGroup: "nixbld", Jobs: 1})
	sys.users["farm2"] = buildusers.User{Name: "farm2", UID: 4000, Comment: "someone"}
	_, err := buildusers.Decide(context.Background(), sys, buildusers.Request{Root: true, Group: "farm", NixGroup: "nixbld", Jobs: 2})
	if err == nil || !strings.Contains(err.Error(), "farm2 exists but is not a member of farm") {
		t.Errorf("a stranger named farm2: %v", err)
	}
	// Made by the other nixfarm, and in the group: fine, but not ours.
	u := buildusers.User{Name: "farm2", UID: 4000, Comment: "nixfarm build user 2"}
	sys.groups["farm"].Members = append(sys.groups["farm"].Members, u)
	plan := decide(t, sys, buildusers.Request{Root: true, Group: "farm", NixGroup: "nixbld", Jobs: 2})
	if plan.Members != 2 || len(plan.Created) != 0 {
		t.Errorf("raced: %+v", plan)
	}
}

func TestNotRootAndErrors(t *testing.T) {
	sys := newFake()
	plan := decide(t, sys, buildusers.Request{Root: false, Group: "nixfarmbld", Jobs: 3})
	if plan.Group != "" || plan.Jobs != 3 || len(sys.calls) != 0 || !strings.Contains(plan.Describe(), "as the user nixfarm runs as") {
		t.Errorf("not root: %+v", plan)
	}
	sys.groups["rooty"] = &buildusers.Group{Name: "rooty", Members: []buildusers.User{{Name: "root", UID: 0}}}
	for _, c := range []struct {
		req  buildusers.Request
		want string
	}{
		{buildusers.Request{Root: true, Group: "Bad Name", Jobs: 1}, "invalid build users group name"},
		{buildusers.Request{Root: true, MachineStore: true, Daemon: true, Jobs: 1}, "would run as root"},
		{buildusers.Request{Root: true, Group: "missing", NixGroup: "missing", Jobs: 1}, "looking up the build users group missing"},
		{buildusers.Request{Root: true, Group: "rooty", NixGroup: "nixbld", Jobs: 1}, "uid is 0"},
	} {
		_, err := buildusers.Decide(context.Background(), sys, c.req)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.req, err, c.want)
		}
	}
	// The machine's group is used as it is named, even a name nixfarm
	// would not create.
	sys.groups["Odd Group"] = &buildusers.Group{Name: "Odd Group", Members: []buildusers.User{{Name: "b", UID: 77}}}
	if plan := decide(t, sys, buildusers.Request{Root: true, Group: "Odd Group", NixGroup: "Odd Group", Jobs: 1}); !plan.Shared {
		t.Errorf("odd machine group: %+v", plan)
	}
	// A group with no members (nixfarm stopped between groupadd and
	// useradd) is filled.
	sys.groups["half"] = &buildusers.Group{Name: "half", GID: 5}
	if plan := decide(t, sys, buildusers.Request{Root: true, Group: "half", NixGroup: "nixbld", Jobs: 2}); plan.Members != 2 || plan.Jobs != 2 {
		t.Errorf("half-made group: %+v", plan)
	}
}

// Configure logs what it created, what it could not do and the plan.
func TestConfigureLogs(t *testing.T) {
	var buf strings.Builder
	log := slog.New(slog.NewTextHandler(&buf, nil))
	sys := newFake()
	if _, err := buildusers.Configure(context.Background(), sys, buildusers.Request{Root: true, Group: "nixfarmbld", NixGroup: "nixbld", MachineStore: true, Jobs: 64}, log); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"level=WARN msg=\"build users group nixfarmbld was asked for", "level=WARN msg=\"fewer jobs than asked for", `msg="build users" group=nixbld jobs=9 shared=true members=10 free=10`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, buf.String())
		}
	}
}

// Host.InUse sees the lock a Nix holds on its user-pool file.
func TestHostInUse(t *testing.T) {
	dir := t.TempDir()
	h := buildusers.Host{StateDir: dir}
	if busy, err := h.InUse(4242); err != nil || busy {
		t.Fatalf("no pool yet: %v %v", busy, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "userpool"), 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, "userpool", "4242"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if busy, err := h.InUse(4242); err != nil || busy {
		t.Fatalf("unlocked: %v %v", busy, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if busy, err := h.InUse(4242); err != nil || !busy {
		t.Fatalf("locked: %v %v", busy, err)
	}
	syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if busy, _ := h.InUse(4242); busy {
		t.Fatal("still in use after unlock")
	}
}

// Host.LookupGroup reads the real user database.
func TestHostLookupGroup(t *testing.T) {
	h := buildusers.Host{}
	g, err := h.LookupGroup(context.Background(), "root")
	if err != nil || g.GID != 0 {
		t.Fatalf("root: %+v %v", g, err)
	}
	if _, err := h.LookupGroup(context.Background(), "no-such-group-nixfarm"); !errors.Is(err, buildusers.ErrNoGroup) {
		t.Fatalf("missing group: %v", err)
	}
}
