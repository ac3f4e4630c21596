package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/records"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// The build records (package records reads them): a row is inserted as
// queued when a build is queued, moves to running when a worker starts
// an attempt, and gets its final status when the build ends. Answers
// from the store or an upstream cache are recorded at once.

// insert records req as queued.
func (c *Coordinator) insert(ctx context.Context, req *build.Request, queued time.Time) (int64, error) {
	res, err := c.writes.Exec(ctx,
		`INSERT INTO builds (drv_path, account, status, queued_at, key_fingerprint, system, required_features, record_status)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		string(req.DrvPath), req.Account, int64(build.MiscFailure), queued.UnixMilli(),
		build.KeyFingerprint(ctx), req.Drv.Platform, features(req), string(records.Queued))
	if err != nil {
		return 0, fmt.Errorf("recording build: %w", err)
	}
	return res.LastInsertId()
}

// onStart returns the scheduler's hook for build id: each attempt a
// worker starts moves the record to running, with the workers tried.
func (c *Coordinator) onStart(ctx context.Context, id int64, log *slog.Logger) func(string, int) {
	var mu sync.Mutex
	var tried []string
	return func(w string, attempt int) {
		mu.Lock()
		tried = append(tried, w)
		list := strings.Join(tried, ",")
		mu.Unlock()
		if _, err := c.writes.Exec(ctx,
			`UPDATE builds SET record_status = ?, worker = ?, workers = ?, attempts = ?, started_at = ? WHERE id = ?`,
			string(records.Running), w, list, attempt, c.now().UnixMilli(), id); err != nil {
			log.Error("recording the start of a build", "err", err)
		}
	}
}

// endStatus is the record status of a build the scheduler ended with res,
// or with err (res then says why it could not run).
func endStatus(res *build.Result, err error) records.Status {
	switch {
	case err == nil:
		return records.StatusOf(res)
	case errors.Is(err, context.Canceled):
		// The build's own context ends only when every client has gone
		// (--cancel-on-disconnect).
		return records.Cancelled
	}
	return records.InfrastructureError
}

// update records how build id ended, with the CPU time and peak memory
// the worker measured (0 when unknown: see build.Result).
func (c *Coordinator) update(ctx context.Context, id int64, account string, res *build.Result, st records.Status, logBytes int64) error {
	_, err := c.writes.Exec(ctx,
		`UPDATE builds SET worker = CASE WHEN ? = '' THEN worker ELSE ? END, status = ?, record_status = ?, error = ?, outputs = ?,
			output_sizes = ?, started_at = CASE WHEN started_at = 0 THEN ? ELSE started_at END, stopped_at = ?, log_bytes = ?,
			cpu_seconds = ?, peak_memory = ? WHERE id = ?`,
		res.Worker, res.Worker, int64(res.Status), string(st), res.ErrorMsg, outputList(res.Outputs),
		c.outputSizes(ctx, account, res), res.StartTime.UnixMilli(), res.StopTime.UnixMilli(), logBytes,
		res.CPUTime.Seconds(), res.PeakMemory, id)
	return err
}

// record stores a build that needed no builder.
func (c *Coordinator) record(ctx context.Context, req *build.Request, res *build.Result, at time.Time) (int64, error) {
	c.opts.Metrics.BuildEnded(res, nil)
	r, err := c.writes.Exec(ctx,
		`INSERT INTO builds (drv_path, account, worker, status, error, outputs, queued_at, started_at, stopped_at,
			key_fingerprint, system, required_features, record_status, output_sizes)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		string(req.DrvPath), req.Account, res.Worker, int64(res.Status), res.ErrorMsg, outputList(res.Outputs),
		at.UnixMilli(), res.StartTime.UnixMilli(), res.StopTime.UnixMilli(),
		build.KeyFingerprint(ctx), req.Drv.Platform, features(req), string(records.StatusOf(res)), c.outputSizes(ctx, req.Account, res))
	if err != nil {
		return 0, fmt.Errorf("recording build: %w", err)
	}
	return r.LastInsertId()
}

func features(req *build.Request) string {
	return strings.Join(worker.RequiredFeatures(req.Drv), " ")
}

func outputList(outputs map[string]storepath.Path) string {
	var b strings.Builder
	for name, p := range outputs {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(name + "=" + string(p))
	}
	return b.String()
}

// outputSizes renders a successful build's outputs with their NAR sizes
// as JSON: as the worker produced them, or as the account's view of the
// farm store holds them ("" for a build that failed).
func (c *Coordinator) outputSizes(ctx context.Context, account string, res *build.Result) string {
	if !res.Status.Success() || len(res.Outputs) == 0 {
		return ""
	}
	st := c.store.For(account)
	out := make([]records.Output, 0, len(res.Outputs))
	for _, name := range slices.Sorted(maps.Keys(res.Outputs)) {
		o := records.Output{Name: name, Path: string(res.Outputs[name])}
		if p, ok := res.Produced[name]; ok {
			o.NarSize = p.NarSize
		} else if info, err := st.QueryPathInfo(ctx, res.Outputs[name]); err == nil {
			o.NarSize = info.NarSize
		}
		out = append(out, o)
	}
	js, _ := json.Marshal(out)
	return string(js)
}

// AddBytes adds to build record id the bytes of store path contents a
// client session moved for it (package traffic says which): uploaded, to
// the farm before the request, and downloaded, outputs fetched after it.
// It adds rather than sets, so that it may come before or after the
// build's own end is recorded, and from several sessions. It writes one
// row and holds no lock of the coordinator's.
func (c *Coordinator) AddBytes(ctx context.Context, id int64, uploaded, downloaded int64) error {
	if id <= 0 || uploaded < 0 || downloaded < 0 || uploaded+downloaded == 0 {
		return nil
	}
	if _, err := c.writes.Exec(ctx,
		`UPDATE builds SET bytes_uploaded = bytes_uploaded + ?, bytes_downloaded = bytes_downloaded + ? WHERE id = ?`,
		uploaded, downloaded, id); err != nil {
		return fmt.Errorf("recording the bytes of build %d: %w", id, err)
	}
	c.opts.Metrics.BuildBytes(uploaded, downloaded)
	return nil
}
