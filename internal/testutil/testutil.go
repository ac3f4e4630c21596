// Package testutil holds helpers shared by nixfarm's tests: tool checks
// that skip loudly (and fail under CI) and a farm store in a temporary
// directory.
package testutil

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"database/sql"

	"github.com/nixfarm/nixfarm/internal/blob"
	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/db"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// RequireTools skips the test with a loud message when a tool is missing,
// or fails it when CI=true: CI must run every test.
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing, and CI must run this test (.ci/run installs it)", tool)
			}
			t.Skipf("*** SKIPPING: %s is missing (apt-get install nix-bin busybox-static openssh-client)", tool)
		}
	}
}

// RequireFile is RequireTools for a file, such as /bin/busybox.
func RequireFile(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing, and CI must run this test (.ci/run installs it)", path)
		}
		t.Skipf("*** SKIPPING: %s is missing (apt-get install busybox-static)", path)
	}
}

// Account is the account a test Store's view belongs to.
const Account = "alice"

// TestStore is a temporary farm store: the store itself (Recover, Flush,
// For) and Account's view of it (every Store operation).
type TestStore struct {
	*store.Local
	store.Store
}

// Store returns a farm store and its database in a temporary directory.
func Store(t testing.TB) (*TestStore, *sql.DB, string) {
	t.Helper()
	dir := t.TempDir()
	d, err := db.Open(context.Background(), filepath.Join(dir, "nixfarm.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	blobs, err := blob.NewDir(filepath.Join(dir, "nar"))
	if err != nil {
		t.Fatal(err)
	}
	blobs.NoSync = true
	st := store.NewLocal(d, blobs)
	t.Cleanup(func() { st.Flush(context.Background()) }) // before the database closes
	return &TestStore{Local: st, Store: st.For(Account)}, d, dir
}

// FileNar returns the NAR of a single regular file holding contents.
func FileNar(contents string) []byte {
	var b bytes.Buffer
	w := nar.NewWriter(&b)
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(contents))}); err != nil {
		panic(err)
	}
	io.WriteString(w, contents)
	if err := w.Close(); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// ReadGz reads a gzipped fixture.
func ReadGz(t testing.TB, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// AddBusybox puts a directory holding the machine's /bin/busybox as
// bin/busybox and bin/sh into st as the source path name, as
// `nix-store --add DIR` would, and returns its path.
func AddBusybox(t testing.TB, st store.Store, name string) storepath.Path {
	t.Helper()
	RequireFile(t, "/bin/busybox")
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("busybox", filepath.Join(dir, "bin", "sh")); err != nil {
		t.Fatal(err)
	}
	var n bytes.Buffer
	if err := nar.DumpPath(&n, dir); err != nil {
		t.Fatal(err)
	}
	h := nixhash.SHA256Of(n.Bytes())
	p, err := storepath.MakeFixedOutput(name, true, h, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	info := &store.PathInfo{Path: p, NarHash: h, NarSize: uint64(n.Len()), CA: "fixed:r:sha256:" + h.Nix32()}
	if err := st.AddToStore(context.Background(), info, &n); err != nil {
		t.Fatal(err)
	}
	return p
}

// GoldenSessions returns the directories of a client's recorded golden
// sessions in dir (testdata/sessions/nix-X.Y, made by testdata/gen.sh), in
// the order they were recorded, after putting into st what the recording
// server held before the first of them: paths.txt names it with
// seeded=bb, busybox as the source path bb, which is rebuilt here from
// the machine's /bin/busybox and must come out at the recorded path.
func GoldenSessions(t testing.TB, st store.Store, dir string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "paths.txt"))
	if err != nil {
		t.Fatal(err)
	}
	paths := map[string]string{}
	for _, kv := range strings.Fields(string(data)) {
		k, v, _ := strings.Cut(kv, "=")
		paths[k] = v
	}
	if paths["seeded"] != "" {
		if paths["seeded"] != "bb" {
			t.Fatalf("%s: paths.txt: seeded=%s: only bb (busybox) can be seeded", dir, paths["seeded"])
		}
		if bb := AddBusybox(t, st, "bb"); string(bb) != paths["bb"] {
			t.Fatalf("%s: /bin/busybox makes %s, but the sessions were recorded with %s: a different busybox-static; record them again with gen.sh", dir, bb, paths["bb"])
		}
	}
	sessions, err := filepath.Glob(filepath.Join(dir, "[0-9]*"))
	if err != nil || len(sessions) == 0 {
		t.Fatalf("%s: no sessions: %v", dir, err)
	}
	sort.Strings(sessions)
	return sessions
}

