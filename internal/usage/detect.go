package usage

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Detect returns the meter this machine allows: cgroup v1 when its
// cpuacct and memory hierarchies are mounted (on hybrid machines the
// controllers are there), else cgroup v2, else None. Its groups go under
// a group nixfarm in the group this process runs in. Why it falls back
// is logged.
func Detect(log *slog.Logger) Meter {
	if log == nil {
		log = slog.Default()
	}
	m, err := detect("/proc/self/mountinfo", "/proc/self/cgroup", realFS(), log)
	if err != nil {
		log.Warn("CPU time and peak memory of builds will not be measured", "err", err)
		return None{}
	}
	log.Info("measuring CPU time and peak memory of builds", "with", m.Kind())
	return m
}

// mount is a cgroup file system mounted on this machine.
type mount struct {
	dir     string   // where it is mounted
	root    string   // the group that appears there
	v2      bool     // cgroup2
	options []string // v1: its controllers
}

func detect(mountinfo, cgroupFile string, fs fsys, log *slog.Logger) (Meter, error) {
	mounts, err := cgroupMounts(mountinfo)
	if err != nil {
		return nil, err
	}
	own, err := ownGroups(cgroupFile)
	if err != nil {
		return nil, err
	}
	// dirOf is the directory of this process's group in mount m, whose
	// hierarchy is key in /proc/self/cgroup.
	dirOf := func(m mount, key string) string {
		path, ok := own[key]
		if !ok {
			return m.dir
		}
		rel, ok := strings.CutPrefix(path, m.root)
		if !ok {
			return m.dir // outside what is mounted (another namespace)
		}
		return filepath.Join(m.dir, rel)
	}
	var cpuacct, memory, unified *mount
	for i := range mounts {
		m := &mounts[i]
		switch {
		case m.v2:
			unified = m
		case slices.Contains(m.options, "cpuacct") && cpuacct == nil:
			cpuacct = m
		case slices.Contains(m.options, "memory") && memory == nil:
			memory = m
		}
	}
	var v1err error
	if cpuacct != nil && memory != nil {
		m, err := newV1(filepath.Join(dirOf(*cpuacct, "cpuacct"), ParentName), filepath.Join(dirOf(*memory, "memory"), ParentName), fs, log)
		if err == nil {
			return m, nil
		}
		v1err = fmt.Errorf("cgroup v1: %w", err)
	}
	if unified != nil && (cpuacct == nil || memory == nil) {
		m, err := newV2(filepath.Join(dirOf(*unified, ""), ParentName), fs, log)
		if err != nil {
			return nil, fmt.Errorf("cgroup v2: %w", err)
		}
		return m, nil
	}
	if v1err != nil {
		return nil, v1err
	}
	return nil, fmt.Errorf("neither cgroup v2 nor the cgroup v1 cpuacct and memory hierarchies are mounted")
}

// cgroupMounts lists the cgroup file systems in a mountinfo file.
func cgroupMounts(path string) ([]mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		a, b := strings.Fields(pre), strings.Fields(post)
		if !ok || len(a) < 5 || len(b) < 3 {
			continue
		}
		m := mount{root: unescape(a[3]), dir: unescape(a[4])}
		switch b[0] {
		case "cgroup2":
			m.v2 = true
		case "cgroup":
			m.options = strings.Split(b[2], ",")
		default:
			continue
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if c, ok := octal(s[i+1 : i+4]); ok {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func octal(s string) (byte, bool) {
	if len(s) != 3 {
		return 0, false
	}
	var n int
	for _, c := range s {
		if c < '0' || c > '7' {
			return 0, false
		}
		n = n*8 + int(c-'0')
	}
	return byte(n), n < 256
}

// ownGroups reads /proc/self/cgroup: each v1 controller (and "" for v2)
// to this process's group in it.
func ownGroups(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for line := range strings.Lines(string(data)) {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			out[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out, nil
}
