package daemonproto_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/coordinator"
	"github.com/nixfarm/nixfarm/internal/daemonproto"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// fakeBuilder "builds" by printing two log lines and writing each output
// as a file naming the build, at fixed times.
type fakeBuilder struct {
	st       store.Store
	mu       sync.Mutex
	requests []*build.Request
	fail     bool
}

func (b *fakeBuilder) Build(ctx context.Context, req *build.Request) (*build.Result, error) {
	b.mu.Lock()
	b.requests = append(b.requests, req)
	b.mu.Unlock()
	fmt.Fprintf(req.Log, "building %s\nsecond line\n", req.Drv.Name)
	if b.fail {
		return &build.Result{Status: build.PermanentFailure, ErrorMsg: "builder for '" + string(req.DrvPath) + "' failed with exit code 1"}, nil
	}
	outs := req.Drv.OutputPaths()
	for _, p := range outs {
		n := testutil.FileNar("built " + req.Drv.Name)
		if err := b.st.AddToStore(ctx, &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}, bytes.NewReader(n)); err != nil {
			return nil, err
		}
	}
	return &build.Result{Status: build.Built, TimesBuilt: 1, StartTime: time.Unix(1700000000, 0), StopTime: time.Unix(1700000005, 0), Outputs: outs, Worker: "fake"}, nil
}

type farm struct {
	st      *testutil.TestStore
	builder *fakeBuilder
	srv     *daemonproto.Server
}

func newFarm(t testing.TB) *farm {
	t.Helper()
	st, database, dir := testutil.Store(t)
	fb := &fakeBuilder{st: st}
	coord, err := coordinator.New(st, testutil.Scheduler(t, fb), database, filepath.Join(dir, "logs"), coordinator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &farm{st: st, builder: fb, srv: &daemonproto.Server{Store: st, Builds: coord, TempDir: dir, NixVersion: "nixfarm-test"}}
}

// connect runs a session over pipes and returns a client at version. The
// returned function closes the client's side and returns Serve's result.
func (f *farm) connect(t *testing.T, version uint64) (*daemonproto.Client, func() error) {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := f.srv.Serve(context.Background(), inR, outW, &daemonproto.Session{Account: "alice"})
		outW.CloseWithError(io.EOF)
		inR.Close()
		done <- err
	}()
	c, err := daemonproto.NewClient(outR, inW, version)
	if err != nil {
		inW.Close()
		t.Fatalf("handshake at %x: %v (server: %v)", version, err, <-done)
	}
	var once sync.Once
	var serveErr error
	closeFn := func() error {
		once.Do(func() {
			inW.Close()
			select {
			case serveErr = <-done:
			case <-time.After(10 * time.Second):
				serveErr = errors.New("the server did not end the session")
			}
		})
		return serveErr
	}
	t.Cleanup(func() { closeFn() })
	return c, closeFn
}

var versions = []uint64{0x115, 0x116, 0x117, 0x11a, 0x11c, 0x11d, 0x120, 0x122, 0x125, 0x126}

func TestHandshake(t *testing.T) {
	f := newFarm(t)
	for _, v := range append(versions, 0x127) {
		c, closeFn := f.connect(t, v)
		if c.Version != min(v, daemonproto.Version) || c.DaemonVersion != daemonproto.Version {
			t.Errorf("%x: negotiated %x, daemon %x", v, c.Version, c.DaemonVersion)
		}
		if (v&0xff >= 33) != (c.NixVersion == "nixfarm-test") {
			t.Errorf("%x: Nix version %q", v, c.NixVersion)
		}
		if (v&0xff >= 35) != (c.Trust == 1) {
			t.Errorf("%x: trust %d", v, c.Trust)
		}
		if err := closeFn(); err != nil {
			t.Errorf("%x: %v", v, err)
		}
	}
}

