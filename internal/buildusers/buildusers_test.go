package buildusers_test

import (
	"context"
	"errors"
	"fmt"
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
	busy    map[int]bool
	nextUID int
	calls   []string
}

func newFake() *fakeSystem {
	f := &fakeSystem{groups: map[string]*buildusers.Group{}, busy: map[int]bool{}, nextUID: 900}
	var nixbld []buildusers.User
	for i := 1; i <= 10; i++ {
		nixbld = append(nixbld, buildusers.User{Name: fmt.Sprintf("nixbld%d", i), UID: 30000 + i})
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
	f.calls = append(f.calls, "useradd "+name)
	f.nextUID++
	f.groups[group].Members = append(f.groups[group].Members, buildusers.User{Name: name, UID: f.nextUID})
	return nil
}

func (f *fakeSystem) InUse(uid int) (bool, error) { return f.busy[uid], nil }

func TestOwnGroupCreated(t *testing.T) {
	sys := newFake()
	plan, err := buildusers.Decide(context.Background(), sys, buildusers.Request{Root: true, Group: buildusers.DefaultGroup, NixGroup: "nixbld", Jobs: 4})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"groupadd nixfarmbld", "useradd nixfarmbld1", "useradd nixfarmbld2", "useradd nixfarmbld3", "useradd nixfarmbld4"}
	if !slices.Equal(sys.calls, want) {
		t.Errorf("calls %v, want %v", sys.calls, want)
	}
	if plan.Group != "nixfarmbld" || plan.Jobs != 4 || plan.Shared || plan.Members != 4 || len(plan.Created) != 5 {
		t.Errorf("plan %+v", plan)
	}
	if !strings.Contains(plan.Describe(), "nixfarm's own") {
		t.Errorf("describe: %s", plan.Describe())
	}

	// The next start finds them; more jobs add users, fewer change nothing.
	sys.calls = nil
	plan, err = buildusers.Decide(context.Background(), sys, buildusers.Request{Root: true, Group: "nixfarmbld", NixGroup: "nixbld", Jobs: 6})
	if err != nil || !slices.Equal(sys.calls, []string{"useradd nixfarmbld5", "useradd nixfarmbld6"}) || plan.Jobs != 6 || plan.Members != 6 {
		t.Errorf("growing: %+v %v %v", plan, sys.calls, err)
	}
	sys.calls = nil
	plan, err = buildusers.Decide(context.Background(), sys, buildusers.Request{Root: true, Group: "nixfarmbld", NixGroup: "nixbld", Jobs: 2})
	if err != nil || len(sys.calls) != 0 || plan.Jobs != 2 || plan.Members != 6 {
		t.Errorf("fewer jobs: %+v %v %v", plan, sys.calls, err)
	}
}

// A group nixfarm did not make is used as it is: never grown, and the
// jobs are capped at its members.
func TestForeignGroupNotTouched(t *testing.T) {
	sys := newFake()
	sys.groups["builders"] = &buildusers.Group{Name: "builders", GID: 700, Members: []buildusers.User{{Name: "alice", UID: 1001}, {Name: "builders1", UID: 1002}}}
	plan, err := buildusers.Decide(context.Background(), sys, buildusers.Request{Root: true, Group: "builders", NixGroup: "nixbld", Jobs: 8})
	if err != nil {
		t.Fatal(err)
	}
	if len(sys.calls) != 0 || plan.Jobs != 2 || plan.Shared {
		t.Errorf("plan %+v, calls %v", plan, sys.calls)
	}
}

// Sharing the machine's group: the worker takes fewer jobs than the users
// free at start.
func TestSharedGroupCapped(t *testing.T) {
	sys := newFake()
	for uid := 30001; uid <= 30006; uid++ { // the machine builds as 6 of its 10
		sys.busy[uid] = true
	}
	plan, err := buildusers.Decide(context.Background(), sys, buildusers.Request{Root: true, Group: "nixbld", NixGroup: "nixbld", Jobs: 8})
	if err != nil {
		t.Fatal(err)
	}
	if !plan.Shared || plan.Free != 4 || plan.Jobs != 3 || plan.Members != 10 || len(sys.calls) != 0 {
		t.Errorf("plan %+v, calls %v", plan, sys.calls)
	}
	if !strings.Contains(plan.Describe(), "share") {
		t.Errorf("describe: %s", plan.Describe())
	}
	// All in use: one job, never none.
	for uid := 30001; uid <= 30010; uid++ {
		sys.busy[uid] = true
	}
	if plan, _ = buildusers.Decide(context.Background(), sys, buildusers.Request{Root: true, Group: "nixbld", NixGroup: "nixbld", Jobs: 8}); plan.Jobs != 1 {
		t.Errorf("all busy: %+v", plan)
	}
	// Through the machine's daemon the daemon's group is used, whatever
	// was asked for.
	plan, err = buildusers.Decide(context.Background(), sys, buildusers.Request{Root: true, Group: "nixfarmbld", NixGroup: "nixbld", DaemonStore: true, Jobs: 8})
	if err != nil || plan.Group != "nixbld" || !plan.Shared {
		t.Errorf("daemon store: %+v %v", plan, err)
	}
}

func TestNotRootAndErrors(t *testing.T) {
	sys := newFake()
	plan, err := buildusers.Decide(context.Background(), sys, buildusers.Request{Root: false, Group: "nixfarmbld", Jobs: 3})
	if err != nil || plan.Group != "" || plan.Jobs != 3 || len(sys.calls) != 0 {
		t.Errorf("not root: %+v %v", plan, err)
	}
	for _, c := range []struct {
		req  buildusers.Request
		want string
	}{
		{buildusers.Request{Root: true, Group: "Bad Name", Jobs: 1}, "invalid build users group name"},
		{buildusers.Request{Root: true, Group: "nixbld", NixGroup: "nixbld", DaemonStore: true}, ""},
		{buildusers.Request{Root: true, DaemonStore: true, Jobs: 1}, "would run as root"},
		{buildusers.Request{Root: true, Group: "missing", NixGroup: "missing", Jobs: 1}, "looking up the build users group missing"},
	} {
		_, err := buildusers.Decide(context.Background(), sys, c.req)
		if c.want == "" {
			if err != nil {
				t.Errorf("%+v: %v", c.req, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.req, err, c.want)
		}
	}
	// A group with no members (nixfarm stopped between groupadd and
	// useradd) is filled.
	sys.groups["half"] = &buildusers.Group{Name: "half", GID: 5}
	plan, err = buildusers.Decide(context.Background(), sys, buildusers.Request{Root: true, Group: "half", NixGroup: "nixbld", Jobs: 2})
	if err != nil || plan.Members != 2 || plan.Jobs != 2 {
		t.Errorf("half-made group: %+v %v", plan, err)
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
