package worker

// WarmCount returns how many warm sessions e holds.
func (e *Executor) WarmCount() int {
	e.warmMu.Lock()
	defer e.warmMu.Unlock()
	return len(e.warm)
}