func TestHandshakeRejects(t *testing.T) {
	f := newFarm(t)
	// A wrong magic number.
	var out bytes.Buffer
	in := bytes.NewReader([]byte{1, 2, 3, 4, 5, 6, 7, 8})
	err := f.srv.Serve(context.Background(), in, &out, &daemonproto.Session{})
	if err == nil || !strings.Contains(err.Error(), "bad magic number") || out.Len() != 0 {
		t.Errorf("wrong magic: %v (%d bytes sent)", err, out.Len())
	}
	// A client below 1.10 gets its connection closed.
	for _, v := range []uint64{0x109, 0x200, 0x5} {
		in := new(bytes.Buffer)
		le := func(x uint64) {
			b := make([]byte, 8)
			for i := range b {
				b[i] = byte(x >> (8 * i))
			}
			in.Write(b)
		}
		le(daemonproto.Magic1)
		le(v)
		out.Reset()
		err := f.srv.Serve(context.Background(), in, &out, &daemonproto.Session{})
		if err == nil || !strings.Contains(err.Error(), "nixfarm needs 1.21") {
			t.Errorf("version %x: %v", v, err)
		}
	}
	// Between 1.10 and 1.21 the client understands an error frame, and
	// is told why.
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	go func() {
		f.srv.Serve(context.Background(), inR, outW, &daemonproto.Session{})
		outW.Close()
	}()
	_, err = daemonproto.NewClient(outR, inW, 0x114)
	var re *daemonproto.RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Message, "1.20") || !strings.Contains(re.Message, "1.21 (Nix 2.3)") {
		t.Errorf("1.20 client: %v", err)
	}
	inW.Close()
}

func textNar(s string) ([]byte, *store.PathInfo) {
	n := testutil.FileNar(s)
	p, _ := storepath.MakeFixedOutput("upload", true, nixhash.SHA256Of(n), nil, false)
	return n, &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)), CA: "fixed:r:" + nixhash.SHA256Of(n).String()}
}

// TestUploadAndQuery uploads with each NAR transfer style (inline before
// 1.21, STDERR_READ at 1.21 and 1.22, framed from 1.23) and reads back.
func TestUploadAndQuery(t *testing.T) {
	for _, v := range versions {
		f := newFarm(t)
		c, closeFn := f.connect(t, v)
		n, info := textNar(fmt.Sprintf("uploaded at %x", v))
		if err := c.AddToStoreNar(info, bytes.NewReader(n)); err != nil {
			t.Fatalf("%x: %v", v, err)
		}
		if ok, err := c.IsValidPath(info.Path); err != nil || !ok {
			t.Errorf("%x: IsValidPath %v %v", v, ok, err)
		}
		missing := storepath.Path("/nix/store/" + strings.Repeat("m", 32) + "-missing")
		valid, err := c.QueryValidPaths([]storepath.Path{missing, info.Path}, false)
		if err != nil || len(valid) != 1 || valid[0] != info.Path {
			t.Errorf("%x: QueryValidPaths %v %v", v, valid, err)
		}
		got, err := c.QueryPathInfo(info.Path)
		if err != nil || got == nil || !got.NarHash.Equal(info.NarHash) || got.NarSize != info.NarSize || got.CA != info.CA {
			t.Errorf("%x: QueryPathInfo %+v %v", v, got, err)
		}
		if got, err := c.QueryPathInfo(missing); err != nil || got != nil {
			t.Errorf("%x: QueryPathInfo of a missing path: %+v %v", v, got, err)
		}
		var back bytes.Buffer
		if _, err := c.NarFromPath(info.Path, &back); err != nil || !bytes.Equal(back.Bytes(), n) {
			t.Errorf("%x: NarFromPath %v", v, err)
		}
		if _, err := c.NarFromPath(missing, io.Discard); err == nil || !strings.Contains(err.Error(), "is not valid") {
			t.Errorf("%x: NarFromPath of a missing path: %v", v, err)
		}
		if ok, err := c.IsValidPath(info.Path); err != nil || !ok {
			t.Errorf("%x: connection unusable after an error: %v", v, err)
		}
		if err := closeFn(); err != nil {
			t.Errorf("%x: %v", v, err)
		}
	}
}

