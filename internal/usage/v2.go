package usage

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// V2 measures with cgroup v2. A session's group nixfarm-<pid>-<n> holds
// one leaf group per build (b0, b1, ...): Start puts the process in b0,
// and each Reset moves it to a new leaf, whose counters start from zero
// (cpu.stat's usage_usec; memory.peak). Leaves are used rather than
// resetting memory.peak by writing to it because that reset only holds
// for reads through the same open file, and only since Linux 6.12.
//
// memory.peak needs the memory controller enabled down to the leaves,
// which the kernel refuses in a group that holds processes (the one
// nixfarm runs in, unless it is the root): then only CPU is measured, and
// peak memory is 0. Running nixfarm in a group of its own that it may
// delegate (systemd's Delegate=yes) with its processes in a leaf avoids
// that.
type V2 struct {
	parent string
	memory bool // the memory controller reaches the sessions' groups
	fs     fsys
}

// NewV2 returns a meter that makes its groups under parent (created if
// missing), after removing those a crashed nixfarm left there.
func NewV2(parent string, log *slog.Logger) (*V2, error) {
	return newV2(parent, realFS(), log)
}

func newV2(parent string, fs fsys, log *slog.Logger) (*V2, error) {
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("making control group %s: %w", parent, err)
	}
	fs.sweep(parent, log)
	m := &V2{parent: parent, fs: fs}
	// Enable memory in the group nixfarm runs in, then in the parent.
	err := enableMemory(filepath.Dir(parent))
	if err == nil {
		err = enableMemory(parent)
	}
	if err != nil {
		log.Warn("cgroup v2: measuring CPU time only; the memory controller cannot be enabled for nixfarm's groups (run nixfarm in a delegated group of its own to measure peak memory)", "err", err)
	} else {
		m.memory = true
	}
	return m, nil
}

// enableMemory enables the memory controller for the groups under dir.
func enableMemory(dir string) error {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return err
	}
	if slices.Contains(strings.Fields(string(data)), "memory") {
		return nil
	}
	return writeFile(filepath.Join(dir, "cgroup.subtree_control"), "+memory")
}

// Kind implements Meter.
func (*V2) Kind() string { return "cgroup v2" }

// Start implements Meter.
func (m *V2) Start(pid int) (Probe, error) {
	p := &v2Probe{dir: filepath.Join(m.parent, groupName()), pid: pid, memory: m.memory, fs: m.fs}
	err := func() error {
		if err := p.fs.mkdir(p.dir); err != nil {
			return fmt.Errorf("making control group: %w", err)
		}
		if p.memory {
			if err := enableMemory(p.dir); err != nil {
				p.memory = false
			}
		}
		return p.enter()
	}()
	if err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

type v2Probe struct {
	dir    string
	pid    int
	memory bool
	fs     fsys

	mu   sync.Mutex
	leaf int // the process's leaf is b<leaf>
}

func (p *v2Probe) leafDir(n int) string { return filepath.Join(p.dir, "b"+strconv.Itoa(n)) }

// enter makes leaf p.leaf and moves the process into it.
func (p *v2Probe) enter() error {
	d := p.leafDir(p.leaf)
	if err := p.fs.mkdir(d); err != nil {
		return fmt.Errorf("making control group: %w", err)
	}
	return writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(p.pid))
}

func (p *v2Probe) Reset() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.leafDir(p.leaf)
	p.leaf++
	if err := p.enter(); err != nil {
		return err
	}
	// Empty unless a process of the last build lingers; Close removes
	// it then.
	p.fs.rmdir(old)
	return nil
}

func (p *v2Probe) Sample() (Usage, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.leafDir(p.leaf)
	us, err := readKey(filepath.Join(d, "cpu.stat"), "usage_usec")
	if err != nil {
		return Usage{}, err
	}
	u := Usage{CPU: time.Duration(us) * time.Microsecond, Measured: true}
	if p.memory {
		if u.PeakMemory, err = readInt(filepath.Join(d, "memory.peak")); err != nil {
			return Usage{}, err
		}
	}
	return u, nil
}

func (p *v2Probe) Close() error {
	if p.memory {
		if n, err := readInt(filepath.Join(p.dir, "memory.current")); err == nil && n > 0 {
			uncharge(filepath.Join(p.dir, "memory.reclaim"), strconv.FormatInt(n, 10))
		}
	}
	return p.fs.removeTree(p.dir)
}
