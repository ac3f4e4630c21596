package db

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"path/filepath"
	"testing"
	"time"

	"modernc.org/sqlite"
)

// gateCalls receives a channel from each call of the SQL function
// gate(x), which returns x once that channel is closed: a test holds a
// statement, and the transaction around it, where it wants.
var gateCalls = make(chan chan struct{})

func init() {
	sqlite.MustRegisterScalarFunction("gate", 1, func(_ *sqlite.FunctionContext, args []driver.Value) (driver.Value, error) {
		release := make(chan struct{})
		gateCalls <- release
		<-release
		return args[0], nil
	})
}

func openTest(t *testing.T) *sql.DB {
	t.Helper()
	d, err := Open(context.Background(), filepath.Join(t.TempDir(), "x.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	// Before the database closes, let through statements a failed test
	// left waiting.
	t.Cleanup(func() {
		for {
			select {
			case release := <-gateCalls:
				close(release)
			case <-time.After(100 * time.Millisecond):
				return
			}
		}
	})
	return d
}

const insertBuild = `INSERT INTO builds (drv_path, account, status, queued_at) VALUES ('/nix/store/x.drv', 'a', 0, ?)`

// A caller returns once its own statement is committed, even while other
// callers' statements keep arriving.
func TestGroupCallerReturnsUnderLoad(t *testing.T) {
	ctx := context.Background()
	g := NewGroup(openTest(t))
	first := make(chan error, 1)
	go func() {
		_, err := g.Exec(ctx, `INSERT INTO builds (drv_path, account, status, queued_at) VALUES ('/nix/store/x.drv', 'a', 0, gate(1))`)
		first <- err
	}()
	release := <-gateCalls // the first statement is being written
	// Another statement arrives meanwhile, and is held in its turn: under
	// steady load, some statement is always pending.
	queued, cancel := context.WithCancel(ctx)
	cancel()
	g.Exec(queued, `INSERT INTO builds (drv_path, account, status, queued_at) VALUES ('/nix/store/x.drv', 'a', 0, gate(2))`)
	close(release)
	select {
	case err := <-first:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first caller is still writing other callers' statements")
	}
	close(<-gateCalls)
}

// A statement that rolls back the whole transaction fails its batch: no
// caller is told its statement failed when it is stored, or the reverse.
func TestGroupStatementThatEndsTheTransaction(t *testing.T) {
	ctx := context.Background()
	d := openTest(t)
	if _, err := d.Exec(`INSERT INTO builds (id, drv_path, account, status, queued_at) VALUES (1000, 'x', 'a', 0, 0)`); err != nil {
		t.Fatal(err)
	}
	g := NewGroup(d)
	go g.Exec(ctx, `SELECT gate(0)`)
	release := <-gateCalls // the next statements share a batch
	queries := []string{
		insertBuild,
		// INSERT OR ROLLBACK rolls back the transaction, like an I/O error.
		`INSERT OR ROLLBACK INTO builds (id, drv_path, account, status, queued_at) VALUES (1000, 'x', 'a', 0, ?)`,
		insertBuild,
	}
	errs := make([]chan error, len(queries))
	for i, q := range queries {
		errs[i] = make(chan error, 1)
		go func() {
			_, err := g.Exec(ctx, q, i+1)
			errs[i] <- err
		}()
		for queued := false; !queued; time.Sleep(time.Millisecond) {
			g.mu.Lock()
			queued = len(g.pending) == i+1
			g.mu.Unlock()
		}
	}
	close(release)
	for i := range queries {
		err := <-errs[i]
		var n int
		if err := d.QueryRow(`SELECT count(*) FROM builds WHERE queued_at = ?`, i+1).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if (err == nil) != (n == 1) {
			t.Errorf("statement %d: error %v, %d rows stored", i, err, n)
		}
	}
}