func TestAddMultipleAndText(t *testing.T) {
	f := newFarm(t)
	c, closeFn := f.connect(t, 0x122)
	n1, i1 := textNar("first")
	n2, i2 := textNar("second")
	if err := c.AddMultipleToStore([]*store.PathInfo{i1, i2}, []io.Reader{bytes.NewReader(n1), bytes.NewReader(n2)}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []storepath.Path{i1.Path, i2.Path} {
		if ok, _ := c.IsValidPath(p); !ok {
			t.Errorf("%s not added", p)
		}
	}
	text := "Derive([])"
	want, _ := storepath.MakeText("x.drv", []byte(text), []storepath.Path{i1.Path})
	for _, v := range []uint64{0x118, 0x122} { // AddTextToStore before 1.25, AddToStore after
		f := newFarm(t)
		c, _ := f.connect(t, v)
		c.AddToStoreNar(i1, bytes.NewReader(n1))
		p, err := c.AddTextToStore("x.drv", text, []storepath.Path{i1.Path})
		if err != nil || p != want {
			t.Errorf("%x: AddTextToStore %s %v, want %s", v, p, err, want)
		}
		info, _ := c.QueryPathInfo(p)
		if info == nil || len(info.References) != 1 || !strings.HasPrefix(info.CA, "text:sha256:") {
			t.Errorf("%x: text path info %+v", v, info)
		}
	}
	closeFn()
}

// TestBadInput checks that each kind of bad request gets an error naming
// the problem, that nothing half-written is registered, and that the
// connection goes on where the stream allows it.
func TestBadInput(t *testing.T) {
	f := newFarm(t)
	c, closeFn := f.connect(t, 0x122)
	n, info := textNar("contents")

	// A framed NAR cut short: the stream ends before the NAR does.
	cut := *info
	cut.NarSize = uint64(len(n) / 2)
	err := c.AddToStoreNar(&cut, bytes.NewReader(n))
	var re *daemonproto.RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Message, "EOF") {
		t.Errorf("cut-short NAR: %v", err)
	}
	// A NAR that does not match its narHash.
	lie := *info
	lie.NarHash = nixhash.SHA256Of([]byte("another NAR"))
	if err := c.AddToStoreNar(&lie, bytes.NewReader(n)); !errors.As(err, &re) || !strings.Contains(re.Message, "NAR hash mismatch") {
		t.Errorf("wrong narHash: %v", err)
	}
	if ok, err := c.IsValidPath(info.Path); err != nil || ok {
		t.Errorf("after bad uploads: valid %v, err %v", ok, err)
	}
	// A path that is not a store path.
	if _, err := c.QueryPathInfo("/tmp/not-a-store-path"); !errors.As(err, &re) || !strings.Contains(re.Message, "not in /nix/store") {
		t.Errorf("bad path: %v", err)
	}
	// A known operation nixfarm does not support.
	if err := daemonproto.CallRaw(c, daemonproto.OpQueryAllValidPaths, nil); !errors.As(err, &re) || !strings.Contains(re.Message, "QueryAllValidPaths") {
		t.Errorf("unsupported op: %v", err)
	}
	// The connection still works.
	if err := c.AddToStoreNar(info, bytes.NewReader(n)); err != nil {
		t.Errorf("good upload after bad ones: %v", err)
	}
	// An unknown operation: its arguments can't be skipped, so the
	// connection ends, with an error naming it.
	err = daemonproto.CallRaw(c, 99, nil)
	if !errors.As(err, &re) || !strings.Contains(re.Message, "unknown operation 99") {
		t.Errorf("unknown op: %v", err)
	}
	if err := closeFn(); err == nil || !strings.Contains(err.Error(), "unknown operation 99") {
		t.Errorf("Serve after an unknown op: %v", err)
	}
	// And the server keeps serving others.
	c2, close2 := f.connect(t, 0x126)
	if ok, err := c2.IsValidPath(info.Path); err != nil || !ok {
		t.Errorf("new connection: %v %v", ok, err)
	}
	close2()
}

// basic returns a BasicDerivation named name with one output.
func basic(t *testing.T, name string) (storepath.Path, *derivation.Basic, *derivation.Derivation) {
	t.Helper()
	d := &derivation.Derivation{
		Outputs:  map[string]derivation.Output{"out": {}},
		Platform: "x86_64-linux", Builder: "/bin/sh", Args: []string{"-c", "true"},
	}
	drvPath := testutil.Derivation(t, name, d, nil)
	return drvPath, d.Basic(name, nil), d
}

