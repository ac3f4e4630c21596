package scheduler

import (
	"cmp"
	"container/heap"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Queue feedback: where each queued build stands (its position among the
// builds of its class, the accounts served in turn), why it waits, and
// when it might start. The statuses are worked out under s.mu, from
// memory only, and posted to a publisher whose goroutine calls the
// builds' OnQueue hooks with no lock held: a slow hook never holds up
// dispatch.

// historySize is how many recent build durations of a class the
// estimates go by.
const historySize = 20

// publishEvery is how often statuses are worked out again when nothing
// changed but the clock (countdowns, estimates).
const publishEvery = time.Second

// maxEstimated bounds the positions given an estimate.
const maxEstimated = 10000

func (s *Scheduler) now() time.Time { return s.cfg.Now() }

// record notes a successful build's duration.
func (c *class) record(d time.Duration) {
	if len(c.durations) < historySize {
		c.durations = append(c.durations, d)
		return
	}
	c.durations[c.nextDur] = d
	c.nextDur = (c.nextDur + 1) % historySize
}

// typical is the mean duration of the class's recent builds.
func (c *class) typical() (time.Duration, bool) {
	if len(c.durations) == 0 {
		return 0, false
	}
	var sum time.Duration
	for _, d := range c.durations {
		sum += d
	}
	return sum / time.Duration(len(c.durations)), true
}

// name is the class for people: "x86_64-linux", "x86_64-linux with {kvm}".
func (c *class) name() string {
	if len(c.required) == 0 {
		return c.system
	}
	return fmt.Sprintf("%s with {%s}", c.system, strings.Join(c.required, ", "))
}

// waiting is one queued build and its status.
type waiting struct {
	j  *job
	st build.QueueStatus
}

// statusesLocked works out the status of every queued build, by class
// (in the order classes first appear in the accounts' turn), each class's
// builds by position.
func (s *Scheduler) statusesLocked(now time.Time) [][]waiting {
	// Each class's builds, per account, the accounts in the order of
	// their turns from the one whose turn is next.
	type perAccount struct{ jobs []*job }
	byClass := map[*class][]*perAccount{}
	var classes []*class
	for i := range s.order {
		a := s.accounts[s.order[(s.next+i)%len(s.order)]]
		for _, key := range a.order {
			q := a.classes[key]
			var jobs []*job
			q.each(func(j *job) { jobs = append(jobs, j) })
			if len(jobs) == 0 {
				continue
			}
			slices.SortFunc(jobs, func(x, y *job) int { return cmp.Compare(x.seq, y.seq) })
			if _, ok := byClass[q.class]; !ok {
				classes = append(classes, q.class)
			}
			byClass[q.class] = append(byClass[q.class], &perAccount{jobs: jobs})
		}
	}
	out := make([][]waiting, 0, len(classes))
	for _, c := range classes {
		// Positions: the accounts' builds interleaved, one each per turn.
		var list []waiting
		accts := byClass[c]
		for round := 0; len(accts) > 0; round++ {
			kept := accts[:0]
			for _, pa := range accts {
				if round < len(pa.jobs) {
					list = append(list, waiting{j: pa.jobs[round]})
					kept = append(kept, pa)
				}
			}
			accts = kept
		}
		starts := s.estimatesLocked(c, len(list), now)
		busy := s.busyReasonLocked(c, now)
		for i := range list {
			j := list[i].j
			st := build.QueueStatus{Position: i + 1, Class: c.name()}
			if i < len(starts) {
				st.Estimate, st.EstimateKnown = starts[i], true
			}
			switch capRunning := s.caps[j.req.Account].MaxRunning; {
			case !s.anyCanBuildLocked(c):
				left := s.cfg.UnbuildableGrace
				if !c.unbuildableSince.IsZero() {
					left -= now.Sub(c.unbuildableSince)
				}
				st.Reason = fmt.Sprintf("%s; waiting %s more before failing", s.nobodyOffersLocked(c), build.Seconds(max0(left)))
				st.Estimate, st.EstimateKnown = 0, false
			case j.notBefore.After(now):
				st.Reason = fmt.Sprintf("retrying after a failed attempt in %s", build.Seconds(j.notBefore.Sub(now)))
				if st.EstimateKnown {
					st.Estimate = max(st.Estimate, j.notBefore.Sub(now))
				}
			case capRunning > 0 && s.running[j.req.Account] >= capRunning:
				st.Reason = fmt.Sprintf("account limit max-concurrent-builds (%d) reached", capRunning)
				st.Estimate, st.EstimateKnown = 0, false
			case busy != "":
				st.Reason = busy
			case i > 0:
				st.Reason = fmt.Sprintf("%d builds of %s ahead of it", i, c.name())
			default:
				st.Reason = "starting"
			}
			list[i].st = st
		}
		out = append(out, list)
	}
	return out
}

// busyReasonLocked says why no worker takes a build of c now, or "" if
// one has a free slot.
func (s *Scheduler) busyReasonLocked(c *class, now time.Time) string {
	var eligible []*workerState
	quarantined := 0
	for _, w := range s.sorted {
		if !w.Caps.CanBuild(c.system, c.required) {
			continue
		}
		if w.quarantinedUntil.After(now) {
			quarantined++
		} else if len(w.running) < w.Caps.MaxJobs {
			return ""
		}
		eligible = append(eligible, w)
	}
	state := "busy"
	if quarantined > 0 {
		state = "busy or quarantined"
	}
	if len(eligible) == 1 {
		return fmt.Sprintf("the only %s worker, %s, is %s", c.name(), eligible[0].Name, state)
	}
	return fmt.Sprintf("all %d %s workers %s", len(eligible), c.name(), state)
}

// nobodyOffersLocked says what of c no worker offers.
func (s *Scheduler) nobodyOffersLocked(c *class) string {
	for _, w := range s.sorted {
		if w.Caps.CanBuild(c.system, nil) {
			if len(c.required) == 0 {
				break // it has mandatory features the build lacks
			}
			return fmt.Sprintf("no %s worker offers {%s}", c.system, strings.Join(c.required, ", "))
		}
	}
	return "no worker offers " + c.name()
}

// estimatesLocked returns the expected wait of the first n builds of c
// in line (fewer, or none, when it cannot tell): the eligible workers'
// slots free up as their running builds reach the typical duration of
// their class, and each slot then takes the queued builds in turn, each
// for the typical duration of c. Builds of other classes queued for the
// same workers are not counted.
func (s *Scheduler) estimatesLocked(c *class, n int, now time.Time) []time.Duration {
	typical, ok := c.typical()
	if !ok || n == 0 {
		return nil
	}
	var slots durHeap
	for _, w := range s.sorted {
		if !w.Caps.CanBuild(c.system, c.required) || w.quarantinedUntil.After(now) {
			continue
		}
		for rj := range w.running {
			d, ok := rj.class.typical()
			if !ok {
				d = typical
			}
			slots = append(slots, max0(d-now.Sub(rj.started)))
		}
		for i := len(w.running); i < w.Caps.MaxJobs; i++ {
			slots = append(slots, 0)
		}
	}
	if len(slots) == 0 {
		return nil
	}
	heap.Init(&slots)
	out := make([]time.Duration, 0, min(n, maxEstimated))
	for len(out) < n && len(out) < maxEstimated {
		t := heap.Pop(&slots).(time.Duration)
		out = append(out, t)
		heap.Push(&slots, t+typical)
	}
	return out
}

type durHeap []time.Duration

func (h durHeap) Len() int           { return len(h) }
func (h durHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h durHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *durHeap) Push(x any)        { *h = append(*h, x.(time.Duration)) }
func (h *durHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func max0(d time.Duration) time.Duration { return max(d, 0) }

// publishLocked posts the statuses of watched queued builds that changed
// (position or reason) since they were last posted: when the queue
// changed, or every publishEvery for the clock's sake.
func (s *Scheduler) publishLocked(now time.Time) {
	if s.watched == 0 || (!s.dirty && now.Sub(s.lastPublish) < publishEvery) {
		return
	}
	s.dirty, s.lastPublish = false, now
	for _, list := range s.statusesLocked(now) {
		for _, w := range list {
			if w.j.req.OnQueue == nil || (w.j.published.Position != 0 && w.j.published.Same(w.st)) {
				continue
			}
			w.j.published = w.st
			s.pub.post(w.j, w.st)
		}
	}
}

// publisher calls OnQueue hooks on a goroutine of its own, with no lock
// held. It keeps only the latest status of each build not yet delivered,
// so a hook that blocks holds up other hooks, never the scheduler, and
// what waits for it stays bounded by the builds.
type publisher struct {
	mu      sync.Mutex
	pending map[*job]build.QueueStatus
	order   []*job
	wake    chan struct{}
}

func newPublisher() *publisher {
	return &publisher{pending: map[*job]build.QueueStatus{}, wake: make(chan struct{}, 1)}
}

// post queues st for j's hook; it only takes p.mu.
func (p *publisher) post(j *job, st build.QueueStatus) {
	if j.req.OnQueue == nil {
		return
	}
	p.mu.Lock()
	if _, ok := p.pending[j]; !ok {
		p.order = append(p.order, j)
	}
	p.pending[j] = st
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *publisher) run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-p.wake:
		}
		p.mu.Lock()
		pending, order := p.pending, p.order
		p.pending, p.order = map[*job]build.QueueStatus{}, nil
		p.mu.Unlock()
		for _, j := range order {
			j.req.OnQueue(pending[j])
		}
	}
}

