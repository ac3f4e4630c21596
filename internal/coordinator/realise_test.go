package coordinator_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
)

// Independent derivations asked for in one request build at once: each
// of these builds waits until all of them have started.
func TestRealiseBuildsIndependentPathsAtOnce(t *testing.T) {
	f := newFarm(t)
	names := []string{"p1", "p2", "p3"}
	var paths []build.DerivedPath
	for _, n := range names {
		paths = append(paths, build.DerivedPath{Path: f.addDrv(t, n, []string{"out"}, nil), Built: true})
	}
	var barrier sync.WaitGroup
	barrier.Add(len(names))
	f.builder.hold = func(ctx context.Context, name string) error {
		barrier.Done()
		waited := make(chan struct{})
		go func() { barrier.Wait(); close(waited) }()
		select {
		case <-waited:
			return nil
		case <-time.After(20 * time.Second):
			t.Errorf("build %s never ran beside the others", name)
			return nil
		}
	}
	results, err := f.coord.Realise(context.Background(), paths, build.Options{}, "alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, res := range results {
		if res.Status != build.Built {
			t.Errorf("%s: %+v", names[i], res)
		}
	}
}

// Without keep-going, a failure answers at once; the build still under
// way is reported as not waited for. With keep-going, every build is
// waited for.
func TestRealiseKeepGoing(t *testing.T) {
	for _, keepGoing := range []bool{false, true} {
		f := newFarm(t)
		bad := f.addDrv(t, "bad", []string{"out"}, nil)
		slow := f.addDrv(t, "slow", []string{"out"}, nil)
		f.builder.fail["bad"] = true
		release := make(chan struct{})
		f.builder.hold = func(ctx context.Context, name string) error {
			if name == "slow" {
				select {
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		}
		paths := []build.DerivedPath{{Path: slow, Built: true}, {Path: bad, Built: true}}
		type outcome struct {
			results []*build.Result
			err     error
		}
		done := make(chan outcome, 1)
		go func() {
			results, err := f.coord.Realise(context.Background(), paths, build.Options{KeepGoing: keepGoing}, "alice", nil)
			done <- outcome{results, err}
		}()
		var o outcome
		if keepGoing {
			select {
			case o = <-done:
				t.Fatalf("keep-going: answered before the slow build ended: %+v", o.results)
			case <-time.After(300 * time.Millisecond):
			}
			close(release)
			o = <-done
		} else {
			o = <-done
			close(release)
		}
		if o.err != nil {
			t.Fatal(o.err)
		}
		if o.results[1].Status != build.PermanentFailure {
			t.Errorf("keep-going %v: bad: %+v", keepGoing, o.results[1])
		}
		if keepGoing {
			if o.results[0].Status != build.Built {
				t.Errorf("keep-going: slow: %+v", o.results[0])
			}
		} else if o.results[0].Status != build.MiscFailure || !strings.Contains(o.results[0].ErrorMsg, "keep-going is off") {
			t.Errorf("slow: %+v", o.results[0])
		}
	}
}

// A failure inside a closure answers at once without keep-going: the
// dependent fails with DependencyFailed and is not built, and Realise does
// not wait for the input building beside the failed one. With keep-going,
// that input still builds and Realise waits for it; the dependent is not
// built either.
func TestRealiseFailureInClosure(t *testing.T) {
	for _, keepGoing := range []bool{false, true} {
		f := newFarm(t)
		bad := f.addDrv(t, "bad", []string{"out"}, nil)
		slow := f.addDrv(t, "slow", []string{"out"}, nil)
		top := f.addDrv(t, "top", []string{"out"}, map[string][]string{string(bad): {"out"}, string(slow): {"out"}})
		f.builder.fail["bad"] = true
		release := make(chan struct{})
		f.builder.hold = func(ctx context.Context, name string) error {
			if name == "slow" {
				<-release // the farm's build goes on when the client stops waiting
			}
			return nil
		}
		type outcome struct {
			results []*build.Result
			err     error
		}
		done := make(chan outcome, 1)
		go func() {
			results, err := f.coord.Realise(context.Background(), []build.DerivedPath{{Path: top, Built: true}}, build.Options{KeepGoing: keepGoing}, "alice", nil)
			done <- outcome{results, err}
		}()
		var o outcome
		if keepGoing {
			select {
			case o = <-done:
				t.Fatalf("keep-going: answered before the slow input was built: %+v", o.results)
			case <-time.After(300 * time.Millisecond):
			}
			close(release)
			o = <-done
		} else {
			select {
			case o = <-done:
			case <-time.After(10 * time.Second):
				close(release)
				t.Fatal("waited for the slow input though its sibling had failed")
			}
			close(release)
		}
		if o.err != nil {
			t.Fatal(o.err)
		}
		if res := o.results[0]; res.Status != build.DependencyFailed || !strings.Contains(res.ErrorMsg, "bad.drv") {
			t.Errorf("keep-going %v: top: %+v", keepGoing, res)
		}
		f.builder.mu.Lock()
		built := slices.Clone(f.builder.built)
		f.builder.mu.Unlock()
		if slices.Contains(built, "top") {
			t.Errorf("keep-going %v: built top, whose input failed", keepGoing)
		}
		if keepGoing && !slices.Contains(built, "slow") {
			t.Errorf("keep-going: the sibling of the failed input was not built: %v", built)
		}
		f.coord.Wait()
	}
}
