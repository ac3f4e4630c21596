package serveproto_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// fakeBuilds records requests and answers with a fixed result.
type fakeBuilds struct {
	requests []*build.Request
	targets  []build.DerivedPath
	result   *build.Result
	err      error
	// during, if set, runs inside BuildDerivation before it returns.
	during func(req *build.Request)
}

func (f *fakeBuilds) BuildDerivation(ctx context.Context, req *build.Request) (*build.Result, error) {
	f.requests = append(f.requests, req)
	if f.during != nil {
		f.during(req)
	}
	return f.result, f.err
}

func (f *fakeBuilds) Realise(ctx context.Context, paths []build.DerivedPath, opts build.Options, account string, logs build.Logs) ([]*build.Result, error) {
	f.targets = append(f.targets, paths...)
	results := make([]*build.Result, len(paths))
	for i := range paths {
		results[i] = f.result
	}
	return results, f.err
}

// session runs a server over pipes and returns a client-side wire pair.
type session struct {
	w      *wire.Writer
	r      *wire.Reader
	stderr *syncBuffer
	done   chan error
	in     io.WriteCloser
}

type syncBuffer struct {
	ch  chan string
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.buf.Write(p)
	select {
	case b.ch <- string(p):
	default:
	}
	return len(p), nil
}

func startSession(t *testing.T, srv *serveproto.Server, write bool) *session {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	s := &session{w: wire.NewWriter(inW), r: wire.NewReader(outR), stderr: &syncBuffer{ch: make(chan string, 16)}, done: make(chan error, 1), in: inW}
	go func() {
		err := srv.Serve(context.Background(), inR, outW, &serveproto.Session{Account: "alice", Write: write, Stderr: s.stderr})
		outW.CloseWithError(io.EOF)
		inR.Close()
		s.done <- err
	}()
	t.Cleanup(func() { inW.Close() })
	return s
}

func (s *session) handshake(t *testing.T, version uint64) {
	t.Helper()
	s.w.Uint64(serveproto.Magic1)
	s.w.Uint64(version)
	if err := s.w.Flush(); err != nil {
		t.Fatal(err)
	}
	if m, _ := s.r.Uint64(); m != serveproto.Magic2 {
		t.Fatalf("server magic %x", m)
	}
	if v, _ := s.r.Uint64(); v != serveproto.Version {
		t.Fatalf("server version %x", v)
	}
}

func (s *session) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("server did not finish")
		return nil
	}
}

func testBasic() *derivation.Basic {
	return &derivation.Basic{
		Name:      "hello",
		Outputs:   map[string]derivation.Output{"out": {Path: "/nix/store/" + strings.Repeat("a", 32) + "-hello"}},
		InputSrcs: []string{},
		Platform:  "x86_64-linux",
		Builder:   "/bin/sh",
		Args:      []string{"-c", "echo"},
		Env:       map[string]string{"out": "/nix/store/" + strings.Repeat("a", 32) + "-hello"},
	}
}

var drvPath = "/nix/store/" + strings.Repeat("d", 32) + "-hello.drv"

