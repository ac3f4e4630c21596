package daemonproto_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/daemonproto"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// enc builds expected bytes field by field, independently of the code
// under test: u64 little-endian, strings padded to 8 bytes.
type enc struct{ bytes.Buffer }

func (e *enc) u(vs ...uint64) *enc {
	for _, v := range vs {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], v)
		e.Write(b[:])
	}
	return e
}

func (e *enc) s(ss ...string) *enc {
	for _, s := range ss {
		e.u(uint64(len(s)))
		e.WriteString(s)
		e.Write(make([]byte, (8-len(s)%8)%8))
	}
	return e
}

func (e *enc) list(ss ...string) *enc { return e.u(uint64(len(ss))).s(ss...) }

const (
	stderrLast  = 0x616c7473
	stderrRead  = 0x64617461
	stderrStart = 0x53545254
	stderrStop  = 0x53544f50
	stderrRes   = 0x52534c54
)

// exchange drives a server as a scripted client: it sends bytes and
// requires exactly the expected bytes back.
type exchange struct {
	t   *testing.T
	in  *io.PipeWriter
	out *io.PipeReader
}

func (x *exchange) send(e *enc) {
	x.t.Helper()
	if _, err := x.in.Write(e.Bytes()); err != nil {
		x.t.Fatal(err)
	}
}

func (x *exchange) expect(step string, e *enc) {
	x.t.Helper()
	want := e.Bytes()
	got := make([]byte, len(want))
	done := make(chan error, 1)
	go func() { _, err := io.ReadFull(x.out, got); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			x.t.Fatalf("%s: reading %d bytes: %v", step, len(want), err)
		}
	case <-time.After(10 * time.Second):
		x.t.Fatalf("%s: the server sent less than the %d bytes expected", step, len(want))
	}
	for i := 0; i < len(want); i += 8 {
		if !bytes.Equal(got[i:i+8], want[i:i+8]) {
			x.t.Fatalf("%s: byte %d: got % x, want % x", step, i, got[i:i+8], want[i:i+8])
		}
	}
}

func (x *exchange) u64() uint64 {
	var b [8]byte
	if _, err := io.ReadFull(x.out, b[:]); err != nil {
		x.t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

type transcriptFixture struct {
	f         *farm
	known     *store.PathInfo // registered before the session, at a fixed time
	upload    *store.PathInfo
	uploadNar []byte
}

func newTranscriptFixture(t *testing.T) *transcriptFixture {
	f := newFarm(t)
	n := testutil.FileNar("known")
	known := &store.PathInfo{
		Path: storepath.Path("/nix/store/" + strings.Repeat("k", 32) + "-known"), NarHash: nixhash.SHA256Of(n),
		NarSize: uint64(len(n)), RegistrationTime: time.Unix(1650000000, 0),
		Deriver: storepath.Path("/nix/store/" + strings.Repeat("d", 32) + "-known.drv"), Sigs: []string{"k:c2ln"},
	}
	if err := f.st.AddToStore(context.Background(), known, bytes.NewReader(n)); err != nil {
		t.Fatal(err)
	}
	un, upload := textNar("uploaded in a transcript")
	upload.References = []storepath.Path{known.Path}
	upload.Path, _ = storepath.MakeFixedOutput("upload", true, upload.NarHash, upload.References, false)
	return &transcriptFixture{f: f, known: known, upload: upload, uploadNar: un}
}

func (fx *transcriptFixture) start(t *testing.T) (*exchange, func()) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan struct{})
	go func() {
		fx.f.srv.Serve(context.Background(), inR, outW, &daemonproto.Session{Account: "alice"})
		outW.Close()
		close(done)
	}()
	// Closing outR too ends a server blocked writing a reply the test
	// stopped reading after a mismatch.
	return &exchange{t: t, in: inW, out: outR}, func() { inW.Close(); outR.Close(); <-done }
}

func (fx *transcriptFixture) pathInfoReply(e *enc) *enc {
	k := fx.known
	return e.s(string(k.Deriver), k.NarHash.Hex()).list().u(1650000000, k.NarSize, 0).list("k:c2ln").s("")
}

func (fx *transcriptFixture) uploadArgs(e *enc) *enc {
	up := fx.upload
	return e.u(39).s(string(up.Path), "", up.NarHash.Hex()).list(string(fx.known.Path)).
		u(0, up.NarSize, 0).list().s(up.CA).u(0, 1)
}

// buildDerivationArgs is a BuildDerivation request for a normal build.
func buildDerivationArgs(drvPath storepath.Path, drv *derivation.Basic) *enc {
	e := (&enc{}).u(36).s(string(drvPath))
	w := wire.NewWriter(e)
	drv.Write(w)
	w.Flush()
	return e.u(0)
}

