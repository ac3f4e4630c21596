package db_test

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nixfarm/nixfarm/internal/db"
)

func TestGroupCommitsConcurrentWrites(t *testing.T) {
	ctx := context.Background()
	d, err := db.Open(ctx, filepath.Join(t.TempDir(), "x.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	g := db.NewGroup(d)
	const n = 300
	var wg sync.WaitGroup
	ids := make([]int64, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%10 == 9 {
				// A statement that fails must fail alone.
				_, errs[i] = g.Exec(ctx, `INSERT INTO no_such_table VALUES (1)`)
				return
			}
			res, err := g.Exec(ctx, `INSERT INTO builds (drv_path, account, status, queued_at) VALUES (?, 'a', 0, ?)`,
				"/nix/store/x.drv", i)
			if err != nil {
				errs[i] = err
				return
			}
			ids[i], errs[i] = res.LastInsertId()
		}()
	}
	wg.Wait()
	seen := map[int64]bool{}
	for i := 0; i < n; i++ {
		if i%10 == 9 {
			if errs[i] == nil || !strings.Contains(errs[i].Error(), "no_such_table") {
				t.Errorf("statement %d: error %v, want one naming no_such_table", i, errs[i])
			}
			continue
		}
		if errs[i] != nil {
			t.Fatalf("statement %d: %v", i, errs[i])
		}
		if seen[ids[i]] {
			t.Fatalf("id %d returned twice", ids[i])
		}
		seen[ids[i]] = true
		var queued int
		if err := d.QueryRow(`SELECT queued_at FROM builds WHERE id = ?`, ids[i]).Scan(&queued); err != nil || queued != i {
			t.Fatalf("row %d: queued_at %d, %v; want %d", ids[i], queued, err, i)
		}
	}
	var count int
	d.QueryRow(`SELECT count(*) FROM builds`).Scan(&count)
	if count != n-n/10 {
		t.Fatalf("%d rows, want %d", count, n-n/10)
	}
}
