package scheduler

import (
	"strings"
	"time"
)

// class groups builds that the same workers can take: one system and one
// set of required features. Placement decisions are made per class, so
// their cost grows with the number of classes, not of queued builds.
type class struct {
	key      string
	system   string
	required []string
	// unbuildableSince is when the farm was first seen without any
	// worker able to take this class (zero while one exists).
	unbuildableSince time.Time
	// queued counts the class's builds in the accounts' queues.
	queued int
	// durations holds how long its latest successful builds took
	// (a ring of historySize), for the queue's estimates.
	durations []time.Duration
	nextDur   int
}

func classKey(system string, required []string) string {
	return system + "|" + strings.Join(required, ",")
}

// classQueue is one account's builds of one class: new builds in the
// order they came, and builds waiting to be retried.
type classQueue struct {
	class   *class
	jobs    []*job // FIFO from head; removed jobs are skipped lazily
	head    int
	retries []*job // each waits until its notBefore
}

func (q *classQueue) push(j *job) { q.jobs = append(q.jobs, j) }

// ready returns the next build that may start now, without removing it.
func (q *classQueue) ready(now time.Time) *job {
	var best *job
	for _, j := range q.retries {
		if !j.notBefore.After(now) && (best == nil || j.seq < best.seq) {
			best = j
		}
	}
	for q.head < len(q.jobs) && q.jobs[q.head].removed {
		q.jobs[q.head] = nil
		q.head++
	}
	if q.head < len(q.jobs) {
		if j := q.jobs[q.head]; best == nil || j.seq < best.seq {
			best = j
		}
	}
	q.compact()
	return best
}

// remove takes j out of the queue.
func (q *classQueue) remove(j *job) {
	for i, r := range q.retries {
		if r == j {
			q.retries = append(q.retries[:i], q.retries[i+1:]...)
			return
		}
	}
	if q.head < len(q.jobs) && q.jobs[q.head] == j {
		q.jobs[q.head] = nil
		q.head++
		q.compact()
		return
	}
	j.removed = true // skipped when it reaches the head
}

func (q *classQueue) compact() {
	if q.head > 64 && q.head*2 > len(q.jobs) {
		q.jobs = append(q.jobs[:0], q.jobs[q.head:]...)
		q.head = 0
	}
}

func (q *classQueue) empty() bool {
	if len(q.retries) > 0 {
		return false
	}
	for q.head < len(q.jobs) && q.jobs[q.head].removed {
		q.jobs[q.head] = nil
		q.head++
	}
	return q.head >= len(q.jobs)
}

// waitedSince appends to dst the queued builds enqueued at or before t.
// New builds are in the order they came, so it looks no further than the
// first younger one.
func (q *classQueue) waitedSince(t time.Time, dst []*job) []*job {
	for _, j := range q.retries {
		if !j.enqueued.After(t) {
			dst = append(dst, j)
		}
	}
	for _, j := range q.jobs[q.head:] {
		if j.removed {
			continue
		}
		if j.enqueued.After(t) {
			break
		}
		dst = append(dst, j)
	}
	return dst
}

// accountQueue is one account's queued builds, by class.
type accountQueue struct {
	classes map[string]*classQueue
	order   []string // class keys in the order they first appeared
	queued  int      // builds in its queues
}

// each calls f for every queued build, in no particular order.
func (q *classQueue) each(f func(*job)) {
	for _, j := range q.retries {
		f(j)
	}
	for _, j := range q.jobs[q.head:] {
		if !j.removed {
			f(j)
		}
	}
}