// QueuedBuild is one build waiting for a worker, for the queue listing.
type QueuedBuild struct {
	DrvPath  storepath.Path `json:"drvPath,omitempty"`
	Account  string         `json:"account,omitempty"`
	Position int            `json:"position"`
	Reason   string         `json:"reason"`
	// EstimatedStartSeconds is null when unknown.
	EstimatedStartSeconds *float64 `json:"estimatedStartSeconds"`
	WaitedSeconds         float64  `json:"waitedSeconds"`
	Attempts              int      `json:"attempts"`
}

// ClassQueue is the queued builds of one class, by position.
type ClassQueue struct {
	Class    string        `json:"class"`
	System   string        `json:"system"`
	Features []string      `json:"features"`
	Builds   []QueuedBuild `json:"builds"`
}

// Queue lists the queued builds by class, each with its position, the
// reason it waits and its estimated start.
func (s *Scheduler) Queue() []ClassQueue {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	out := []ClassQueue{}
	for _, list := range s.statusesLocked(now) {
		c := list[0].j.class
		cq := ClassQueue{Class: c.name(), System: c.system, Features: append([]string{}, c.required...), Builds: make([]QueuedBuild, len(list))}
		for i, w := range list {
			b := QueuedBuild{DrvPath: w.j.req.DrvPath, Account: w.j.req.Account, Position: w.st.Position, Reason: w.st.Reason,
				WaitedSeconds: now.Sub(w.j.queuedAt).Seconds(), Attempts: w.j.attempts}
			if w.st.EstimateKnown {
				e := w.st.Estimate.Seconds()
				b.EstimatedStartSeconds = &e
			}
			cq.Builds[i] = b
		}
		out = append(out, cq)
	}
	return out
}
