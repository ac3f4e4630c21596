package server

import (
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/scheduler"
)

// queueSnapshotTTL is how long one listing of the queue answers
// /api/v1/queue and the dashboard.
var queueSnapshotTTL = time.Second

// queueSnapshot shares the scheduler's queue listing among the requests
// of a moment: working it out holds the scheduler's lock for a time that
// grows with the queue, and /api/v1/queue is served to anyone. Callers
// must not change what get returns.
type queueSnapshot struct {
	queue func() []scheduler.ClassQueue
	now   func() time.Time

	// mu is held while the listing is worked out, so that concurrent
	// requests wait for one rather than each asking the scheduler.
	mu   sync.Mutex
	at   time.Time
	last []scheduler.ClassQueue
}

func (q *queueSnapshot) get() []scheduler.ClassQueue {
	q.mu.Lock()
	defer q.mu.Unlock()
	if now := q.now(); q.last == nil || now.Sub(q.at) >= queueSnapshotTTL || now.Before(q.at) {
		q.last, q.at = q.queue(), now
	}
	return q.last
}

// sharedQueue is the farm's one queueSnapshot (nil without a scheduler).
func (f *Farm) sharedQueue() *queueSnapshot {
	f.queueOnce.Do(func() {
		if f.sched != nil {
			f.queue = &queueSnapshot{queue: f.sched.Queue, now: time.Now}
		}
	})
	return f.queue
}

// snapshotFarm is the scheduler as the dashboard reads it, the queue from
// a queueSnapshot.
type snapshotFarm struct {
	*scheduler.Scheduler
	queue *queueSnapshot
}

func (f snapshotFarm) Queue() []scheduler.ClassQueue { return f.queue.get() }