// TestBuildDerivationVersionGating checks every field that depends on the
// protocol version, for clients at 2.5, 2.6 and 2.7.
func TestBuildDerivationVersionGating(t *testing.T) {
	for _, tc := range []struct {
		version      uint64
		keepFailed   bool // client sends keepFailed (≥ 2.7)
		builtOutputs bool // server sends builtOutputs (≥ 2.6)
	}{{0x205, false, false}, {0x206, false, true}, {0x207, true, true}} {
		st, _, _ := testutil.Store(t)
		out := storepath.Path("/nix/store/" + strings.Repeat("a", 32) + "-hello")
		fb := &fakeBuilds{result: &build.Result{
			Status: build.Built, TimesBuilt: 1, StartTime: time.Unix(1700000000, 0), StopTime: time.Unix(1700000005, 0),
			Outputs: map[string]storepath.Path{"out": out}, HashModulo: nixhash.SHA256Of([]byte("drv")),
		}}
		s := startSession(t, &serveproto.Server{Store: st, Builds: fb}, true)
		s.handshake(t, tc.version)
		s.w.Uint64(8) // BuildDerivation
		s.w.String(drvPath)
		testBasic().Write(s.w)
		s.w.Uint64(30) // maxSilentTime
		s.w.Uint64(60) // buildTimeout
		s.w.Uint64(1000)
		s.w.Uint64(0)
		s.w.Uint64(0)
		if tc.keepFailed {
			s.w.Uint64(1)
		}
		s.w.Flush()
		status, _ := s.r.Uint64()
		msg, _ := s.r.String(1000)
		times := make([]uint64, 4)
		for i := range times {
			times[i], _ = s.r.Uint64()
		}
		if status != 0 || msg != "" || times[0] != 1 || times[2] != 1700000000 || times[3] != 1700000005 {
			t.Errorf("%x: result %d %q %v", tc.version, status, msg, times)
		}
		if tc.builtOutputs {
			n, _ := s.r.Uint64()
			id, _ := s.r.String(1000)
			js, _ := s.r.String(10000)
			if n != 1 || !strings.HasSuffix(id, "!out") || !strings.Contains(js, `"outPath":"`+out.Base()+`"`) {
				t.Errorf("%x: builtOutputs %d %q %s", tc.version, n, id, js)
			}
		}
		// The next command must be read correctly: the stream is in sync.
		s.w.Uint64(1)
		s.w.Uint64(0)
		s.w.Uint64(0)
		s.w.Strings(nil)
		s.w.Flush()
		if valid, err := s.r.Strings(10, 1000); err != nil || len(valid) != 0 {
			t.Errorf("%x: stream out of sync: %v %v", tc.version, valid, err)
		}
		s.in.Close()
		if err := s.wait(t); err != nil {
			t.Errorf("%x: %v", tc.version, err)
		}
		req := fb.requests[0]
		if req.Options.MaxSilentTime != 30*time.Second || req.Options.Timeout != 60*time.Second || req.Options.MaxLogSize != 1000 || req.Options.KeepFailed != tc.keepFailed {
			t.Errorf("%x: options %+v", tc.version, req.Options)
		}
		if req.Account != "alice" || string(req.DrvPath) != drvPath || req.Drv.Name != "hello" {
			t.Errorf("%x: request %+v", tc.version, req)
		}
	}
}

