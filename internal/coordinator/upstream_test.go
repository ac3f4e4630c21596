package coordinator_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/narinfo"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// trustingViews gives every account a view that trusts keys.
type trustingViews struct {
	local *store.Local
	keys  []signature.PublicKey
}

func (v trustingViews) For(account string) store.Store {
	return v.local.For(account).(*store.View).WithTrustedKeys(v.keys)
}

// fakeUpstream is an upstream cache: it offers paths with their NARs,
// signed by key, and adds what it substitutes to the upstream view.
type fakeUpstream struct {
	local *store.Local
	key   signature.SecretKey
	mu    sync.Mutex
	paths map[storepath.Path]*narinfo.NarInfo
	nars  map[storepath.Path][]byte
	// fetched counts the paths substituted.
	fetched []storepath.Path
}

func (u *fakeUpstream) offer(p storepath.Path, contents string, refs []storepath.Path) {
	n := fileNar(contents)
	ni := &narinfo.NarInfo{StorePath: p, URL: "nar/x.nar", Compression: "none", NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)), References: refs}
	ni.Sigs = []string{u.key.Sign(ni.Fingerprint())}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.paths[p], u.nars[p] = ni, n
}

func (u *fakeUpstream) Query(ctx context.Context, paths []storepath.Path) (map[storepath.Path]*narinfo.NarInfo, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := map[storepath.Path]*narinfo.NarInfo{}
	for _, p := range paths {
		if ni, ok := u.paths[p]; ok {
			out[p] = ni
		}
	}
	return out, nil
}

func (u *fakeUpstream) Substitute(ctx context.Context, paths []storepath.Path, progress build.Progress) ([]storepath.Path, error) {
	st := u.local.For(store.UpstreamAccount)
	var done []storepath.Path
	var add func(p storepath.Path) error
	add = func(p storepath.Path) error {
		if v, _ := st.ValidPaths(ctx, []storepath.Path{p}); len(v) == 1 {
			return nil
		}
		u.mu.Lock()
		ni, n := u.paths[p], u.nars[p]
		u.mu.Unlock()
		if ni == nil {
			return errNotOffered // no cache has it: not an error of Substitute
		}
		for _, r := range ni.References {
			if err := add(r); err != nil {
				return err
			}
		}
		if progress != nil {
			defer progress.Copying(p, "http://upstream.test")(nil)
		}
		u.mu.Lock()
		u.fetched = append(u.fetched, p)
		u.mu.Unlock()
		return st.AddToStore(ctx, &store.PathInfo{Path: p, NarHash: ni.NarHash, NarSize: ni.NarSize, References: ni.References, Sigs: ni.Sigs}, bytes.NewReader(n))
	}
	for _, p := range paths {
		if err := add(p); errors.Is(err, errNotOffered) {
			continue
		} else if err != nil {
			return done, err
		}
		done = append(done, p)
	}
	return done, nil
}

var errNotOffered = errors.New("not offered")

type progressLog struct {
	mu    sync.Mutex
	lines []string
}

func (p *progressLog) Copying(path storepath.Path, from string) func(error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lines = append(p.lines, "copying "+string(path)+" from "+from)
	return func(error) {}
}

func (p *progressLog) Warning(msg string) {}

// upstreamFarm is a farm whose accounts trust the upstream cache's key,
// unless trusted is false.
func upstreamFarm(t *testing.T, trusted bool) (*farm, *fakeUpstream) {
	t.Helper()
	st, database, dir := testutil.Store(t)
	sk, pk, _ := signature.Generate("upstream-1")
	up := &fakeUpstream{local: st.Local, key: sk, paths: map[storepath.Path]*narinfo.NarInfo{}, nars: map[storepath.Path][]byte{}}
	keys := []signature.PublicKey{pk}
	if !trusted {
		_, other, _ := signature.Generate("other-1")
		keys = []signature.PublicKey{other}
	}
	views := trustingViews{local: st.Local, keys: keys}
	fb := &fakeBuilder{st: views, fail: map[string]bool{}}
	c, err := coordinator.New(views, testutil.Scheduler(t, fb), database, filepath.Join(dir, "logs"), coordinator.Options{
		Substituter: up,
		TrustedKeys: func(context.Context, string) []signature.PublicKey { return keys },
	})
	if err != nil {
		t.Fatal(err)
	}
	f := &farm{st: views.For(testutil.Account), db: database, builder: fb, coord: c}
	f.src = storepath.Path("/nix/store/" + strings.Repeat("s", 32) + "-source")
	addFile(t, f.st, f.src, "source", nil)
	return f, up
}

