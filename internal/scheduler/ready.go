package scheduler

// Running reports whether the scheduler places builds: it was not closed
// and its timer loop (grace periods, retries, quarantines) still runs.
// The API's /readyz asks it.
func (s *Scheduler) Running() bool {
	select {
	case <-s.done:
		return false
	default:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.closed
}