func logFrames(drvPath string, lines ...string) *enc { return activityLog(1, drvPath, lines...) }

// activityLog is the build log of the connection's nth activity.
func activityLog(n uint64, drvPath string, lines ...string) *enc {
	id := uint64(0x6e66<<32 | n)
	e := (&enc{}).u(stderrStart, id, 3, 105).s("building '"+drvPath+"'").
		u(4, 1).s(drvPath).u(1).s("").u(0, 1, 0, 1).u(0)
	for _, l := range lines {
		e.u(stderrRes, id, 101, 1, 1).s(l)
	}
	return e.u(stderrStop, id)
}

// TestTranscriptNix23 is a session as a Nix 2.3 client (protocol 1.21)
// has it, byte for byte, as Nix 2.3's remote-store.cc and daemon.cc lay it
// out: no version string or trust in the handshake, NARs pulled with
// STDERR_READ, and a BuildResult of only status and message.
func TestTranscriptNix23(t *testing.T) {
	fx := newTranscriptFixture(t)
	x, stop := fx.start(t)
	defer stop()

	x.send((&enc{}).u(daemonproto.Magic1))
	x.expect("handshake", (&enc{}).u(daemonproto.Magic2, daemonproto.Version))
	x.send((&enc{}).u(0x115, 0, 0)) // version, CPU affinity, reserveSpace
	x.expect("handshake end", (&enc{}).u(stderrLast))

	x.send((&enc{}).u(26).s(string(fx.known.Path)))
	x.expect("QueryPathInfo", fx.pathInfoReply((&enc{}).u(stderrLast, 1)))

	x.send(fx.uploadArgs(&enc{}))
	left := fx.upload.NarSize
	for left > 0 {
		if msg := x.u64(); msg != stderrRead {
			t.Fatalf("AddToStoreNar: frame 0x%x with %d NAR bytes still to send", msg, left)
		}
		n := x.u64()
		if n == 0 || n > left {
			t.Fatalf("AddToStoreNar: asked for %d bytes with %d left", n, left)
		}
		off := fx.upload.NarSize - left
		x.send((&enc{}).s(string(fx.uploadNar[off : off+n])))
		left -= n
	}
	x.expect("AddToStoreNar", (&enc{}).u(stderrLast))

	drvPath, drv, _ := basic(t, "nix23")
	x.send(buildDerivationArgs(drvPath, drv))
	x.expect("BuildDerivation", logFrames(string(drvPath), "building nix23", "second line").u(stderrLast, 0).s(""))
}

// TestTranscriptNix224 is the same session as Nix 2.24 (protocol 1.38)
// has it: features exchanged, version string and trust in the handshake,
// framed NARs, and a BuildResult with times, CPU times and realisations.
func TestTranscriptNix224(t *testing.T) {
	fx := newTranscriptFixture(t)
	x, stop := fx.start(t)
	defer stop()

	x.send((&enc{}).u(daemonproto.Magic1, 0x126)) // 2.24 sends both at once
	x.expect("handshake", (&enc{}).u(daemonproto.Magic2, daemonproto.Version))
	x.send((&enc{}).list()) // features
	x.expect("features", (&enc{}).list())
	x.send((&enc{}).u(0, 0))
	x.expect("handshake end", (&enc{}).s("nixfarm-test").u(1, stderrLast))

	x.send((&enc{}).u(26).s(string(fx.known.Path)))
	x.expect("QueryPathInfo", fx.pathInfoReply((&enc{}).u(stderrLast, 1)))

	framed := fx.uploadArgs(&enc{})
	half := len(fx.uploadNar) / 2
	framed.u(uint64(half)).Write(fx.uploadNar[:half])
	framed.u(uint64(len(fx.uploadNar) - half)).Write(fx.uploadNar[half:])
	framed.u(0)
	x.send(framed)
	x.expect("AddToStoreNar", (&enc{}).u(stderrLast))

	drvPath, drv, _ := basic(t, "nix224")
	x.send(buildDerivationArgs(drvPath, drv))
	out := string(drv.OutputPaths()["out"])
	hash, _ := derivationHash(drv)
	id := "sha256:" + hash + "!out"
	real := `{"dependentRealisations":{},"id":"` + id + `","outPath":"` + strings.TrimPrefix(out, "/nix/store/") + `","signatures":[]}`
	x.expect("BuildDerivation", logFrames(string(drvPath), "building nix224", "second line").
		u(stderrLast, 0).s("").u(1, 0, 1700000000, 1700000005).u(0, 0).u(1).s(id, real))
}