// UnsetBuildStats lets nixfarm's reply report builds that stock Nix
// reported without statistics, in a golden test. Nix 2.34 answers
// BuildDerivation (both protocols) and BuildPathsWithResults with
// timesBuilt, startTime and stopTime all 0: the goal that answers,
// DerivationTrampolineGoal (derivation-trampoline-goal.cc), makes a new
// result of the status and outputs of the goals that built, where 2.31 to
// 2.33 copied the first one's. Nix 2.8 and 2.26 send 1 and the build's
// times, and so does nixfarm, to every client.
//
// gotAt and wantAt are where each BuildResult's timesBuilt word is in got
// and want. Where stock sent the three words as 0, UnsetBuildStats returns
// got with them copied from want; isNonDeterministic, between them, is
// still compared.
func UnsetBuildStats(got, want []byte, gotAt, wantAt []int) []byte {
	if len(gotAt) != len(wantAt) {
		return got
	}
	got = bytes.Clone(got)
	word := func(b []byte, off int) uint64 { return binary.LittleEndian.Uint64(b[off:]) }
	for i := range gotAt {
		g, w := gotAt[i], wantAt[i]
		if g+32 > len(got) || w+32 > len(want) {
			continue
		}
		if word(want, w) == 0 && word(want, w+16) == 0 && word(want, w+24) == 0 {
			copy(got[g:g+8], want[w:w+8])
			copy(got[g+16:g+32], want[w+16:w+32])
		}
	}
	return got
}

// Derivation completes an input-addressed derivation named name: it sets
// the paths of the outputs listed in d.Outputs (and their environment
// variables) as Nix computes them, and returns the .drv path. resolve
// loads input derivations; it may be nil when there are none.
func Derivation(t testing.TB, name string, d *derivation.Derivation, resolve derivation.Resolver) storepath.Path {
	t.Helper()
	dummy := storepath.Dir + "/" + strings.Repeat("0", 32) + "-placeholder"
	if d.Env == nil {
		d.Env = map[string]string{}
	}
	if d.InputDrvs == nil {
		d.InputDrvs = map[string][]string{}
	}
	if d.InputSrcs == nil {
		d.InputSrcs = []string{}
	}
	for o := range d.Outputs {
		d.Outputs[o] = derivation.Output{Path: dummy} // blanked when hashing
		d.Env[o] = ""
	}
	outs, err := derivation.OutputPaths(name, d, resolve)
	if err != nil {
		t.Fatal(err)
	}
	for o, p := range outs {
		d.Outputs[o] = derivation.Output{Path: string(p)}
		d.Env[o] = string(p)
	}
	drvPath, err := derivation.PathOf(name, d)
	if err != nil {
		t.Fatal(err)
	}
	return drvPath
}

// Scheduler returns a scheduler with one worker, b, that builds for
// x86_64-linux, four builds at a time.
func Scheduler(t testing.TB, b build.Builder) *scheduler.Scheduler {
	t.Helper()
	s := scheduler.New(scheduler.Config{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	t.Cleanup(s.Close)
	caps := worker.Capabilities{Systems: []string{"x86_64-linux"}, MaxJobs: 4, SpeedFactor: 1}
	if err := s.AddWorker(scheduler.Worker{Name: "test", Kind: "local", Caps: caps, Builder: b}); err != nil {
		t.Fatal(err)
	}
	return s
}

// Expect implements store.Expecter for Account's view.
func (s *TestStore) Expect(infos []*store.PathInfo) (done func()) {
	return s.Store.(store.Expecter).Expect(infos)
}

// LogBuffer is a bytes.Buffer safe for concurrent use, for a logger's or
// a build's output that the test reads while it is written.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// BrokenStore is a farm store whose QueryPathInfo fails with Err, the same
// for every account (it is its own store.Views).
type BrokenStore struct {
	store.Store
	Err error
}

// For implements store.Views.
func (s BrokenStore) For(string) store.Store { return s }

// QueryPathInfo implements store.Store.
func (s BrokenStore) QueryPathInfo(context.Context, storepath.Path) (*store.PathInfo, error) {
	return nil, s.Err
}
