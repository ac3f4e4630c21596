package usage

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// V1 measures with cgroup v1: a group per session in the cpuacct
// hierarchy (cpuacct.usage, nanoseconds of user and system time) and in
// the memory hierarchy (memory.max_usage_in_bytes, reset by writing 0).
type V1 struct {
	cpuacct, memory string // the parent groups
	fs              fsys
}

// NewV1 returns a meter that makes its groups under the parent groups
// cpuacct and memory (directories in the two hierarchies, created if
// missing), after removing those a crashed nixfarm left there.
func NewV1(cpuacct, memory string, log *slog.Logger) (*V1, error) {
	return newV1(cpuacct, memory, realFS(), log)
}

func newV1(cpuacct, memory string, fs fsys, log *slog.Logger) (*V1, error) {
	for _, dir := range []string{cpuacct, memory} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("making control group %s: %w", dir, err)
		}
		fs.sweep(dir, log)
	}
	return &V1{cpuacct: cpuacct, memory: memory, fs: fs}, nil
}

// Kind implements Meter.
func (*V1) Kind() string { return "cgroup v1" }

// Start implements Meter.
func (m *V1) Start(pid int) (Probe, error) {
	name := groupName()
	p := &v1Probe{cpu: filepath.Join(m.cpuacct, name), mem: filepath.Join(m.memory, name), fs: m.fs}
	err := func() error {
		for _, dir := range []string{p.cpu, p.mem} {
			if err := p.fs.mkdir(dir); err != nil {
				return fmt.Errorf("making control group: %w", err)
			}
			if err := writeFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

type v1Probe struct {
	cpu, mem string
	fs       fsys

	mu   sync.Mutex
	base int64 // cpuacct.usage at the last Reset
}

func (p *v1Probe) Reset() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, err := readInt(filepath.Join(p.cpu, "cpuacct.usage"))
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(p.mem, "memory.max_usage_in_bytes"), "0"); err != nil {
		return err
	}
	p.base = n
	return nil
}

func (p *v1Probe) Sample() (Usage, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, err := readInt(filepath.Join(p.cpu, "cpuacct.usage"))
	if err != nil {
		return Usage{}, err
	}
	peak, err := readInt(filepath.Join(p.mem, "memory.max_usage_in_bytes"))
	if err != nil {
		return Usage{}, err
	}
	return Usage{CPU: time.Duration(max(n-p.base, 0)), PeakMemory: peak, Measured: true}, nil
}

func (p *v1Probe) Close() error {
	uncharge(filepath.Join(p.mem, "memory.force_empty"), "0")
	return errors.Join(p.fs.removeTree(p.cpu), p.fs.removeTree(p.mem))
}