func TestBuildDerivationAcrossVersions(t *testing.T) {
	for _, v := range versions {
		f := newFarm(t)
		c, closeFn := f.connect(t, v)
		var lines []string
		c.OnLogLine = func(l string) { lines = append(lines, l) }
		drvPath, drv, _ := basic(t, fmt.Sprintf("v%x", v))
		res, err := c.BuildDerivation(drvPath, drv)
		if err != nil {
			t.Fatalf("%x: %v", v, err)
		}
		if res.Status != build.Built {
			t.Errorf("%x: status %v %q", v, res.Status, res.ErrorMsg)
		}
		if v&0xff >= 29 && (res.TimesBuilt != 1 || res.StartTime.Unix() != 1700000000 || res.StopTime.Unix() != 1700000005) {
			t.Errorf("%x: times %+v", v, res)
		}
		if v&0xff >= 28 && res.Outputs["out"] != drv.OutputPaths()["out"] {
			t.Errorf("%x: built outputs %v", v, res.Outputs)
		}
		if strings.Join(lines, "|") != "building v"+fmt.Sprintf("%x", v)+"|second line" {
			t.Errorf("%x: log lines %q", v, lines)
		}
		// A second build of the same derivation is answered from the store.
		if res, err := c.BuildDerivation(drvPath, drv); err != nil || res.Status != build.AlreadyValid {
			t.Errorf("%x: second build %+v %v", v, res, err)
		}
		if err := closeFn(); err != nil {
			t.Errorf("%x: %v", v, err)
		}
	}
}

// TestRealise uploads a .drv closure and builds it on the farm, as
// remote-store mode does.
func TestRealise(t *testing.T) {
	f := newFarm(t)
	c, closeFn := f.connect(t, 0x122)
	_, _, a := basic(t, "dep")
	aPath, err := c.AddTextToStore("dep.drv", string(a.Bytes()), nil)
	if err != nil {
		t.Fatal(err)
	}
	top := &derivation.Derivation{
		Outputs:   map[string]derivation.Output{"out": {}},
		InputDrvs: map[string][]string{string(aPath): {"out"}},
		Platform:  "x86_64-linux", Builder: "/bin/sh", Args: []string{"-c", "true"},
	}
	resolve := func(p string) (*derivation.Derivation, error) {
		return store.ReadDerivation(context.Background(), f.st, storepath.Path(p))
	}
	testutil.Derivation(t, "top", top, resolve)
	outs := top.Basic("top", nil).OutputPaths()
	topPath, err := c.AddTextToStore("top.drv", string(top.Bytes()), []storepath.Path{aPath})
	if err != nil {
		t.Fatal(err)
	}
	target := []build.DerivedPath{{Path: topPath, Built: true, Outputs: []string{"out"}}}
	willBuild, unknown, err := c.QueryMissing(target)
	if err != nil || len(willBuild) != 2 || len(unknown) != 0 {
		t.Errorf("QueryMissing: %v %v %v", willBuild, unknown, err)
	}
	outMap, err := c.QueryDerivationOutputMap(topPath)
	if err != nil || outMap["out"] != outs["out"] {
		t.Errorf("QueryDerivationOutputMap %v %v", outMap, err)
	}
	results, err := c.BuildPathsWithResults(target)
	if err != nil || len(results) != 1 || results[0].Status != build.Built || results[0].Outputs["out"] != outs["out"] {
		t.Fatalf("BuildPathsWithResults %+v %v", results, err)
	}
	// The realisation is named after the full derivation's hash.
	want, _ := derivation.HashModulo(top, resolve)
	if !results[0].HashModulo.Equal(want) {
		t.Errorf("realisation hash %s, want %s", results[0].HashModulo, want)
	}
	if willBuild, _, _ := c.QueryMissing(target); len(willBuild) != 0 {
		t.Errorf("still missing after the build: %v", willBuild)
	}
	// BuildPaths of a derivation that fails is an error that says so.
	_, _, broken := basic(t, "broken")
	brokenPath, _ := c.AddTextToStore("broken.drv", string(broken.Bytes()), nil)
	f.builder.fail = true
	err = c.BuildPaths([]build.DerivedPath{{Path: brokenPath, Built: true}})
	var re *daemonproto.RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Message, "failed with exit code 1") {
		t.Errorf("failed BuildPaths: %v", err)
	}
	// An opaque path the farm lacks cannot be realised.
	results, err = c.BuildPathsWithResults([]build.DerivedPath{{Path: storepath.Path("/nix/store/" + strings.Repeat("z", 32) + "-nowhere")}})
	if err != nil || results[0].Status != build.NoSubstituters {
		t.Errorf("missing opaque path: %+v %v", results, err)
	}
	closeFn()
}

func TestSetOptions(t *testing.T) {
	f := newFarm(t)
	c, closeFn := f.connect(t, 0x122)
	if err := c.SetOptions(build.Options{MaxSilentTime: 30 * time.Second, Cores: 3}, map[string]string{"timeout": "600", "max-log-size": "1000"}); err != nil {
		t.Fatal(err)
	}
	drvPath, drv, _ := basic(t, "opts")
	if _, err := c.BuildDerivation(drvPath, drv); err != nil {
		t.Fatal(err)
	}
	got := f.builder.requests[0].Options
	if got.MaxSilentTime != 30*time.Second || got.Timeout != 600*time.Second || got.MaxLogSize != 1000 || got.Cores != 3 {
		t.Errorf("options %+v", got)
	}
	closeFn()
}

