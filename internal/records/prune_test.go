package records_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/records"
)

// A prune cut short (a crash, a log it could not remove) must not leave
// a pruned build's log behind for another build to show: build ids are
// SQLite rowids, which the next builds reuse once the newest records are
// gone.
func TestPruneLeavesNoLogForReusedIDs(t *testing.T) {
	old := []row{
		{"a", "alice", "x86_64-linux", "built", t0, t0.Add(time.Minute)},
		{"b", "alice", "x86_64-linux", "built", t0, t0.Add(time.Minute)},
		{"c", "alice", "x86_64-linux", "built", t0, t0.Add(time.Minute)},
	}
	d, logs := newDB(t, old)
	for id := int64(1); id <= 3; id++ {
		os.WriteFile(records.LogPath(logs, id), []byte("alice's secret\n"), 0o644)
	}
	// The log of build 2 cannot be removed.
	os.Remove(records.LogPath(logs, 2))
	os.MkdirAll(filepath.Join(records.LogPath(logs, 2), "x"), 0o755)
	svc := records.New(d, logs, func() time.Time { return t0.Add(100 * 24 * time.Hour) })
	ctx := context.Background()
	if _, err := svc.Prune(ctx, time.Hour); err == nil {
		t.Fatal("pruning past a log it cannot remove: no error")
	}
	// bob's next builds, queued (no log yet), as the coordinator
	// records them.
	for range 3 {
		if _, err := d.Exec(`INSERT INTO builds (drv_path, account, status, queued_at, record_status) VALUES (?, 'bob', 0, ?, 'queued')`,
			"/nix/store/"+strings.Repeat("b", 32)+"-bob.drv", t0.Add(100*24*time.Hour).UnixMilli()); err != nil {
			t.Fatal(err)
		}
	}
	list, _, err := svc.List(ctx, records.Viewer{Account: "bob"}, records.Filter{})
	if err != nil || len(list) != 3 {
		t.Fatalf("bob's builds: %v %v", list, err)
	}
	for _, r := range list {
		rc, err := svc.OpenLog(r.ID)
		if err != nil {
			continue // not alice's either
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if strings.Contains(string(b), "alice") {
			t.Errorf("bob's build %d shows a pruned build's log: %q", r.ID, b)
		}
	}
}
