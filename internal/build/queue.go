package build

import (
	"fmt"
	"io"
	"time"
)

// QueueStatus is where a queued build stands, as the scheduler publishes
// it to Request.OnQueue: its position among the builds of its class, why
// it cannot start yet, and when it might. Once Worker is set, the build
// has started on that worker.
type QueueStatus struct {
	// Position is 1 for the next build of its class to start.
	Position int
	// Class names what the build needs: "x86_64-linux", or
	// "x86_64-linux with {kvm}".
	Class string
	// Reason says why it waits ("all 3 x86_64-linux workers busy").
	Reason string
	// Estimate is the expected wait until it starts, from recent build
	// durations of its class and the elapsed times of running builds;
	// EstimateKnown is false when there is no history to go by.
	Estimate      time.Duration
	EstimateKnown bool
	// Worker, once set, names the worker that started the build, after
	// Waited in the queue; Attempt counts from 1.
	Worker  string
	Waited  time.Duration
	Attempt int
}

// Started reports whether the status is a worker starting the build.
func (s QueueStatus) Started() bool { return s.Worker != "" }

// Same reports whether s says what t says for a client: the same
// position and reason, or the same start. The estimate drifts with the
// clock and is not compared.
func (s QueueStatus) Same(t QueueStatus) bool {
	return s.Position == t.Position && s.Reason == t.Reason && s.Worker == t.Worker && s.Attempt == t.Attempt
}

// EstimateText renders the estimate: "in 4 s", "in 3 min", or "unknown".
func (s QueueStatus) EstimateText() string {
	if !s.EstimateKnown {
		return "unknown"
	}
	return "in " + Seconds(s.Estimate)
}

// String is the line a client reads, without a trailing newline.
func (s QueueStatus) String() string {
	if s.Started() {
		line := fmt.Sprintf("nixfarm: building on worker %s (waited %s)", s.Worker, Seconds(s.Waited))
		if s.Attempt > 1 {
			line = fmt.Sprintf("nixfarm: building on worker %s, attempt %d (waited %s)", s.Worker, s.Attempt, Seconds(s.Waited))
		}
		return line
	}
	return fmt.Sprintf("nixfarm: queued at position %d for %s: %s; estimated start %s", s.Position, s.Class, s.Reason, s.EstimateText())
}

// Seconds renders a duration for people: "0 s", "12 s", "3 min 20 s".
func Seconds(d time.Duration) string {
	secs := int64((d + time.Second/2) / time.Second)
	if secs < 0 {
		secs = 0
	}
	if secs < 120 {
		return fmt.Sprintf("%d s", secs)
	}
	if secs%60 == 0 || secs >= 3600 {
		return fmt.Sprintf("%d min", (secs+30)/60)
	}
	return fmt.Sprintf("%d min %d s", secs/60, secs%60)
}

// QueueWatcher is a build log (Logs.BuildLog) that shows its client
// where the build waits: Realise makes its Queue the OnQueue of the
// build's request.
type QueueWatcher interface {
	Queue(QueueStatus)
}

// Queue implements QueueWatcher: the status as a line of the log.
func (l nopCloser) Queue(st QueueStatus) { io.WriteString(l.Writer, st.String()+"\n") }