func derivationHash(drv *derivation.Basic) (string, error) {
	h, err := derivation.HashModulo(drv.Derivation(), nil)
	return h.Hex(), err
}

// TestSmallOps covers the operations clients send around builds.
func TestSmallOps(t *testing.T) {
	f := newFarm(t)
	c, closeFn := f.connect(t, 0x126)
	n, info := textNar("referenced")
	if err := c.AddToStoreNar(info, bytes.NewReader(n)); err != nil {
		t.Fatal(err)
	}
	rn := testutil.FileNar("refers to " + string(info.Path))
	referrer := &store.PathInfo{Path: storepath.Path("/nix/store/" + strings.Repeat("r", 32) + "-referrer"),
		NarHash: nixhash.SHA256Of(rn), NarSize: uint64(len(rn)), References: []storepath.Path{info.Path}}
	if err := c.AddToStoreNar(referrer, bytes.NewReader(rn)); err != nil {
		t.Fatal(err)
	}
	path := func(w *wire.Writer) { w.String(string(info.Path)) }

	var got []string
	reply := func(op daemonproto.Op, args func(w *wire.Writer), read func(r *wire.Reader) error) {
		t.Helper()
		if err := daemonproto.CallRaw(c, op, args); err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		if err := read(daemonproto.ClientReader(c)); err != nil {
			t.Fatalf("%s reply: %v", op, err)
		}
	}
	strs := func(r *wire.Reader) error { var err error; got, err = r.Strings(100, 1000); return err }
	str := func(r *wire.Reader) error { s, err := r.String(1000); got = []string{s}; return err }
	one := func(r *wire.Reader) error {
		v, err := r.Uint64()
		if err == nil && v != 1 {
			err = fmt.Errorf("replied %d", v)
		}
		return err
	}

	reply(daemonproto.OpQueryReferrers, path, strs)
	if len(got) != 1 || got[0] != string(referrer.Path) {
		t.Errorf("QueryReferrers %v", got)
	}
	reply(daemonproto.OpQueryPathFromHashPart, func(w *wire.Writer) { w.String(info.Path.HashPart()) }, str)
	if got[0] != string(info.Path) {
		t.Errorf("QueryPathFromHashPart %v", got)
	}
	reply(daemonproto.OpQueryPathFromHashPart, func(w *wire.Writer) { w.String(strings.Repeat("0", 32)) }, str)
	if got[0] != "" {
		t.Errorf("QueryPathFromHashPart of an unknown hash: %v", got)
	}
	reply(daemonproto.OpAddTempRoot, path, one)
	reply(daemonproto.OpAddIndirectRoot, func(w *wire.Writer) { w.String("/home/alice/result") }, one)
	reply(daemonproto.OpAddPermRoot, func(w *wire.Writer) { path(w); w.String("/home/alice/result") }, str)
	reply(daemonproto.OpAddSignatures, func(w *wire.Writer) { path(w); w.Strings([]string{"cache.example.org-1:c2lnbmF0dXJl"}) }, one)
	if info, _ := c.QueryPathInfo(info.Path); info == nil || len(info.Sigs) != 1 {
		t.Errorf("signature not kept: %+v", info)
	}
	reply(daemonproto.OpQueryRealisation, func(w *wire.Writer) { w.String("sha256:" + strings.Repeat("0", 64) + "!out") }, strs)
	if len(got) != 0 {
		t.Errorf("QueryRealisation %v", got)
	}
	if err := daemonproto.CallRaw(c, daemonproto.OpRegisterDrvOutput, func(w *wire.Writer) { w.String(`{"id":"x"}`) }); err != nil {
		t.Errorf("RegisterDrvOutput: %v", err)
	}
	reply(daemonproto.OpQueryValidDerivers, path, strs)
	reply(daemonproto.OpQuerySubstitutablePaths, func(w *wire.Writer) { w.Strings([]string{string(info.Path)}) }, strs)
	if len(got) != 0 {
		t.Errorf("QuerySubstitutablePaths %v", got)
	}
	if err := closeFn(); err != nil {
		t.Error(err)
	}
}
