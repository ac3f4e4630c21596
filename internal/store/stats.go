package store

import (
	"context"
	"fmt"
)

// Stats returns how many objects (one content of one store path) the
// farm store holds and the sum of their NAR sizes: one query, for the
// metrics.
func (s *Local) Stats(ctx context.Context) (paths, bytes int64, err error) {
	if err := s.db.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(nar_size), 0) FROM objects`).Scan(&paths, &bytes); err != nil {
		return 0, 0, fmt.Errorf("counting the store's objects: %w", err)
	}
	return paths, bytes, nil
}