func TestHandshakeRejects(t *testing.T) {
	for _, tc := range []struct {
		name  string
		bytes func(w *wire.Writer)
		want  string
	}{
		{"bad magic", func(w *wire.Writer) { w.Uint64(0x12345678) }, "bad magic"},
		{"old client", func(w *wire.Writer) { w.Uint64(serveproto.Magic1); w.Uint64(0x204) }, "supports 2.5 to 2.7"},
		{"wrong major", func(w *wire.Writer) { w.Uint64(serveproto.Magic1); w.Uint64(0x107) }, "supports 2.5 to 2.7"},
		{"cut short", func(w *wire.Writer) { w.Write([]byte{1, 2, 3}) }, "handshake"},
	} {
		st, _, _ := testutil.Store(t)
		var out, in bytes.Buffer
		w := wire.NewWriter(&in)
		tc.bytes(w)
		w.Flush()
		err := (&serveproto.Server{Store: st, Builds: &fakeBuilds{}}).Serve(context.Background(), &in, &out, &serveproto.Session{Account: testutil.Account, Stderr: io.Discard})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestLogStreamsDuringBuild checks that a log line reaches the client's
// stderr while the build is still running.
func TestLogStreamsDuringBuild(t *testing.T) {
	st, _, _ := testutil.Store(t)
	seen := make(chan struct{})
	var s *session
	fb := &fakeBuilds{result: &build.Result{Status: build.Built}}
	fb.during = func(req *build.Request) {
		io.WriteString(req.Log, "compiling part 1\n")
		for {
			select {
			case line := <-s.stderr.ch:
				if strings.Contains(line, "compiling part 1") {
					close(seen)
					return
				}
			case <-time.After(10 * time.Second):
				return // the test fails below
			}
		}
	}
	s = startSession(t, &serveproto.Server{Store: st, Builds: fb}, true)
	s.handshake(t, serveproto.Version)
	s.w.Uint64(8)
	s.w.String(drvPath)
	testBasic().Write(s.w)
	for i := 0; i < 6; i++ {
		s.w.Uint64(0)
	}
	s.w.Flush()
	select {
	case <-seen:
	case <-time.After(15 * time.Second):
		t.Fatal("the log line did not reach stderr while the build ran")
	}
	if st, _ := s.r.Uint64(); st != 0 {
		t.Errorf("status %d", st)
	}
}

func TestReadOnlyRefusesWrites(t *testing.T) {
	for _, cmd := range []uint64{4, 6, 8, 9} {
		st, _, _ := testutil.Store(t)
		s := startSession(t, &serveproto.Server{Store: st, Builds: &fakeBuilds{}}, false)
		s.handshake(t, serveproto.Version)
		s.w.Uint64(cmd)
		s.w.Flush()
		err := s.wait(t)
		if err == nil || !strings.Contains(err.Error(), "read-only") {
			t.Errorf("command %d on a read-only session: %v", cmd, err)
		}
	}
}

func fileNar(contents string) []byte { return testutil.FileNar(contents) }

func pipeClient(t *testing.T, srv *serveproto.Server) (*serveproto.Client, func() error) {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := srv.Serve(context.Background(), inR, outW, &serveproto.Session{Account: "alice", Write: true, Stderr: io.Discard})
		outW.CloseWithError(io.EOF)
		inR.Close()
		done <- err
	}()
	c, err := serveproto.NewClient(outR, inW)
	if err != nil {
		t.Fatal(err)
	}
	return c, func() error { inW.Close(); return <-done }
}

// TestClientServerRoundTrip exercises every command through our own client.
func TestClientServerRoundTrip(t *testing.T) {
	st, _, _ := testutil.Store(t)
	fb := &fakeBuilds{result: &build.Result{Status: build.Built}}
	c, closeFn := pipeClient(t, &serveproto.Server{Store: st, Builds: fb})
	na, nb := fileNar("a"), fileNar("b refers to a")
	a, _ := storepath.MakeFixedOutput("a", true, nixhash.SHA256Of(na), nil, false)
	b := storepath.Path("/nix/store/" + strings.Repeat("b", 32) + "-b")
	ia := &store.PathInfo{Path: a, NarHash: nixhash.SHA256Of(na), NarSize: uint64(len(na)), CA: "fixed:r:sha256:" + nixhash.SHA256Of(na).Nix32()}
	ib := &store.PathInfo{Path: b, NarHash: nixhash.SHA256Of(nb), NarSize: uint64(len(nb)), References: []storepath.Path{a}, Deriver: storepath.Path(drvPath)}
	if err := c.AddToStoreNar(ia, bytes.NewReader(na)); err != nil {
		t.Fatal(err)
	}
	if err := c.AddToStoreNar(ib, bytes.NewReader(nb)); err != nil {
		t.Fatal(err)
	}
	valid, err := c.QueryValidPaths([]storepath.Path{a, b, storepath.Path("/nix/store/" + strings.Repeat("c", 32) + "-c")}, false, false)
	if err != nil || len(valid) != 2 {
		t.Fatalf("valid %v %v", valid, err)
	}
	infos, err := c.QueryPathInfos([]storepath.Path{b, storepath.Path("/nix/store/" + strings.Repeat("c", 32) + "-c"), a})
	if err != nil || len(infos) != 2 {
		t.Fatalf("infos %v %v", infos, err)
	}
	if infos[0].Path != b || infos[0].Deriver != storepath.Path(drvPath) || !infos[0].NarHash.Equal(ib.NarHash) || len(infos[0].References) != 1 {
		t.Errorf("info b %+v", infos[0])
	}
	if infos[1].CA != ia.CA {
		t.Errorf("ca %q", infos[1].CA)
	}
	closure, err := c.QueryClosure([]storepath.Path{b}, false)
	if err != nil || len(closure) != 2 {
		t.Errorf("closure %v %v", closure, err)
	}
	var got bytes.Buffer
	if _, err := c.DumpStorePath(b, &got); err != nil || !bytes.Equal(got.Bytes(), nb) {
		t.Errorf("dump: %v", err)
	}
	res, err := c.BuildPaths([]build.DerivedPath{{Path: storepath.Path(drvPath), Built: true, Outputs: []string{"out", "dev"}}, {Path: a}}, build.Options{})
	if err != nil || res.Status != build.Built {
		t.Errorf("BuildPaths %v %v", res, err)
	}
	if len(fb.targets) != 2 || fb.targets[0].String() != drvPath+"!out,dev" || fb.targets[1].Path != a || fb.targets[1].Built {
		t.Errorf("targets %v", fb.targets)
	}
	fb.result = &build.Result{Status: build.PermanentFailure, ErrorMsg: "builder failed"}
	res, err = c.BuildPaths([]build.DerivedPath{{Path: storepath.Path(drvPath), Built: true}}, build.Options{})
	if err != nil || res.Status.Success() || res.ErrorMsg != "builder failed" {
		t.Errorf("failed BuildPaths %v %v", res, err)
	}
	if err := closeFn(); err != nil {
		t.Error(err)
	}
}

// TestExportImport moves paths from one farm store to another with the
// export format, as old clients and Hydra do.
func TestExportImport(t *testing.T) {
	src, _, _ := testutil.Store(t)
	dst, _, _ := testutil.Store(t)
	ctx := context.Background()
	a := storepath.Path("/nix/store/" + strings.Repeat("a", 32) + "-a")
	b := storepath.Path("/nix/store/" + strings.Repeat("b", 32) + "-b")
	na, nb := fileNar("a"), fileNar("b")
	src.AddToStore(ctx, &store.PathInfo{Path: a, NarHash: nixhash.SHA256Of(na), NarSize: uint64(len(na))}, bytes.NewReader(na))
	src.AddToStore(ctx, &store.PathInfo{Path: b, NarHash: nixhash.SHA256Of(nb), NarSize: uint64(len(nb)), References: []storepath.Path{a}}, bytes.NewReader(nb))

	// Export from src: ExportPaths (5) writes the stream after the request.
	var req bytes.Buffer
	w := wire.NewWriter(&req)
	w.Uint64(serveproto.Magic1)
	w.Uint64(serveproto.Version)
	w.Uint64(5)
	w.Uint64(0)
	w.Strings([]string{string(b), string(a)})
	w.Flush()
	var out bytes.Buffer
	if err := (&serveproto.Server{Store: src, Builds: &fakeBuilds{}}).Serve(ctx, &req, &out, &serveproto.Session{Account: testutil.Account, Stderr: io.Discard}); err != nil {
		t.Fatal(err)
	}
	export := out.Bytes()[16:] // after the handshake reply

	// Import into dst: ImportPaths (4) reads the same stream.
	req.Reset()
	w = wire.NewWriter(&req)
	w.Uint64(serveproto.Magic1)
	w.Uint64(serveproto.Version)
	w.Uint64(4)
	w.Write(export)
	w.Flush()
	out.Reset()
	if err := (&serveproto.Server{Store: dst, Builds: &fakeBuilds{}, TempDir: t.TempDir()}).Serve(ctx, &req, &out, &serveproto.Session{Account: testutil.Account, Write: true, Stderr: io.Discard}); err != nil {
		t.Fatal(err)
	}
	r := wire.NewReader(bufio.NewReader(bytes.NewReader(out.Bytes()[16:])))
	if ok, _ := r.Uint64(); ok != 1 {
		t.Errorf("import reply %d", ok)
	}
	for _, p := range []storepath.Path{a, b} {
		want, _ := src.QueryPathInfo(ctx, p)
		got, err := dst.QueryPathInfo(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if !got.NarHash.Equal(want.NarHash) || got.NarSize != want.NarSize || len(got.References) != len(want.References) {
			t.Errorf("%s: imported %+v, exported %+v", p, got, want)
		}
	}
}

// TestBadAddToStoreNar sends uploads that lie and checks that each is
// rejected with a message naming the problem and that nothing is
// registered.
func TestBadAddToStoreNar(t *testing.T) {
	good := fileNar("contents")
	p := storepath.Path("/nix/store/" + strings.Repeat("a", 32) + "-a")
	for _, tc := range []struct {
		name string
		hash string
		size uint64
		nar  []byte
		want string
	}{
		{"wrong hash", nixhash.SHA256Of([]byte("x")).Hex(), uint64(len(good)), good, "NAR hash mismatch"},
		{"bad hash syntax", "not-a-hash", uint64(len(good)), good, "narHash"},
		{"size zero", nixhash.SHA256Of(good).Hex(), 0, nil, "narSize 0"},
		{"size too small", nixhash.SHA256Of(good).Hex(), uint64(len(good)) - 8, good[:len(good)-8], "EOF"},
		{"trailing bytes in size", nixhash.SHA256Of(good).Hex(), uint64(len(good)) + 8, append(append([]byte{}, good...), make([]byte, 8)...), "declared 128 bytes, got 120"},
		{"not a NAR", nixhash.SHA256Of(good).Hex(), 16, []byte("0123456789abcdef"), "magic"},
	} {
		st, _, _ := testutil.Store(t)
		var in bytes.Buffer
		w := wire.NewWriter(&in)
		w.Uint64(serveproto.Magic1)
		w.Uint64(serveproto.Version)
		w.Uint64(9)
		w.String(string(p))
		w.String("")
		w.String(tc.hash)
		w.Strings(nil)
		w.Uint64(0)
		w.Uint64(tc.size)
		w.Uint64(0)
		w.Strings(nil)
		w.String("")
		w.Write(tc.nar)
		w.Flush()
		err := (&serveproto.Server{Store: st, Builds: &fakeBuilds{}}).Serve(context.Background(), &in, io.Discard, &serveproto.Session{Account: testutil.Account, Write: true, Stderr: io.Discard})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
		if _, err := st.QueryPathInfo(context.Background(), p); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s: registered (%v)", tc.name, err)
		}
	}
}
