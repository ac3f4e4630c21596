package coordinator_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/records"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

var admin = records.Viewer{Admin: true}

// heldScheduler keeps what is submitted to it, for the test to start
// and end by hand.
type heldScheduler struct{ subs chan submission }

type submission struct {
	req  *build.Request
	done func(*build.Result, error)
}

func (s *heldScheduler) Submit(ctx context.Context, req *build.Request, done func(*build.Result, error)) {
	s.subs <- submission{req, done}
}

// onlyRecord returns the one record of drvPath.
func onlyRecord(t *testing.T, svc *records.Service, drvPath storepath.Path) records.Record {
	t.Helper()
	list, _, err := svc.List(context.Background(), admin, records.Filter{DrvSubstring: string(drvPath)})
	if err != nil || len(list) != 1 {
		t.Fatalf("records of %s: %v %+v", drvPath, err, list)
	}
	return list[0]
}

// A build's record is queued when the build is, running once a worker
// starts it (with the workers tried and the attempts), and then built,
// failed, timed out, cancelled or an infrastructure error, as it ends.
func TestRecordFollowsTheBuild(t *testing.T) {
	for _, tc := range []struct {
		name string
		res  *build.Result
		err  error
		want records.Status
	}{
		{"built", &build.Result{Status: build.Built, Worker: "w2"}, nil, records.Built},
		{"failed", &build.Result{Status: build.PermanentFailure, Worker: "w2", ErrorMsg: "exit code 1"}, nil, records.Failed},
		{"timed-out", &build.Result{Status: build.TimedOut, ErrorMsg: "timed out"}, nil, records.TimedOut},
		{"attempts-exhausted", &build.Result{Status: build.MiscFailure, Infrastructure: true}, nil, records.InfrastructureError},
		{"cancelled", nil, context.Canceled, records.Cancelled},
		{"shutdown", nil, errors.New("the farm is shutting down"), records.InfrastructureError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, database, dir := testutil.Store(t)
			sched := &heldScheduler{subs: make(chan submission, 1)}
			c, err := coordinator.New(st, sched, database, filepath.Join(dir, "logs"), coordinator.Options{})
			if err != nil {
				t.Fatal(err)
			}
			src := storepath.Path("/nix/store/" + strings.Repeat("s", 32) + "-source")
			addFile(t, st, src, "source", nil)
			f := &farm{st: st, db: database, coord: c, src: src}
			drvPath := f.addDrv(t, "rec", []string{"out"}, nil)
			d, _ := store.ReadDerivation(context.Background(), st, drvPath)
			svc := records.New(database, filepath.Join(dir, "logs"), nil)

			ctx := build.WithKeyFingerprint(context.Background(), "SHA256:alicekey")
			go c.BuildDerivation(ctx, &build.Request{DrvPath: drvPath, Drv: d.Basic("rec", nil), Account: "alice"})
			sub := <-sched.subs
			r := onlyRecord(t, svc, drvPath)
			if r.Status != records.Queued || r.Account != "alice" || r.KeyFingerprint != "SHA256:alicekey" || r.System != "x86_64-linux" || !r.StartedAt.IsZero() {
				t.Fatalf("queued record: %+v", r)
			}
			sub.req.OnStart("w1", 1)
			sub.req.OnStart("w2", 2)
			r = onlyRecord(t, svc, drvPath)
			if r.Status != records.Running || r.Worker != "w2" || r.Attempts != 2 || strings.Join(r.Workers, ",") != "w1,w2" || r.StartedAt.IsZero() {
				t.Fatalf("running record: %+v", r)
			}
			res := tc.res
			if res != nil {
				res.StartTime, res.StopTime = time.Now(), time.Now()
				if res.Status == build.Built {
					res.Outputs = d.Basic("rec", nil).OutputPaths()
					res.Produced = map[string]build.Contents{"out": {NarSize: 1234}}
				}
			}
			sub.done(res, tc.err)
			c.Wait()
			r = onlyRecord(t, svc, drvPath)
			if r.Status != tc.want || r.StoppedAt.IsZero() || r.Workers[0] != "w1" {
				t.Fatalf("final record: %+v, want status %s", r, tc.want)
			}
			if tc.want == records.Built && (len(r.Outputs) != 1 || r.Outputs[0].NarSize != 1234 || r.NixStatus != "Built") {
				t.Errorf("built record's outputs: %+v", r)
			}
		})
	}
}

