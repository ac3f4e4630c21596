package coordinator

import (
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
)

// QueueUpdateEvery is how often, at most, a waiting client is told that
// its build's place in the queue changed.
const QueueUpdateEvery = 2 * time.Second

// queueFeed is a build's latest queue status, as the scheduler publishes
// it (build.Request.OnQueue), for every client waiting for the build.
// publish only stores and signals; each client's own goroutine (follow)
// writes to it, so neither the scheduler nor another client waits for a
// slow one.
type queueFeed struct {
	mu      sync.Mutex
	st      build.QueueStatus
	set     bool
	changed chan struct{} // closed and replaced at each publish
}

func newQueueFeed() *queueFeed { return &queueFeed{changed: make(chan struct{})} }

// publish is the scheduler's OnQueue hook for the build.
func (q *queueFeed) publish(st build.QueueStatus) {
	q.mu.Lock()
	q.st, q.set = st, true
	close(q.changed)
	q.changed = make(chan struct{})
	q.mu.Unlock()
}

// follow calls fn, from a goroutine of its own, with each status that
// says something new (position, reason, start), at most once per every
// for the queued ones. A client is told of a start only if it was told
// that the build waited: a build that starts at once adds no line. It
// returns a function that stops following and waits for fn to return.
func (q *queueFeed) follow(fn func(build.QueueStatus), every time.Duration) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		var last build.QueueStatus
		told := false // a queued status was given since the last start
		var lastAt time.Time
		for {
			q.mu.Lock()
			st, set, changed := q.st, q.set, q.changed
			q.mu.Unlock()
			var timer *time.Timer
			var wait <-chan time.Time
			switch {
			case !set || (last.Same(st) && (told || st.Started())):
			case st.Started():
				if told {
					fn(st)
				}
				last, told = st, false
			default:
				if d := every - time.Since(lastAt); d > 0 {
					timer = time.NewTimer(d)
					wait = timer.C
					break
				}
				fn(st)
				last, told, lastAt = st, true, time.Now()
			}
			select {
			case <-changed:
			case <-wait:
			case <-quit:
				return
			}
			if timer != nil {
				timer.Stop()
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}
