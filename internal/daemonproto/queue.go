package daemonproto

import "github.com/nixfarm/nixfarm/internal/build"

// Queue implements build.QueueWatcher: where the build waits in the
// farm's queue, in frames every client renders. While it waits, from
// protocol 1.20 on, it is Nix's own build-waiting activity (the one Nix
// opens for "waiting for a machine to build …"), its text the status
// line: `nix build` shows it in its progress line, and nix-build prints
// each one as it starts. A new position or reason replaces the activity
// with another. When a worker starts the build, the activity stops and
// the line naming the worker is a message (STDERR_NEXT), which every
// client prints; before 1.20 every status is such a message.
func (l *buildLog) Queue(st build.QueueStatus) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	if l.waiting != 0 {
		l.f.stopActivity(l.waiting)
		l.waiting = 0
	}
	if st.Started() || minor(l.f.ver) < 20 {
		l.f.next(st.String() + "\n")
		return
	}
	l.waiting, _ = l.f.startActivity(actBuildWaiting, st.String(), nil)
}