// With the real scheduler, the record is running while the worker builds.
func TestRecordRunningOnWorker(t *testing.T) {
	st, database, dir := testutil.Store(t)
	bb := &blockingBuilder{fakeBuilder: fakeBuilder{st: st, fail: map[string]bool{}},
		started: make(chan struct{}, 1), release: make(chan struct{}), cancelled: make(chan struct{})}
	c, err := coordinator.New(st, testutil.Scheduler(t, bb), database, filepath.Join(dir, "logs"), coordinator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	src := storepath.Path("/nix/store/" + strings.Repeat("s", 32) + "-source")
	addFile(t, st, src, "source", nil)
	f := &farm{st: st, db: database, coord: c, src: src}
	drvPath := f.addDrv(t, "slow", []string{"out"}, nil)
	d, _ := store.ReadDerivation(context.Background(), st, drvPath)
	svc := records.New(database, filepath.Join(dir, "logs"), nil)
	done := make(chan error, 1)
	go func() {
		_, err := c.BuildDerivation(context.Background(), &build.Request{DrvPath: drvPath, Drv: d.Basic("slow", nil), Account: "alice"})
		done <- err
	}()
	<-bb.started
	if r := onlyRecord(t, svc, drvPath); r.Status != records.Running || r.Worker != "test" || r.Attempts != 1 {
		t.Fatalf("while building: %+v", r)
	}
	close(bb.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c.Wait()
	// (The fake builder's results name it "fake"; the scheduler's worker is "test".)
	if r := onlyRecord(t, svc, drvPath); r.Status != records.Built || r.Worker != "fake" || strings.Join(r.Workers, ",") != "test" || len(r.Outputs) != 1 || r.Outputs[0].NarSize == 0 {
		t.Fatalf("after the build: %+v", r)
	}
}

// An answer from the store is recorded as cached, with the outputs' sizes;
// a failed build as failed.
func TestRecordCachedAndFailed(t *testing.T) {
	f := newFarm(t)
	ctx := context.Background()
	svc := records.New(f.db, "", nil)
	drvPath := f.addDrv(t, "twice", []string{"out"}, nil)
	d, _ := store.ReadDerivation(ctx, f.st, drvPath)
	for range 2 {
		if _, err := f.coord.BuildDerivation(ctx, &build.Request{DrvPath: drvPath, Drv: d.Basic("twice", nil), Account: "alice"}); err != nil {
			t.Fatal(err)
		}
	}
	list, _, err := svc.List(ctx, admin, records.Filter{DrvSubstring: "twice"})
	if err != nil || len(list) != 2 {
		t.Fatalf("%v %+v", err, list)
	}
	cached, built := list[0], list[1]
	if built.Status != records.Built || cached.Status != records.Cached || cached.NixStatus != "AlreadyValid" ||
		len(cached.Outputs) != 1 || cached.Outputs[0].NarSize == 0 || cached.Outputs[0].NarSize != built.Outputs[0].NarSize {
		t.Errorf("built %+v\ncached %+v", built, cached)
	}

	bad := f.addDrv(t, "bad", []string{"out"}, nil)
	bd, _ := store.ReadDerivation(ctx, f.st, bad)
	f.builder.fail["bad"] = true
	if res, err := f.coord.BuildDerivation(ctx, &build.Request{DrvPath: bad, Drv: bd.Basic("bad", nil), Account: "alice"}); err != nil || res.Status.Success() {
		t.Fatal(err, res)
	}
	if r := onlyRecord(t, svc, bad); r.Status != records.Failed || r.NixStatus != "PermanentFailure" || len(r.Outputs) != 0 || r.Error == "" {
		t.Errorf("failed %+v", r)
	}
}
