package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The built-in worker builds as users of nixfarm's own group, so the
// machine's Nix keeps all of its build users; given the machine's group,
// it shares them and takes fewer jobs than those free at start.
func TestWorkerBuildUsers(t *testing.T) {
	t.Run("own", func(t *testing.T) {
		f := startFarm(t)
		if !strings.Contains(f.logs(), `msg="build users" worker=local group=nixfarmbld jobs=4 shared=false members=`) {
			t.Errorf("the farm did not say which build users it uses:\n%s", f.logs())
		}
		uid := builderUID(t, f)
		if members := groupUIDs(t, "nixfarmbld"); !slices.Contains(members, uid) {
			t.Errorf("the builder ran as uid %d, not as one of nixfarmbld's %v", uid, members)
		}
		if slices.Contains(groupUIDs(t, "nixbld"), uid) {
			t.Errorf("the builder ran as uid %d, one of the machine's nixbld users", uid)
		}
	})
	t.Run("shared", func(t *testing.T) {
		f := startFarm(t, "--build-users-group", "nixbld", "--local-jobs", "64")
		m := regexp.MustCompile(`msg="build users" worker=local group=nixbld jobs=(\d+) shared=true members=(\d+) free=(\d+)`).FindStringSubmatch(f.logs())
		if m == nil {
			t.Fatalf("the farm did not say it shares nixbld:\n%s", f.logs())
		}
		jobs, _ := strconv.Atoi(m[1])
		members, _ := strconv.Atoi(m[2])
		free, _ := strconv.Atoi(m[3])
		// Capped below the users free at start, so the machine keeps one.
		if members != len(groupUIDs(t, "nixbld")) || free > members || jobs != max(1, min(64, free-1)) {
			t.Errorf("%d jobs, %d members, %d free", jobs, members, free)
		}
		if !strings.Contains(f.logs(), "fewer jobs than asked for") {
			t.Errorf("the farm did not warn that it took fewer jobs")
		}
		if uid := builderUID(t, f); !slices.Contains(groupUIDs(t, "nixbld"), uid) {
			t.Errorf("the builder ran as uid %d, not as a nixbld user", uid)
		}
	})
}

// builderUID starts a build on the farm and returns the uid its builder
// runs as, read from /proc while it runs.
func builderUID(t *testing.T, f *farm) int {
	t.Helper()
	c := newClient(t)
	marker := fmt.Sprintf("nixfarm-uid-probe-%d", time.Now().UnixNano())
	file := c.expr("uid", fmt.Sprintf(`mk { name = "uid"; args = ["-c" "sleep 3 # %s\necho > $out"]; }`, marker))
	done := make(chan result, 1)
	go func() { done <- c.build(f, "ssh-ng", file) }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if uid, ok := processUID(marker); ok {
			if r := <-done; r.err != nil {
				t.Fatalf("the probe build failed: %v\n%s", r.err, r.stderr)
			}
			return uid
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no builder process with %s appeared:\n%s", marker, f.logs())
	return -1
}

// processUID finds a process whose command line holds marker and returns
// its real uid as this machine sees it.
func processUID(marker string) (int, bool) {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		cmdline, err := os.ReadFile(d + "/cmdline")
		if err != nil || !strings.Contains(string(cmdline), marker) || strings.Contains(string(cmdline), "nix-build") {
			continue
		}
		status, err := os.ReadFile(d + "/status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
				uid, err := strconv.Atoi(f[1])
				return uid, err == nil
			}
		}
	}
	return 0, false
}

// groupUIDs lists the uids of a group's members.
func groupUIDs(t *testing.T, group string) []int {
	t.Helper()
	out, err := exec.Command("getent", "group", group).Output()
	if err != nil {
		t.Fatalf("getent group %s: %v", group, err)
	}
	fields := strings.Split(strings.TrimSpace(string(out)), ":")
	var uids []int
	for _, name := range strings.Split(fields[len(fields)-1], ",") {
		pw, err := exec.Command("getent", "passwd", name).Output()
		if err != nil {
			t.Fatalf("getent passwd %s: %v", name, err)
		}
		uid, _ := strconv.Atoi(strings.Split(string(pw), ":")[2])
		uids = append(uids, uid)
	}
	return uids
}

// Mixed local and remote building on one machine: a client with its own
// /nix/store builds 32 derivations with 8 local jobs and the farm as an
// 8-job builder, as Nix does by default when max-jobs > 0. The client and
// the farm's worker draw from the one pool of build users the machine has
// (/nix/var/nix/userpool); had the worker taken the client's nixbld
// users, Nix 2.8 could abort with "Assertion 'uid != 0' failed" in
// killUser once they ran out.
func TestMixedLocalAndRemote(t *testing.T) { forClients(t, testMixedLocalAndRemote) }

func testMixedLocalAndRemote(t *testing.T, v *nixVersion) {
	f := startFarm(t)
	c := newClientOf(t, v)
	nonce := strconv.FormatInt(time.Now().UnixNano(), 36)
	file := c.expr("mixed", fmt.Sprintf(`builtins.genList (i: mk { name = "mixed-%s-${toString i}"; args = ["-c" "sleep 0.5; echo ${toString i} > $out"]; }) 32`, nonce))
	builders := fmt.Sprintf("ssh-ng://nixfarm x86_64-linux - 4 1 - - %s", f.hostKeyB64)
	r := c.exec(f, "nix-build", "--store", c.store, "--option", "substituters", "", "-j", "8", "--builders", builders, "--no-out-link", file)
	if r.err != nil {
		t.Fatalf("%s: mixed build: %v\n%s\nfarm:\n%s", v.name, r.err, r.stderr, f.logs())
	}
	outs := strings.Fields(r.out)
	if len(outs) != 32 {
		t.Fatalf("%d outputs, want 32", len(outs))
	}
	for _, o := range outs {
		c.verify(o)
		name := o[strings.LastIndex(o, "-")+1:]
		if got := strings.TrimSpace(c.read(o)); got != name {
			t.Errorf("%s holds %q", o, got)
		}
	}
	remote := f.countBuiltLike("mixed-" + nonce)
	t.Logf("%s: %d built on the farm, %d by the client itself", v.name, remote, 32-remote)
	if remote == 0 || remote == 32 {
		t.Errorf("the build was not mixed: %d of 32 on the farm", remote)
	}
}
