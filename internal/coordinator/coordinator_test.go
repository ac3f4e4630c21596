package coordinator_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

func fileNar(contents string) []byte { return testutil.FileNar(contents) }

func addFile(t *testing.T, st store.Store, p storepath.Path, contents string, refs []storepath.Path) {
	t.Helper()
	n := fileNar(contents)
	if err := st.AddToStore(context.Background(), &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)), References: refs}, bytes.NewReader(n)); err != nil {
		t.Fatal(err)
	}
}

// fakeBuilder "builds" by writing each output as a file naming its inputs,
// after checking that every input is in the farm store.
type fakeBuilder struct {
	st    store.Views // outputs go to the view of the request's account
	mu    sync.Mutex
	built []string
	fail  map[string]bool // drv names that fail
	// failFor lists accounts whose builds fail.
	failFor map[string]bool
	// hold, if set, is called first and may block the build.
	hold func(ctx context.Context, name string) error
	// copying, if set, is called once the outputs are announced through
	// req.OnOutputs and before they are added; it may block, and an error
	// fails the copy.
	copying func(ctx context.Context, name string) error
}

func (b *fakeBuilder) Build(ctx context.Context, req *build.Request) (*build.Result, error) {
	if b.hold != nil {
		if err := b.hold(ctx, req.Drv.Name); err != nil {
			return nil, err
		}
	}
	b.mu.Lock()
	b.built = append(b.built, req.Drv.Name)
	b.mu.Unlock()
	st := b.st.For(req.Account)
	inputs, err := storepath.ParseList(req.Drv.InputSrcs)
	if err != nil {
		return nil, err
	}
	if _, err := st.Closure(ctx, inputs); err != nil {
		return nil, fmt.Errorf("input missing: %w", err)
	}
	fmt.Fprintf(req.Log, "building %s\n", req.Drv.Name)
	if b.fail[req.Drv.Name] || b.failFor[req.Account] {
		return &build.Result{Status: build.PermanentFailure, ErrorMsg: "builder for '" + string(req.DrvPath) + "' failed with exit code 1"}, nil
	}
	outs := req.Drv.OutputPaths()
	now := time.Now()
	n := fileNar("built from " + strings.Join(req.Drv.InputSrcs, " "))
	var infos []*store.PathInfo
	for _, p := range outs {
		infos = append(infos, &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)), References: inputs, Ultimate: true})
	}
	if b.copying != nil {
		// As a worker does, announce the outputs once the farm store
		// serves them while they are copied in.
		if ex, ok := st.(store.Expecter); ok && req.OnOutputs != nil {
			done := ex.Expect(infos)
			defer done()
			req.OnOutputs(&build.Result{Status: build.Built, TimesBuilt: 1, StartTime: now, StopTime: now, Outputs: outs, Worker: "fake"})
		}
		if err := b.copying(ctx, req.Drv.Name); err != nil {
			return nil, err
		}
	}
	for _, info := range infos {
		if err := st.AddToStore(ctx, info, bytes.NewReader(n)); err != nil {
			return nil, err
		}
	}
	produced := map[string]build.Contents{}
	for name := range outs {
		produced[name] = build.Contents{NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)), References: inputs}
	}
	return &build.Result{Status: build.Built, TimesBuilt: 1, StartTime: now, StopTime: now, Outputs: outs, Worker: "fake", Produced: produced}, nil
}

type farm struct {
	st      store.Store
	db      *sql.DB
	builder *fakeBuilder
	coord   *coordinator.Coordinator
	src     storepath.Path
}

