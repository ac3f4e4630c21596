// Package usage measures the resources a build uses: the CPU time (user
// and system) and the peak memory of the process tree of the
// `nix-store --serve` session that runs it, builder included. A Meter
// puts a freshly started session's process in a control group of its own
// (every process it forks afterwards, such as Nix's builder, inherits
// it) and a Probe reads that group's counters: cgroup v1 (the cpuacct and
// memory hierarchies) or cgroup v2, whichever the machine has; without
// either, usage is unknown.
//
// A probe measures from its Reset (or its Start) on, so a session that
// serves several builds in turn yields each build's own figures: CPU as
// the difference of the counter, the peak reset at each build's start.
//
// The groups are named nixfarm-<pid>-<n> under a parent group nixfarm
// (in the group nixfarm itself runs in), removed when their session ends;
// those a crashed nixfarm left behind are removed when a Meter is made.
package usage

import (
	"time"
)

// Usage is what a build used.
type Usage struct {
	// CPU is user plus system time of the whole process tree.
	CPU time.Duration
	// PeakMemory is the most memory, in bytes, the tree used at once
	// (as the kernel counts it for a control group: page cache
	// included). 0 if only CPU could be measured.
	PeakMemory int64
	// Measured is false when nothing could be measured: the figures are
	// then unknown, not zero.
	Measured bool
}

// Meter starts measuring processes.
type Meter interface {
	// Start moves the process pid, which must not have forked yet, into
	// a control group of its own, and measures it and its descendants
	// from now on.
	Start(pid int) (Probe, error)
	// Kind names the mechanism, for logs: "cgroup v1", "cgroup v2" or
	// "none".
	Kind() string
}

// Probe measures one process tree.
type Probe interface {
	// Reset starts a new measurement: a build begins.
	Reset() error
	// Sample returns the usage since the last Reset, or since Start. It
	// may be called after the processes have ended, before Close.
	Sample() (Usage, error)
	// Close removes the control group; call it once the processes have
	// ended.
	Close() error
}

// None measures nothing: every Sample is unknown.
type None struct{}

// Start implements Meter.
func (None) Start(int) (Probe, error) { return none{}, nil }

// Kind implements Meter.
func (None) Kind() string { return "none" }

type none struct{}

func (none) Reset() error           { return nil }
func (none) Sample() (Usage, error) { return Usage{}, nil }
func (none) Close() error           { return nil }