// A derivation whose outputs an upstream cache has is substituted, not
// built, in remote-builder and remote-store mode, and the client hears of
// each path copied.
func TestOutputsSubstituted(t *testing.T) {
	ctx := context.Background()
	f, up := upstreamFarm(t, true)
	drvPath := f.addDrv(t, "hello", []string{"out"}, nil)
	drv, err := store.ReadDerivation(ctx, f.st, drvPath)
	if err != nil {
		t.Fatal(err)
	}
	out := storepath.Path(drv.Outputs["out"].Path)
	dep := storepath.Path("/nix/store/" + strings.Repeat("d", 32) + "-glibc")
	up.offer(dep, "glibc", nil)
	up.offer(out, "hello from upstream", []storepath.Path{dep})

	var progress progressLog
	results, err := f.coord.Realise(ctx, []build.DerivedPath{{Path: drvPath, Built: true}}, build.Options{}, testutil.Account,
		struct {
			build.LogWriter
			*progressLog
		}{build.LogWriter{}, &progress})
	if err != nil || results[0].Status != build.Substituted {
		t.Fatalf("Realise: %v %+v", err, results)
	}
	if results[0].HashModulo.IsZero() || results[0].Outputs["out"] != out {
		t.Errorf("result %+v", results[0])
	}
	if len(f.builder.built) != 0 {
		t.Errorf("built %v, want nothing built", f.builder.built)
	}
	if got := strings.Join(progress.lines, "\n"); !strings.Contains(got, "copying "+string(dep)) || !strings.Contains(got, "copying "+string(out)) {
		t.Errorf("progress:\n%s", got)
	}
	info, err := f.st.QueryPathInfo(ctx, out)
	if err != nil || len(info.References) != 1 {
		t.Fatalf("substituted output: %v %+v", err, info)
	}
	var status int
	f.db.QueryRow(`SELECT status FROM builds WHERE drv_path = ?`, string(drvPath)).Scan(&status)
	if build.Status(status) != build.Substituted {
		t.Errorf("recorded status %v", build.Status(status))
	}
	var recStatus string
	var sizes string
	f.db.QueryRow(`SELECT record_status, output_sizes FROM builds WHERE drv_path = ?`, string(drvPath)).Scan(&recStatus, &sizes)
	if recStatus != "substituted" || !strings.Contains(sizes, `"narSize":`) || strings.Contains(sizes, `"narSize":0`) {
		t.Errorf("record: status %q, outputs %s", recStatus, sizes)
	}

	// Remote-builder mode: a BasicDerivation whose outputs are upstream.
	other := f.addDrv(t, "other", []string{"out"}, nil)
	od, _ := store.ReadDerivation(ctx, f.st, other)
	up.offer(storepath.Path(od.Outputs["out"].Path), "other", nil)
	res, err := f.coord.BuildDerivation(ctx, &build.Request{DrvPath: other, Drv: od.Basic("other", []string{string(f.src)}), Account: testutil.Account})
	if err != nil || res.Status != build.Substituted || len(f.builder.built) != 0 {
		t.Fatalf("BuildDerivation: %v %+v, built %v", err, res, f.builder.built)
	}
}

// Outputs only some of which are upstream are built, and nothing is
// fetched for them.
func TestPartlySubstitutableOutputsBuilt(t *testing.T) {
	ctx := context.Background()
	f, up := upstreamFarm(t, true)
	drvPath := f.addDrv(t, "split", []string{"out", "dev"}, nil)
	drv, _ := store.ReadDerivation(ctx, f.st, drvPath)
	up.offer(storepath.Path(drv.Outputs["out"].Path), "out only", nil)
	results, err := f.coord.Realise(ctx, []build.DerivedPath{{Path: drvPath, Built: true}}, build.Options{}, testutil.Account, nil)
	if err != nil || results[0].Status != build.Built {
		t.Fatalf("Realise: %v %+v", err, results)
	}
	if len(up.fetched) != 0 {
		t.Errorf("fetched %v", up.fetched)
	}
}

