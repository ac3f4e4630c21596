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
type Group struct {
	db *sql.DB

	mu      sync.Mutex
	pending []*groupOp
	writing bool
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
		// No transaction is being written: this caller writes, and goes
		// on writing what arrives meanwhile until nothing is pending.
		g.writing = true
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
	}
	g.mu.Unlock()
	select {
	case <-op.done:
		return op.res, op.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

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
	for _, op := range batch {
		// A failing statement leaves the transaction usable; only its
		// caller sees the error.
		op.res, op.err = tx.ExecContext(ctx, op.query, op.args...)
	}
	if err := tx.Commit(); err != nil {
		finish(fmt.Errorf("committing a write transaction: %w", err))
		return
	}
	finish(nil)
}
