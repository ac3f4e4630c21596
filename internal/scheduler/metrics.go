package scheduler

import "github.com/nixfarm/nixfarm/internal/metrics"

// MetricsState returns what the metrics sample at a scrape: the classes
// with queued builds and each worker's slots. It holds the scheduler's
// lock only to copy counts it keeps already.
func (s *Scheduler) MetricsState() metrics.SchedulerState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := metrics.SchedulerState{Workers: make([]metrics.WorkerSlots, 0, len(s.sorted))}
	for _, c := range s.classes {
		if c.queued > 0 {
			st.Queues = append(st.Queues, metrics.QueueDepth{System: c.system, Features: c.required, Queued: c.queued})
		}
	}
	for _, w := range s.sorted {
		st.Workers = append(st.Workers, metrics.WorkerSlots{Name: w.Name, Used: len(w.running), Total: w.Caps.MaxJobs})
	}
	return st
}