// An input the farm lacks is fetched from upstream before the build; an
// opaque path is too.
func TestMissingInputsSubstituted(t *testing.T) {
	ctx := context.Background()
	f, up := upstreamFarm(t, true)
	gcc := storepath.Path("/nix/store/" + strings.Repeat("g", 32) + "-gcc")
	up.offer(gcc, "gcc", nil)
	d := &derivation.Derivation{
		Outputs:   map[string]derivation.Output{"out": {}},
		InputSrcs: []string{string(f.src), string(gcc)},
		Platform:  "x86_64-linux", Builder: "/bin/sh", Args: []string{"-c", "true"},
		Env: map[string]string{"name": "needs-gcc"},
	}
	drvPath := testutil.Derivation(t, "needs-gcc", d, nil)
	res, err := f.coord.BuildDerivation(ctx, &build.Request{DrvPath: drvPath, Drv: d.Basic("needs-gcc", d.InputSrcs), Account: testutil.Account})
	if err != nil || res.Status != build.Built {
		t.Fatalf("BuildDerivation: %v %+v", err, res)
	}
	if len(up.fetched) != 1 || up.fetched[0] != gcc {
		t.Errorf("fetched %v", up.fetched)
	}

	opaque := storepath.Path("/nix/store/" + strings.Repeat("o", 32) + "-tarball")
	up.offer(opaque, "tarball", nil)
	results, err := f.coord.Realise(ctx, []build.DerivedPath{{Path: opaque}}, build.Options{}, testutil.Account, nil)
	if err != nil || results[0].Status != build.Substituted {
		t.Fatalf("Realise of an opaque path: %v %+v", err, results)
	}
	missing := storepath.Path("/nix/store/" + strings.Repeat("m", 32) + "-nowhere")
	results, err = f.coord.Realise(ctx, []build.DerivedPath{{Path: missing}}, build.Options{}, testutil.Account, nil)
	if err != nil || results[0].Status != build.NoSubstituters || !strings.Contains(results[0].ErrorMsg, "no upstream cache has it") {
		t.Fatalf("Realise of a path nobody has: %v %+v", err, results)
	}
}

// An account that does not trust the cache's key is neither offered nor
// given its paths: the derivation is built, and a missing input stays
// missing.
func TestUntrustedUpstreamNotUsed(t *testing.T) {
	ctx := context.Background()
	f, up := upstreamFarm(t, false)
	drvPath := f.addDrv(t, "hello", []string{"out"}, nil)
	drv, _ := store.ReadDerivation(ctx, f.st, drvPath)
	up.offer(storepath.Path(drv.Outputs["out"].Path), "hello from upstream", nil)
	m, err := f.coord.Missing(ctx, testutil.Account, []build.DerivedPath{{Path: drvPath, Built: true}})
	if err != nil || len(m.WillSubstitute) != 0 || len(m.WillBuild) != 1 {
		t.Fatalf("Missing: %v %+v", err, m)
	}
	results, err := f.coord.Realise(ctx, []build.DerivedPath{{Path: drvPath, Built: true}}, build.Options{}, testutil.Account, nil)
	if err != nil || results[0].Status != build.Built {
		t.Fatalf("Realise: %v %+v", err, results)
	}
	gcc := storepath.Path("/nix/store/" + strings.Repeat("g", 32) + "-gcc")
	up.offer(gcc, "gcc", nil)
	other := f.addDrv(t, "other", []string{"out"}, nil)
	od, _ := store.ReadDerivation(ctx, f.st, other)
	_, err = f.coord.BuildDerivation(ctx, &build.Request{DrvPath: other, Drv: od.Basic("other", []string{string(gcc)}), Account: testutil.Account})
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("BuildDerivation with an input only an untrusted cache has: %v", err)
	}
}

// Missing reports what would be fetched, with its sizes, and does not
// descend into a derivation whose outputs are upstream.
func TestMissingReportsSubstitutes(t *testing.T) {
	ctx := context.Background()
	f, up := upstreamFarm(t, true)
	a := f.addDrv(t, "a", []string{"out"}, nil)
	b := f.addDrv(t, "b", []string{"out"}, map[string][]string{string(a): {"out"}})
	bd, _ := store.ReadDerivation(ctx, f.st, b)
	bOut := storepath.Path(bd.Outputs["out"].Path)
	up.offer(bOut, "b from upstream", nil)
	m, err := f.coord.Missing(ctx, testutil.Account, []build.DerivedPath{{Path: b, Built: true}})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.WillBuild) != 0 || len(m.WillSubstitute) != 1 || m.WillSubstitute[0] != bOut || m.NarSize == 0 {
		t.Fatalf("Missing: %+v", m)
	}
	if len(up.fetched) != 0 {
		t.Errorf("Missing fetched %v", up.fetched)
	}
}