func newFarm(t *testing.T) *farm {
	t.Helper()
	st, database, dir := testutil.Store(t)
	fb := &fakeBuilder{st: st, fail: map[string]bool{}}
	c, err := coordinator.New(st, testutil.Scheduler(t, fb), database, filepath.Join(dir, "logs"), coordinator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	src := storepath.Path("/nix/store/" + strings.Repeat("s", 32) + "-source")
	addFile(t, st, src, "source", nil)
	return &farm{st: st, db: database, builder: fb, coord: c, src: src}
}

// addDrv creates an input-addressed derivation with the given inputs,
// stores its .drv, and returns its path.
func (f *farm) addDrv(t *testing.T, name string, outputs []string, inputDrvs map[string][]string) storepath.Path {
	t.Helper()
	d := &derivation.Derivation{
		Outputs:   map[string]derivation.Output{},
		InputDrvs: inputDrvs,
		InputSrcs: []string{string(f.src)},
		Platform:  "x86_64-linux",
		Builder:   "/bin/sh",
		Args:      []string{"-c", "true"},
		Env:       map[string]string{"name": name},
	}
	for _, o := range outputs {
		d.Outputs[o] = derivation.Output{}
	}
	resolve := func(p string) (*derivation.Derivation, error) {
		return store.ReadDerivation(context.Background(), f.st, storepath.Path(p))
	}
	drvPath := testutil.Derivation(t, name, d, resolve)
	addFile(t, f.st, drvPath, string(d.Bytes()), d.References())
	return drvPath
}

func TestBuildPathsInDependencyOrder(t *testing.T) {
	f := newFarm(t)
	a := f.addDrv(t, "a", []string{"out", "dev"}, nil)
	b := f.addDrv(t, "b", []string{"out"}, map[string][]string{string(a): {"dev"}})
	c := f.addDrv(t, "c", []string{"out"}, map[string][]string{string(a): {"out"}, string(b): {"out"}})
	var log bytes.Buffer
	results, err := f.coord.Realise(context.Background(), []build.DerivedPath{{Path: c, Built: true}}, build.Options{}, "alice", build.LogWriter{W: &log})
	if err != nil || results[0].Status != build.Built {
		t.Fatalf("Realise: %v %+v", err, results)
	}
	if results[0].HashModulo.IsZero() || len(results[0].BuiltOutputs()) != 1 {
		t.Errorf("realisations %+v", results[0].BuiltOutputs())
	}
	if !slices.Equal(f.builder.built, []string{"a", "b", "c"}) {
		t.Errorf("build order %v", f.builder.built)
	}
	if !strings.Contains(log.String(), "building c") {
		t.Errorf("log %q", log.String())
	}
	// c's BasicDerivation carried the outputs of a and b it needs.
	cDrv, _ := store.ReadDerivation(context.Background(), f.st, c)
	out, err := f.st.QueryPathInfo(context.Background(), storepath.Path(cDrv.Outputs["out"].Path))
	if err != nil {
		t.Fatal(err)
	}
	if len(out.References) != 4 { // source, a's out, b's out, and a's dev that b refers to
		t.Errorf("c built with inputs %v", out.References)
	}
	// Again: every output is valid, nothing is rebuilt.
	results, err = f.coord.Realise(context.Background(), []build.DerivedPath{{Path: c, Built: true}}, build.Options{}, "alice", nil)
	if err != nil || results[0].Status != build.AlreadyValid || len(f.builder.built) != 3 {
		t.Errorf("rebuild: %v %+v %v", err, results, f.builder.built)
	}
	var rows int
	f.db.QueryRow(`SELECT count(*) FROM builds WHERE status = 0`).Scan(&rows)
	if rows != 3 {
		t.Errorf("%d builds recorded as Built, want 3", rows)
	}
}

func TestBuildPathsDependencyFailure(t *testing.T) {
	f := newFarm(t)
	a := f.addDrv(t, "broken", []string{"out"}, nil)
	b := f.addDrv(t, "needs-broken", []string{"out"}, map[string][]string{string(a): {"out"}})
	f.builder.fail["broken"] = true
	results, err := f.coord.Realise(context.Background(), []build.DerivedPath{{Path: b, Built: true}}, build.Options{}, "alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	res := results[0]
	if res.Status != build.DependencyFailed || !strings.Contains(res.ErrorMsg, "broken.drv") || !strings.Contains(res.ErrorMsg, "failed with exit code 1") {
		t.Errorf("result %+v", res)
	}
	if slices.Contains(f.builder.built, "needs-broken") {
		t.Error("built a derivation whose dependency failed")
	}
}

func TestBuildDerivationChecks(t *testing.T) {
	f := newFarm(t)
	ctx := context.Background()
	drvPath := f.addDrv(t, "x", []string{"out"}, nil)
	d, _ := store.ReadDerivation(ctx, f.st, drvPath)

	// Inputs missing from the farm store are named.
	missing := d.Basic("x", []string{"/nix/store/" + strings.Repeat("m", 32) + "-missing"})
	_, err := f.coord.BuildDerivation(ctx, &build.Request{DrvPath: drvPath, Drv: missing, Account: "alice"})
	if !errors.Is(err, coordinator.ErrMissingInput) || !strings.Contains(err.Error(), "-missing") {
		t.Errorf("missing input: %v", err)
	}

	// Floating content-addressed derivations are refused with a reason.
	ca := d.Basic("x", nil)
	ca.Outputs = map[string]derivation.Output{"out": {HashAlgo: "r:sha256"}}
	_, err = f.coord.BuildDerivation(ctx, &build.Request{DrvPath: drvPath, Drv: ca, Account: "alice"})
	if err == nil || !strings.Contains(err.Error(), "input-addressed and fixed-output derivations only") {
		t.Errorf("floating CA: %v", err)
	}

	// A build, then the same request answered from the store.
	res, err := f.coord.BuildDerivation(ctx, &build.Request{DrvPath: drvPath, Drv: d.Basic("x", nil), Account: "alice"})
	if err != nil || res.Status != build.Built {
		t.Fatalf("%v %+v", err, res)
	}
	res, err = f.coord.BuildDerivation(ctx, &build.Request{DrvPath: drvPath, Drv: d.Basic("x", nil), Account: "alice"})
	if err != nil || res.Status != build.AlreadyValid || res.Outputs["out"] == "" {
		t.Fatalf("%v %+v", err, res)
	}
	var worker string
	var logBytes int
	f.db.QueryRow(`SELECT worker, log_bytes FROM builds WHERE status = 0`).Scan(&worker, &logBytes)
	if worker != "fake" || logBytes == 0 {
		t.Errorf("build record: worker %q, log %d bytes", worker, logBytes)
	}
}

// blockingBuilder builds only when released, and reports cancellation.
type blockingBuilder struct {
	fakeBuilder
	started   chan struct{}
	release   chan struct{}
	cancelled chan struct{}
}

func (b *blockingBuilder) Build(ctx context.Context, req *build.Request) (*build.Result, error) {
	b.started <- struct{}{}
	select {
	case <-b.release:
		return b.fakeBuilder.Build(ctx, req)
	case <-ctx.Done():
		close(b.cancelled)
		return nil, ctx.Err()
	}
}

func TestDisconnectedClientsBuildGoesOn(t *testing.T) {
	for _, cancelOnDisconnect := range []bool{false, true} {
		st, database, dir := testutil.Store(t)
		bb := &blockingBuilder{fakeBuilder: fakeBuilder{st: st, fail: map[string]bool{}},
			started: make(chan struct{}, 1), release: make(chan struct{}), cancelled: make(chan struct{})}
		c, err := coordinator.New(st, testutil.Scheduler(t, bb), database, filepath.Join(dir, "logs"), coordinator.Options{CancelOnDisconnect: cancelOnDisconnect})
		if err != nil {
			t.Fatal(err)
		}
		src := storepath.Path("/nix/store/" + strings.Repeat("s", 32) + "-source")
		addFile(t, st, src, "source", nil)
		f := &farm{st: st, db: database, coord: c, src: src}
		drvPath := f.addDrv(t, "abandoned", []string{"out"}, nil)
		d, _ := store.ReadDerivation(context.Background(), st, drvPath)

		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, err := c.BuildDerivation(ctx, &build.Request{DrvPath: drvPath, Drv: d.Basic("abandoned", nil), Account: "alice"})
			errc <- err
		}()
		<-bb.started
		cancel() // the client goes away
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("BuildDerivation after the client left: %v", err)
		}
		if cancelOnDisconnect {
			select {
			case <-bb.cancelled:
			case <-time.After(5 * time.Second):
				t.Fatal("with CancelOnDisconnect the build was not cancelled")
			}
			continue
		}
		close(bb.release)
		out := storepath.Path(d.Outputs["out"].Path)
		deadline := time.Now().Add(5 * time.Second)
		for {
			var status int
			database.QueryRow(`SELECT status FROM builds WHERE drv_path = ?`, string(drvPath)).Scan(&status)
			if _, err := st.QueryPathInfo(context.Background(), out); err == nil && status == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the abandoned build's result was not kept")
			}
			time.Sleep(10 * time.Millisecond)
		}
		c.Wait()
	}
}

