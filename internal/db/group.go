package db

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
)

// Group runs write statements with group commit: statements that arrive
// while a transaction is being written are committed together in the
// next one. Each caller still waits for its own statement to be
// committed, so nothing is acknowledged before it is stored; under load,
// one write transaction serves many callers instead of one each.
//
// The transactions are written by a goroutine that runs while statements
// are pending, so no caller waits longer than its own statement needs.
type Group struct {
	db *sql.DB

	mu      sync.Mutex
	pending []*groupOp
	writing bool // the writer goroutine runs
}

type groupOp struct {
	query string
	args  []any
	res   sql.Result
	err   error
	done  chan struct{}
}

// maxGroup bounds how many statements share one transaction.
const maxGroup = 512

// NewGroup returns a Group writing to d.
func NewGroup(d *sql.DB) *Group { return &Group{db: d} }

// Exec runs query in the next group transaction and waits for it to be
// committed. The statement's own error, or the transaction's, is
// returned. ctx bounds only the wait: a statement once queued is written.
func (g *Group) Exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	op := &groupOp{query: query, args: args, done: make(chan struct{})}
	g.mu.Lock()
	g.pending = append(g.pending, op)
	if !g.writing {
		g.writing = true
		go g.write()
	}
	g.mu.Unlock()
	select {
	case <-op.done:
		return op.res, op.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// write commits the pending statements, in batches, until none is left.
func (g *Group) write() {
	g.mu.Lock()
	for len(g.pending) > 0 {
		n := min(len(g.pending), maxGroup)
		batch := g.pending[:n:n]
		g.pending = g.pending[n:]
		g.mu.Unlock()
		g.commit(batch)
		g.mu.Lock()
	}
	g.pending = nil
	g.writing = false
	g.mu.Unlock()
}

// commit runs a batch in one transaction. Each statement runs in its own
// savepoint, so a failing one is undone alone and fails only its caller.
// If it takes the whole transaction with it, as SQLite may on
// SQLITE_FULL, SQLITE_IOERR or SQLITE_NOMEM, the whole batch fails.
func (g *Group) commit(batch []*groupOp) {
	finish := func(err error) {
		for _, op := range batch {
			if op.err == nil && err != nil {
				op.res, op.err = nil, err
			}
			close(op.done)
		}
	}
	ctx := context.Background()
	tx, err := g.db.BeginTx(ctx, nil)
	if err != nil {
		finish(fmt.Errorf("beginning a write transaction: %w", err))
		return
	}
	defer tx.Rollback()
	// The savepoint statements are prepared once: they run twice per
	// statement of the batch.
	savepoint, err := tx.PrepareContext(ctx, `SAVEPOINT op`)
	if err != nil {
		finish(fmt.Errorf("writing a transaction: %w", err))
		return
	}
	release, err := tx.PrepareContext(ctx, `RELEASE op`)
	if err != nil {
		finish(fmt.Errorf("writing a transaction: %w", err))
		return
	}
	for _, op := range batch {
		if _, err := savepoint.ExecContext(ctx); err != nil {
			finish(fmt.Errorf("writing a transaction: %w", err))
			return
		}
		op.res, op.err = tx.ExecContext(ctx, op.query, op.args...)
		if op.err != nil {
			if _, err := tx.ExecContext(ctx, `ROLLBACK TO op`); err != nil {
				finish(fmt.Errorf("write transaction lost after a failed statement (%w): %w", op.err, err))
				return
			}
		}
		if _, err := release.ExecContext(ctx); err != nil {
			finish(fmt.Errorf("writing a transaction: %w", err))
			return
		}
	}
	if err := tx.Commit(); err != nil {
		finish(fmt.Errorf("committing a write transaction: %w", err))
		return
	}
	finish(nil)
}
