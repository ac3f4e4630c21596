package metrics

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// SchedulerState is what the scheduler says at a scrape.
type SchedulerState struct {
	// Queues are the classes with queued builds.
	Queues  []QueueDepth
	Workers []WorkerSlots
}

// QueueDepth is how many builds of one class wait.
type QueueDepth struct {
	System   string
	Features []string // required features, sorted
	Queued   int
}

// WorkerSlots is how many of a worker's slots its builds use.
type WorkerSlots struct {
	Name        string
	Used, Total int
}

// Scheduler is the scheduler as the metrics see it.
type Scheduler interface {
	// MetricsState returns the queues and slots. It must be cheap: it is
	// called at every scrape.
	MetricsState() SchedulerState
}

// Store is the farm store as the metrics see it.
type Store interface {
	// Stats returns how many store objects the farm store holds and the
	// sum of their NAR sizes.
	Stats(ctx context.Context) (paths, bytes int64, err error)
}

var (
	queueDepthDesc = prometheus.NewDesc(namespace+"_queue_depth",
		"Builds waiting for a worker, by system and required features (comma-separated, empty for none); classes with none waiting are left out, and beyond the 32 largest, or with a system or feature that is not a name, are summed as the system (other).",
		[]string{"system", "features"}, nil)
	queuedDesc = prometheus.NewDesc(namespace+"_builds_queued",
		"Builds waiting for a worker, in all.", nil, nil)
	runningDesc = prometheus.NewDesc(namespace+"_builds_running",
		"Build attempts running on workers.", nil, nil)
	slotsUsedDesc = prometheus.NewDesc(namespace+"_worker_slots_used",
		"A worker's slots its running builds use, by worker.", []string{"worker"}, nil)
	slotsTotalDesc = prometheus.NewDesc(namespace+"_worker_slots_total",
		"A worker's slots (its max-jobs), by worker.", []string{"worker"}, nil)
	storePathsDesc = prometheus.NewDesc(namespace+"_store_paths",
		"Store objects in the farm store (one content of one store path).", nil, nil)
	storeBytesDesc = prometheus.NewDesc(namespace+"_store_bytes",
		"Sum of the NAR sizes of the farm store's objects, in bytes.", nil, nil)
)

// MaxQueueSeries bounds the series of nixfarm_queue_depth: systems and
// features come from clients' derivations, so only the classes with the
// most builds waiting whose system and features are names (as a worker
// would offer them) are labelled; the rest are summed under
// system="(other)".
const MaxQueueSeries = 32

// WatchScheduler collects the queues and the workers' slots from s at
// each scrape. Call it once, before serving.
func (f *Farm) WatchScheduler(s Scheduler) {
	if f == nil || s == nil {
		return
	}
	f.reg.MustRegister(schedulerCollector{s})
}

type schedulerCollector struct{ s Scheduler }

func (c schedulerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{queueDepthDesc, queuedDesc, runningDesc, slotsUsedDesc, slotsTotalDesc} {
		ch <- d
	}
}

func (c schedulerCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.MetricsState()
	queued, running := 0, 0
	for _, q := range boundedQueues(st.Queues) {
		queued += q.Queued
		ch <- prometheus.MustNewConstMetric(queueDepthDesc, prometheus.GaugeValue, float64(q.Queued), q.System, strings.Join(q.Features, ","))
	}
	for _, w := range st.Workers {
		running += w.Used
		ch <- prometheus.MustNewConstMetric(slotsUsedDesc, prometheus.GaugeValue, float64(w.Used), w.Name)
		ch <- prometheus.MustNewConstMetric(slotsTotalDesc, prometheus.GaugeValue, float64(w.Total), w.Name)
	}
	ch <- prometheus.MustNewConstMetric(queuedDesc, prometheus.GaugeValue, float64(queued))
	ch <- prometheus.MustNewConstMetric(runningDesc, prometheus.GaugeValue, float64(running))
}

// otherQueues is the system label of the classes boundedQueues sums.
const otherQueues = "(other)"

// boundedQueues returns at most MaxQueueSeries of queues, those with the
// most builds waiting whose labels are names, and the sum of the others
// under otherQueues.
func boundedQueues(queues []QueueDepth) []QueueDepth {
	named := make([]QueueDepth, 0, len(queues))
	other := QueueDepth{System: otherQueues}
	for _, q := range queues {
		if labelName(q.System) && len(q.Features) <= 8 && !slices.ContainsFunc(q.Features, func(f string) bool { return !labelName(f) }) {
			named = append(named, q)
		} else {
			other.Queued += q.Queued
		}
	}
	slices.SortStableFunc(named, func(a, b QueueDepth) int { return cmp.Compare(b.Queued, a.Queued) })
	for _, q := range named[min(len(named), MaxQueueSeries):] {
		other.Queued += q.Queued
	}
	named = named[:min(len(named), MaxQueueSeries)]
	if other.Queued > 0 {
		named = append(named, other)
	}
	return named
}

// labelName reports whether s may be a label value: a system or feature
// name as worker.ValidName allows them (1 to 64 letters, digits, '.',
// '_', '+', '-').
func labelName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '+', r == '-':
		default:
			return false
		}
	}
	return true
}

// StoreTTL is how long the store's answer is kept: scrapes, however
// many, query the database at most once per StoreTTL.
const StoreTTL = 10 * time.Second

// WatchStore collects the store's size from s, at most once per StoreTTL
// (now is the clock; nil is time.Now). Call it once, before serving.
func (f *Farm) WatchStore(s Store, now func() time.Time) {
	if f == nil || s == nil {
		return
	}
	if now == nil {
		now = time.Now
	}
	f.reg.MustRegister(&storeCollector{s: s, now: now, f: f})
}

type storeCollector struct {
	s   Store
	now func() time.Time
	f   *Farm

	// mu is held across the query, so that concurrent scrapes wait for
	// one answer rather than each asking the database.
	mu           sync.Mutex
	at           time.Time
	ok           bool
	paths, bytes int64
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- storePathsDesc
	ch <- storeBytesDesc
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	if now := c.now(); c.at.IsZero() || now.Sub(c.at) >= StoreTTL || now.Before(c.at) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		paths, bytes, err := c.s.Stats(ctx)
		cancel()
		// A failure is retried at the next scrape after StoreTTL too,
		// serving the last answer meanwhile.
		c.at = now
		if err != nil {
			c.f.log.Warn("metrics: reading the store's size", "err", err)
		} else {
			c.paths, c.bytes, c.ok = paths, bytes, true
		}
	}
	ok, paths, bytes := c.ok, c.paths, c.bytes
	c.mu.Unlock()
	if !ok {
		return
	}
	ch <- prometheus.MustNewConstMetric(storePathsDesc, prometheus.GaugeValue, float64(paths))
	ch <- prometheus.MustNewConstMetric(storeBytesDesc, prometheus.GaugeValue, float64(bytes))
}
