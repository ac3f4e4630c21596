package usage

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeFS treats a temporary directory as a cgroup file system: groups
// are directories, removed with what they hold; pids listed in alive run.
func fakeFS(alive ...int) fsys {
	return fsys{
		mkdir: func(d string) error {
			if err := os.Mkdir(d, 0o755); err != nil {
				return err
			}
			for _, f := range []string{"cgroup.procs", "cgroup.subtree_control"} {
				if err := os.WriteFile(filepath.Join(d, f), nil, 0o644); err != nil {
					return err
				}
			}
			return nil
		},
		rmdir: os.RemoveAll,
		alive: func(pid int) bool {
			for _, p := range alive {
				if p == pid {
					return true
				}
			}
			return false
		},
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

func only(t *testing.T, pattern string) string {
	t.Helper()
	m, _ := filepath.Glob(pattern)
	if len(m) != 1 {
		t.Fatalf("%s: %d matches, want 1: %v", pattern, len(m), m)
	}
	return m[0]
}

func TestV1TwoBuildsInOneSession(t *testing.T) {
	root := t.TempDir()
	cpu, mem := filepath.Join(root, "cpuacct", ParentName), filepath.Join(root, "memory", ParentName)
	m, err := newV1(cpu, mem, fakeFS(), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.Start(4242)
	if err != nil {
		t.Fatal(err)
	}
	cg, mg := only(t, cpu+"/nixfarm-*"), only(t, mem+"/nixfarm-*")
	if filepath.Base(cg) != "nixfarm-"+strconv.Itoa(os.Getpid())+"-"+strconv.FormatInt(seq.Load(), 10) {
		t.Errorf("group named %s", filepath.Base(cg))
	}
	for _, g := range []string{cg, mg} {
		if got := read(t, g+"/cgroup.procs"); got != "4242" {
			t.Errorf("%s/cgroup.procs = %q, want the session's pid", g, got)
		}
	}
	// The handshake used some; the first build starts.
	write(t, cg+"/cpuacct.usage", "300000000")
	write(t, mg+"/memory.max_usage_in_bytes", "5000")
	if err := p.Reset(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, mg+"/memory.max_usage_in_bytes"); got != "0" {
		t.Errorf("peak not reset at the build's start: %q", got)
	}
	write(t, cg+"/cpuacct.usage", "2300000000")
	write(t, mg+"/memory.max_usage_in_bytes", "80000000")
	u, err := p.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Usage{CPU: 2 * time.Second, PeakMemory: 80000000, Measured: true}); u != want {
		t.Errorf("first build: %+v, want %+v", u, want)
	}
	// The second build of the session: its own CPU and peak.
	if err := p.Reset(); err != nil {
		t.Fatal(err)
	}
	write(t, cg+"/cpuacct.usage", "2800000000")
	write(t, mg+"/memory.max_usage_in_bytes", "7000")
	u, err = p.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Usage{CPU: 500 * time.Millisecond, PeakMemory: 7000, Measured: true}); u != want {
		t.Errorf("second build: %+v, want %+v", u, want)
	}
	// The memory group is emptied before it is removed (uncharge).
	write(t, mg+"/memory.force_empty", "")
	p.(*v1Probe).fs.rmdir = func(d string) error {
		if d == mg {
			if got := read(t, d+"/memory.force_empty"); got != "0" {
				t.Errorf("the memory group was removed without being emptied first: memory.force_empty %q", got)
			}
		}
		return os.RemoveAll(d)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{cg, mg} {
		if _, err := os.Stat(g); !os.IsNotExist(err) {
			t.Errorf("%s left behind", g)
		}
	}
}

func TestV2TwoBuildsInOneSession(t *testing.T) {
	root := t.TempDir()
	write(t, root+"/cgroup.subtree_control", "")
	parent := filepath.Join(root, ParentName)
	os.MkdirAll(parent, 0o755)
	write(t, parent+"/cgroup.subtree_control", "")
	m, err := newV2(parent, fakeFS(), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if !m.memory || read(t, root+"/cgroup.subtree_control") != "+memory" || read(t, parent+"/cgroup.subtree_control") != "+memory" {
		t.Fatalf("memory controller not enabled down to the sessions")
	}
	p, err := m.Start(4242)
	if err != nil {
		t.Fatal(err)
	}
	g := only(t, parent+"/nixfarm-*")
	if got := read(t, g+"/cgroup.subtree_control"); got != "+memory" {
		t.Errorf("session group's subtree_control = %q", got)
	}
	if got := read(t, g+"/b0/cgroup.procs"); got != "4242" {
		t.Errorf("b0/cgroup.procs = %q, want the session's pid", got)
	}
	write(t, g+"/b0/cpu.stat", "usage_usec 300000\nuser_usec 200000\nsystem_usec 100000\n")
	write(t, g+"/b0/memory.peak", "5000")
	for i, want := range []Usage{
		{CPU: 2 * time.Second, PeakMemory: 80000000, Measured: true},
		{CPU: 500 * time.Millisecond, PeakMemory: 7000, Measured: true},
	} {
		if err := p.Reset(); err != nil {
			t.Fatal(err)
		}
		leaf := g + "/b" + strconv.Itoa(i+1)
		if got := read(t, leaf+"/cgroup.procs"); got != "4242" {
			t.Errorf("build %d: the session is not in %s", i, leaf)
		}
		if _, err := os.Stat(g + "/b" + strconv.Itoa(i)); !os.IsNotExist(err) {
			t.Errorf("build %d: the last build's leaf is left", i)
		}
		write(t, leaf+"/cpu.stat", "usage_usec "+strconv.FormatInt(want.CPU.Microseconds(), 10)+"\nuser_usec 1\n")
		write(t, leaf+"/memory.peak", strconv.FormatInt(want.PeakMemory, 10)+"\n")
		u, err := p.Sample()
		if err != nil {
			t.Fatal(err)
		}
		if u != want {
			t.Errorf("build %d: %+v, want %+v", i, u, want)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(g); !os.IsNotExist(err) {
		t.Errorf("%s left behind", g)
	}
}

func TestV2WithoutMemoryMeasuresCPU(t *testing.T) {
	// The group nixfarm runs in has no cgroup.subtree_control to write.
	parent := filepath.Join(t.TempDir(), "own", ParentName)
	m, err := newV2(parent, fakeFS(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(parent, "cgroup.subtree_control"))
	if m.memory {
		t.Fatal("memory measured though it cannot be enabled")
	}
	p, err := m.Start(1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	g := only(t, parent+"/nixfarm-*")
	write(t, g+"/b0/cpu.stat", "usage_usec 1500000\n")
	u, err := p.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Usage{CPU: 1500 * time.Millisecond, Measured: true}); u != want {
		t.Errorf("%+v, want %+v", u, want)
	}
}

func TestSweepRemovesStaleGroups(t *testing.T) {
	root := t.TempDir()
	cpu, mem := filepath.Join(root, "cpuacct", ParentName), filepath.Join(root, "memory", ParentName)
	for _, d := range []string{cpu, mem} {
		for _, g := range []string{"nixfarm-111-1", "nixfarm-222-3", "nixfarm-111-2/b0", "other", "nixfarm-x-1"} {
			os.MkdirAll(filepath.Join(d, g), 0o755)
		}
	}
	if _, err := newV1(cpu, mem, fakeFS(222), slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{cpu, mem} {
		entries, _ := os.ReadDir(d)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if got := strings.Join(names, " "); got != "nixfarm-222-3 nixfarm-x-1 other" {
			t.Errorf("%s holds %s; want the groups of the dead pid 111 removed, the rest kept", d, got)
		}
	}
}

func TestDetect(t *testing.T) {
	dir := t.TempDir()
	sys := filepath.Join(dir, "sys")
	hybrid := "31 23 0:28 / " + sys + " rw - tmpfs tmpfs rw\n" +
		"32 31 0:29 / " + sys + "/cpu rw - cgroup cgroup rw,cpu\n" +
		"33 31 0:30 / " + sys + "/cpuacct rw - cgroup cgroup rw,cpuacct\n" +
		"35 31 0:32 /outer " + sys + "/memory rw - cgroup cgroup rw,memory\n" +
		"41 31 0:38 / " + sys + "/unified rw - cgroup2 cgroup2 rw\n"
	unified := "41 31 0:38 / " + sys + " rw - cgroup2 cgroup2 rw\n"
	own := "4:memory:/outer/job\n2:cpuacct:/\n1:cpu:/\n0::/svc\n"
	for _, tc := range []struct {
		name, mountinfo, kind string
		want                  []string
	}{
		{"hybrid", hybrid, "cgroup v1", []string{sys + "/cpuacct/nixfarm", sys + "/memory/job/nixfarm"}},
		{"v2", unified, "cgroup v2", []string{sys + "/svc/nixfarm"}},
		{"none", "22 1 0:5 / /proc rw - proc proc rw\n", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			write(t, dir+"/mountinfo", tc.mountinfo)
			write(t, dir+"/cgroup", own)
			m, err := detect(dir+"/mountinfo", dir+"/cgroup", fakeFS(), slog.New(slog.DiscardHandler))
			if tc.kind == "" {
				if err == nil {
					t.Fatalf("detected %s with no cgroups mounted", m.Kind())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.Kind() != tc.kind {
				t.Errorf("kind %s, want %s", m.Kind(), tc.kind)
			}
			for _, d := range tc.want {
				if _, err := os.Stat(d); err != nil {
					t.Errorf("parent group %s not made: %v", d, err)
				}
			}
		})
	}
}

func TestGroupPID(t *testing.T) {
	for name, want := range map[string]int{"nixfarm-12-3": 12, "nixfarm-12": 0, "nixfarm-a-1": 0, "x-12-3": 0, "nixfarm-0-1": 0} {
		if got, _ := groupPID(name); got != want {
			t.Errorf("groupPID(%q) = %d, want %d", name, got, want)
		}
	}
}

func TestUnescape(t *testing.T) {
	if got := unescape(`/a\040b\`); got != `/a b\` {
		t.Errorf("unescape = %q", got)
	}
}