// framed appends data as a framed stream (u64 length, bytes, no padding;
// an empty frame ends it) in frames of size bytes, cut without regard to
// the fields inside, as a buffered writer cuts them.
func framed(e *enc, data []byte, size int) *enc {
	for len(data) > 0 {
		n := min(size, len(data))
		e.u(uint64(n)).Write(data[:n])
		data = data[n:]
	}
	return e.u(0)
}

// realisation is the id and JSON of the realisation a build of drv's out
// output reports.
func realisation(t *testing.T, drv *derivation.Derivation) (id, json string) {
	t.Helper()
	h, err := derivation.HashModulo(drv, nil)
	if err != nil {
		t.Fatal(err)
	}
	id = "sha256:" + h.Hex() + "!out"
	out := strings.TrimPrefix(drv.Outputs["out"].Path, "/nix/store/")
	return id, `{"dependentRealisations":{},"id":"` + id + `","outPath":"` + out + `","signatures":[]}`
}

// TestTranscriptLix is a session as a Lix client has it over ssh-ng://
// (a build hook, `nix copy --to`, `nix build --store`). Lix froze the
// worker protocol at 1.35 and every serialiser lays fields out as 1.35
// does, whatever the daemon's version. From Lix's sources (lix-project/lix
// 049cc4e1, 2026-08):
//
//   - lix/libstore/worker-protocol.hh: PROTOCOL_VERSION and
//     MIN_SUPPORTED_WORKER_PROTO_VERSION are both 1.35; STDERR_READ and
//     STDERR_WRITE are gone.
//   - lix/libstore/remote-store.cc, initConnection: the magic alone; then
//     a daemon below 1.35 is refused ("The remote Nix daemon version is too
//     old"); then 1.35, CPU affinity 0 and reserveSpace 0; the daemon's Nix
//     version and trust are read unconditionally. processStderr knows
//     NEXT, ERROR, START_ACTIVITY, STOP_ACTIVITY, RESULT and LAST only.
//   - lix/libstore/ssh-store.cc: setOptions is a no-op, so no SetOptions.
//   - lix/libstore/remote-store-connection.hh: an argument that is a
//     callback is sent as a framed stream (withFramedStream); the reply
//     is read with the daemon's version, not the lower of the two.
//   - lix/libutil/async-io.cc, AsyncFramedOutputStream: u64 length and
//     bytes, no padding, ended by an empty frame.
//   - lix/libstore/store-api.cc, copyPaths: QueryValidPaths, then
//     AddMultipleToStore (even of no paths); the .drv closure goes the same
//     way. AddToStoreNar is left to copyStorePath (substitution).
//   - lix/libstore/worker-protocol.cc: ValidPathInfo, the optional path
//     info of QueryPathInfo, the BuildResult with times but no CPU times,
//     and KeyedBuildResult as a derived path then a BuildResult.
//   - lix/libstore/derivations.cc, serializeDerivation: the
//     BasicDerivation, which only has input-addressed and fixed outputs.
//   - lix/libstore/derived-path.cc: derived paths in the "!" form.
//   - lix/libstore/realisation.cc: realisations as JSON with outPath
//     a base name.
//   - lix/legacy/build-remote.cc: the build hook sends BuildDerivation when
//     trusted, and BuildPathsWithResults of drv!* otherwise.
//   - lix/libmain/progress-bar.cc: a build activity whose fields 2 and 3
//     are not 1 and 1 is an error ("repeating builds").
func TestTranscriptLix(t *testing.T) {
	fx := newTranscriptFixture(t)
	var logs bytes.Buffer
	fx.f.srv.Log = slog.New(slog.NewTextHandler(&logs, nil))
	x, stop := fx.start(t)
	defer stop()

	x.send((&enc{}).u(daemonproto.Magic1))
	x.expect("handshake", (&enc{}).u(daemonproto.Magic2, daemonproto.Version))
	x.send((&enc{}).u(0x123, 0, 0)) // version, CPU affinity, reserveSpace
	x.expect("handshake end", (&enc{}).s("nixfarm-test").u(1, stderrLast))

	x.send((&enc{}).u(26).s(string(fx.known.Path)))
	x.expect("QueryPathInfo", fx.pathInfoReply((&enc{}).u(stderrLast, 1)))
	missing := "/nix/store/" + strings.Repeat("m", 32) + "-missing"
	x.send((&enc{}).u(26).s(missing))
	x.expect("QueryPathInfo of a missing path", (&enc{}).u(stderrLast, 0))

	// copyPaths: which paths the farm lacks, without substituting.
	up := fx.upload
	x.send((&enc{}).u(31).list(string(fx.known.Path), string(up.Path)).u(0))
	x.expect("QueryValidPaths", (&enc{}).u(stderrLast).list(string(fx.known.Path)))

	// AddMultipleToStore: repair, dontCheckSigs, then one framed stream
	// of the count and each ValidPathInfo followed by its NAR.
	stream := (&enc{}).u(1).s(string(up.Path), "", up.NarHash.Hex()).list(string(fx.known.Path)).
		u(1700000000, up.NarSize, 1).list().s(up.CA)
	stream.Write(fx.uploadNar)
	x.send(framed((&enc{}).u(44, 0, 1), stream.Bytes(), 100))
	x.expect("AddMultipleToStore", (&enc{}).u(stderrLast))
	// Nothing missing: still sent, with a count of 0.
	x.send(framed((&enc{}).u(44, 0, 1), (&enc{}).u(0).Bytes(), 100))
	x.expect("AddMultipleToStore of no paths", (&enc{}).u(stderrLast))

	// NarFromPath: the NAR itself right after STDERR_LAST.
	x.send((&enc{}).u(38).s(string(up.Path)))
	nar := (&enc{}).u(stderrLast)
	nar.Write(fx.uploadNar)
	x.expect("NarFromPath", nar)

	// The build hook, trusted: BuildDerivation in normal mode.
	drvPath, drv, full := basic(t, "lix")
	x.send(buildDerivationArgs(drvPath, drv))
	id, real := realisation(t, full)
	x.expect("BuildDerivation", logFrames(string(drvPath), "building lix", "second line").
		u(stderrLast, 0).s("").u(1, 0, 1700000000, 1700000005).u(1).s(id, real))

	// Remote-store mode: the .drv is copied, then built by derived path.
	drvPath2, _, full2 := basic(t, "lix-remote")
	text := full2.Bytes()
	drvNar := testutil.FileNar(string(text))
	ca := "text:" + nixhash.SHA256Of(text).String()
	if p, _ := storepath.MakeText("lix-remote.drv", text, nil); p != drvPath2 {
		t.Fatalf("text path %s, want %s", p, drvPath2)
	}
	stream = (&enc{}).u(1).s(string(drvPath2), "", nixhash.SHA256Of(drvNar).Hex()).list().
		u(1700000000, uint64(len(drvNar)), 1).list().s(ca)
	stream.Write(drvNar)
	x.send(framed((&enc{}).u(44, 0, 1), stream.Bytes(), 4096))
	x.expect("AddMultipleToStore of the .drv", (&enc{}).u(stderrLast))
	target := string(drvPath2) + "!*"
	x.send((&enc{}).u(46).list(target).u(0))
	id, real = realisation(t, full2)
	x.expect("BuildPathsWithResults", activityLog(2, string(drvPath2), "building lix-remote", "second line").
		u(stderrLast, 1).s(target).u(0).s("").u(1, 0, 1700000000, 1700000005).u(1).s(id, real))

	stop()
	if !strings.Contains(logs.String(), `msg="client connected" account=alice version=1.35 protocol=daemon client_version=1.35 client_features=[] features=[]`) {
		t.Errorf("log:\n%s", logs.String())
	}
}