// Requests for a derivation under way join it: one build, one record,
// and every waiter gets the log from its start.
func TestJoinBuildUnderWay(t *testing.T) {
	// Three accounts, each with the same source: the same build.
	bf := newBlockedFarm(t, "popular", nil, "client0", "client1", "client2")
	bb, c, drvPath, d := bf.bb, bf.c, bf.drvPath, bf.drv
	var wg sync.WaitGroup
	logs := make([]*bytes.Buffer, 3)
	for i := range logs {
		logs[i] = &bytes.Buffer{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.BuildDerivation(context.Background(), &build.Request{DrvPath: drvPath, Drv: d.Basic("popular", nil), Account: fmt.Sprint("client", i), Log: logs[i]})
			if err != nil || res.Status != build.Built {
				t.Errorf("client %d: %+v %v", i, res, err)
			}
		}()
	}
	<-bb.started
	for c.Waiting(drvPath) < 3 {
		time.Sleep(time.Millisecond)
	}
	close(bb.release)
	wg.Wait()
	var rows int
	bf.db.QueryRow(`SELECT count(*) FROM builds WHERE drv_path = ?`, string(drvPath)).Scan(&rows)
	if rows != 1 || len(bb.built) != 1 {
		t.Errorf("%d records, %d builds; want 1 and 1", rows, len(bb.built))
	}
	for i, l := range logs {
		if !strings.Contains(l.String(), "building popular") {
			t.Errorf("client %d's log: %q", i, l.String())
		}
	}
}

