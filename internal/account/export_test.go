package account

import "time"

// SetClock replaces s's clock, for tests.
func SetClock(s *Service, now func() time.Time) { s.now = now }