// TestFeatureExchange is the handshake of a 1.38 client offering features
// nixfarm does not know: it is offered none back, the connection works,
// and the log names what the client offered.
func TestFeatureExchange(t *testing.T) {
	fx := newTranscriptFixture(t)
	var logs bytes.Buffer
	fx.f.srv.Log = slog.New(slog.NewTextHandler(&logs, nil))
	x, stop := fx.start(t)
	defer stop()

	x.send((&enc{}).u(daemonproto.Magic1, 0x126))
	x.expect("handshake", (&enc{}).u(daemonproto.Magic2, daemonproto.Version))
	x.send((&enc{}).list("some-future-feature", "another"))
	x.expect("features", (&enc{}).list())
	x.send((&enc{}).u(0, 0))
	x.expect("handshake end", (&enc{}).s("nixfarm-test").u(1, stderrLast))

	x.send((&enc{}).u(26).s(string(fx.known.Path)))
	x.expect("QueryPathInfo", fx.pathInfoReply((&enc{}).u(stderrLast, 1)))

	stop()
	var line string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `msg="client connected"`) {
			line = l
		}
	}
	for _, want := range []string{"client_version=1.38", `client_features="[some-future-feature another]"`, "features=[]"} {
		if !strings.Contains(line, want) {
			t.Errorf("client connected line lacks %s:\n%s", want, logs.String())
		}
	}
}