// BuildDerivation answers once the worker has announced the outputs, while
// the farm still copies them in; Realise, whose next builds need them in
// the farm store, waits until they are registered.
func TestBuildDerivationAnswersWhileOutputsAreCopied(t *testing.T) {
	f := newFarm(t)
	ctx := context.Background()
	release := make(chan struct{})
	f.builder.copying = func(ctx context.Context, name string) error { <-release; return nil }

	d := f.addDrv(t, "streamed", []string{"out"}, nil)
	drv, err := store.ReadDerivation(ctx, f.st, d)
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.coord.BuildDerivation(ctx, &build.Request{DrvPath: d, Drv: drv.Basic("streamed", nil), Account: "alice"})
	if err != nil || res.Status != build.Built || res.Outputs["out"] == "" {
		t.Fatalf("early answer: %v %+v", err, res)
	}
	out := storepath.Path(res.Outputs["out"])
	if valid, _ := f.st.ValidPaths(ctx, []storepath.Path{out}); len(valid) != 0 {
		t.Fatal("the output was registered before the copy was released")
	}
	// The client answered early waits no more, though the build goes on.
	if n := f.coord.Waiting(d); n != 0 {
		t.Errorf("Waiting after the early answer: %d, want 0", n)
	}

	d2 := f.addDrv(t, "waits", []string{"out"}, nil)
	realised := make(chan error, 1)
	go func() {
		results, err := f.coord.Realise(ctx, []build.DerivedPath{{Path: d2, Built: true}}, build.Options{}, "alice", nil)
		if err == nil && results[0].Status != build.Built {
			err = fmt.Errorf("result %+v", results[0])
		}
		realised <- err
	}()
	select {
	case err := <-realised:
		t.Fatalf("Realise answered before its outputs were registered: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-realised; err != nil {
		t.Fatal(err)
	}
	for _, p := range []storepath.Path{out} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			if valid, _ := f.st.ValidPaths(ctx, []storepath.Path{p}); len(valid) == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never registered", p)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// An early answer is never given from an attempt whose copy has failed:
// a client that joins after the first attempt's copy failed waits for the
// retry's outputs.
func TestNoEarlyAnswerFromFailedCopy(t *testing.T) {
	f := newFarm(t)
	ctx := context.Background()
	d := f.addDrv(t, "flaky", []string{"out"}, nil)
	drv, err := store.ReadDerivation(ctx, f.st, d)
	if err != nil {
		t.Fatal(err)
	}
	req := func() *build.Request {
		return &build.Request{DrvPath: d, Drv: drv.Basic("flaky", nil), Account: "alice"}
	}
	var mu sync.Mutex
	attempts := 0
	failCopy, retried, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
	f.builder.hold = func(ctx context.Context, name string) error {
		mu.Lock()
		attempts++
		n := attempts
		mu.Unlock()
		if n == 2 {
			close(retried)
			<-release
		}
		return nil
	}
	f.builder.copying = func(ctx context.Context, name string) error {
		mu.Lock()
		n := attempts
		mu.Unlock()
		if n == 1 {
			<-failCopy
			return errors.New("connection reset while copying the outputs")
		}
		return nil
	}

	// The first client hears of the first attempt's success; that answer
	// cannot be taken back when its copy fails.
	res, err := f.coord.BuildDerivation(ctx, req())
	if err != nil || res.Status != build.Built {
		t.Fatalf("first client: %v %+v", err, res)
	}
	close(failCopy)
	<-retried

	type outcome struct {
		res *build.Result
		err error
	}
	second := make(chan outcome, 1)
	go func() {
		res, err := f.coord.BuildDerivation(ctx, req())
		second <- outcome{res, err}
	}()
	select {
	case o := <-second:
		t.Fatalf("answered from the attempt whose copy failed: %v %+v", o.err, o.res)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	o := <-second
	if o.err != nil || o.res.Status != build.Built {
		t.Fatalf("second client: %v %+v", o.err, o.res)
	}
	if _, err := f.st.QueryPathInfo(ctx, o.res.Outputs["out"]); err != nil {
		t.Errorf("the farm store does not serve the output it answered with: %v", err)
	}
	f.coord.Wait()
}

// An account that uploads its own bytes under an output's path while the
// build runs keeps them for itself, but the build is shared as what it
// produced: another account's identical request never gets those bytes.
func TestShareIsWhatTheBuildProduced(t *testing.T) {
	bf := newBlockedFarm(t, "popular", nil, "carol", "mallory")
	st, bb, c, drvPath, d := bf.st, bf.bb, bf.c, bf.drvPath, bf.drv
	out := d.Basic("popular", nil).OutputPaths()["out"]
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.BuildDerivation(context.Background(), &build.Request{DrvPath: drvPath, Drv: d.Basic("popular", nil), Account: "mallory", Log: io.Discard})
	}()
	<-bb.started
	addFile(t, st.For("mallory"), out, "EVIL", []storepath.Path{bf.src})
	close(bb.release)
	<-done
	c.Wait()
	res, err := c.BuildDerivation(context.Background(), &build.Request{DrvPath: drvPath, Drv: d.Basic("popular", nil), Account: "carol", Log: io.Discard})
	if err != nil || !res.Status.Success() {
		t.Fatalf("carol's build: %+v %v", res, err)
	}
	rc, _, err := st.For("carol").NarFromPath(context.Background(), out)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if bytes.Contains(got, []byte("EVIL")) || !bytes.Contains(got, []byte("built from")) {
		t.Errorf("carol's %s holds %q", out, got)
	}
	if len(bb.built) != 1 {
		t.Errorf("built %d times; the identical request should have been shared", len(bb.built))
	}
	// mallory keeps what it uploaded.
	rc, _, _ = st.For("mallory").NarFromPath(context.Background(), out)
	got, _ = io.ReadAll(rc)
	rc.Close()
	if !bytes.Contains(got, []byte("EVIL")) {
		t.Errorf("mallory's own upload was replaced: %q", got)
	}
}

// Another account's build under way is joined, but its failure is not
// the joiner's: it ran under that account's limits and options, so the
// joiner's request is built again for it alone.
func TestJoinedBuildOfAnotherAccountFails(t *testing.T) {
	bf := newBlockedFarm(t, "joined", map[string]bool{"mallory": true}, "carol", "mallory")
	bb, c, drvPath, d := bf.bb, bf.c, bf.drvPath, bf.drv
	malloryDone := make(chan *build.Result, 1)
	go func() {
		res, _ := c.BuildDerivation(context.Background(), &build.Request{DrvPath: drvPath, Drv: d.Basic("joined", nil), Account: "mallory", Log: io.Discard})
		malloryDone <- res
	}()
	<-bb.started
	carolDone := make(chan *build.Result, 1)
	go func() {
		res, err := c.BuildDerivation(context.Background(), &build.Request{DrvPath: drvPath, Drv: d.Basic("joined", nil), Account: "carol", Log: io.Discard})
		if err != nil {
			t.Error(err)
		}
		carolDone <- res
	}()
	for c.Waiting(drvPath) < 2 {
		time.Sleep(time.Millisecond)
	}
	close(bb.release)
	if res := <-malloryDone; res == nil || res.Status.Success() {
		t.Errorf("mallory's build: %+v", res)
	}
	if res := <-carolDone; res == nil || !res.Status.Success() {
		t.Errorf("carol's request failed with mallory's build: %+v", res)
	}
	if len(bb.built) != 2 {
		t.Errorf("built %d times, want mallory's and carol's", len(bb.built))
	}
}

// blockedFarm is a coordinator over a blockingBuilder, with one derivation
// named name whose source every one of accounts holds with the same bytes.
type blockedFarm struct {
	st      *testutil.TestStore
	db      *sql.DB
	bb      *blockingBuilder
	c       *coordinator.Coordinator
	src     storepath.Path
	drvPath storepath.Path
	drv     *derivation.Derivation
}

func newBlockedFarm(t *testing.T, name string, failFor map[string]bool, accounts ...string) *blockedFarm {
	t.Helper()
	st, database, dir := testutil.Store(t)
	bb := &blockingBuilder{fakeBuilder: fakeBuilder{st: st, fail: map[string]bool{}, failFor: failFor},
		started: make(chan struct{}, 4), release: make(chan struct{}), cancelled: make(chan struct{})}
	c, _ := coordinator.New(st, testutil.Scheduler(t, bb), database, filepath.Join(dir, "logs"), coordinator.Options{})
	src := storepath.Path("/nix/store/" + strings.Repeat("s", 32) + "-source")
	addFile(t, st, src, "source", nil)
	f := &farm{st: st, db: database, coord: c, src: src}
	drvPath := f.addDrv(t, name, []string{"out"}, nil)
	for _, a := range accounts {
		addFile(t, st.For(a), src, "source", nil)
	}
	d, err := store.ReadDerivation(context.Background(), st, drvPath)
	if err != nil {
		t.Fatal(err)
	}
	return &blockedFarm{st: st, db: database, src: src, bb: bb, c: c, drvPath: drvPath, drv: d}
}
