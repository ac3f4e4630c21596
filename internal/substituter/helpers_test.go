package substituter

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/narinfo"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// upstreamCache is a binary cache made by a test: a directory served over
// HTTP, counting the requests.
type upstreamCache struct {
	t        *testing.T
	dir      string
	key      signature.SecretKey
	srv      *httptest.Server
	requests atomic.Int64 // all requests
	narGets  atomic.Int64 // requests under nar/
	// holdNar, if set, is waited on before serving a NAR.
	holdNar atomic.Pointer[chan struct{}]
	// narinfoStatus, if set, is the status of every narinfo request.
	narinfoStatus atomic.Int32
}

func newTestCache(t *testing.T, name string) *upstreamCache {
	t.Helper()
	sk, _, err := signature.Generate(name + "-1")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstreamCache{t: t, dir: t.TempDir(), key: sk}
	u.write("nix-cache-info", []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"))
	files := http.FileServer(http.Dir(u.dir))
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		if strings.HasPrefix(r.URL.Path, "/nar/") {
			u.narGets.Add(1)
			if hold := u.holdNar.Load(); hold != nil {
				<-*hold
			}
		}
		if code := u.narinfoStatus.Load(); code != 0 && strings.HasSuffix(r.URL.Path, ".narinfo") {
			http.Error(w, http.StatusText(int(code)), int(code))
			return
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstreamCache) url() string     { return u.srv.URL }
func (u *upstreamCache) fileURL() string { return "file://" + u.dir }

func (u *upstreamCache) pub() signature.PublicKey { return u.key.Public() }

func (u *upstreamCache) write(rel string, data []byte) {
	u.t.Helper()
	p := filepath.Join(u.dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		u.t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		u.t.Fatal(err)
	}
}

// spec describes a path to put in an upstreamCache.
type spec struct {
	name        string
	contents    string // the file's contents; the NAR is of one file
	refs        []storepath.Path
	compression string // default "xz"
	unsigned    bool
	signWith    *signature.SecretKey           // default the cache's key
	mutate      func(ni *narinfo.NarInfo)      // before signing
	file        func(compressed []byte) []byte // changes the file served
	narBytes    func(narBytes []byte) []byte   // changes the NAR before compression
	path        storepath.Path                 // default: made from name and contents
}

// pathFor returns an input-addressed path for a name and contents.
func pathFor(t testing.TB, name, contents string) storepath.Path {
	p, err := storepath.MakeOutput("out", nixhash.SHA256Of([]byte(name+"\x00"+contents)), name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// add puts a path in the cache and returns it and its narinfo.
func (u *upstreamCache) add(sp spec) (storepath.Path, *narinfo.NarInfo) {
	u.t.Helper()
	if sp.compression == "" {
		sp.compression = "xz"
	}
	p := sp.path
	if p == "" {
		p = pathFor(u.t, sp.name, sp.contents)
	}
	narData := testutil.FileNar(sp.contents)
	ni := &narinfo.NarInfo{
		StorePath:   p,
		Compression: sp.compression,
		NarHash:     nixhash.SHA256Of(narData),
		NarSize:     uint64(len(narData)),
		References:  sp.refs,
	}
	if sp.narBytes != nil {
		narData = sp.narBytes(narData)
	}
	file := compress(u.t, sp.compression, narData)
	if sp.file != nil {
		file = sp.file(file)
	}
	ni.FileHash = nixhash.SHA256Of(file)
	ni.FileSize = uint64(len(file))
	ni.URL = "nar/" + ni.FileHash.Nix32() + ".nar" + ext(sp.compression)
	if sp.mutate != nil {
		sp.mutate(ni)
	}
	if !sp.unsigned {
		key := u.key
		if sp.signWith != nil {
			key = *sp.signWith
		}
		ni.Sigs = []string{key.Sign(ni.Fingerprint())}
	}
	if !strings.Contains(ni.URL, "..") && !strings.Contains(ni.URL, ":") {
		u.write(ni.URL, file)
	}
	u.write(p.HashPart()+".narinfo", []byte(ni.String()))
	return p, ni
}

func ext(compression string) string {
	switch compression {
	case "none":
		return ""
	case "bzip2":
		return ".bz2"
	}
	return "." + compression
}

func compress(t testing.TB, compression string, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	switch compression {
	case "none":
		return data
	case "xz":
		w, err := xz.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	case "zstd":
		w, err := zstd.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	case "bzip2":
		testutil.RequireTools(t, "bzip2")
		cmd := exec.Command("bzip2", "-c")
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		return out
	default:
		return data // an unknown compression: served as it is
	}
	return b.Bytes()
}

// bigNar returns the NAR of one file of n zero bytes.
func bigNar(n int) []byte {
	var b bytes.Buffer
	w := nar.NewWriter(&b)
	w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(n)})
	w.Write(make([]byte, n))
	w.Close()
	return b.Bytes()
}

// clock is a fake clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// progress records what a Substitute call reports.
type progress struct {
	mu       sync.Mutex
	events   []string // "start P FROM", "done P err"
	warnings []string
}

func (p *progress) Copying(path storepath.Path, from string) func(error) {
	p.mu.Lock()
	p.events = append(p.events, fmt.Sprintf("start %s %s", path, from))
	p.mu.Unlock()
	var once atomic.Bool
	return func(err error) {
		if once.Swap(true) {
			panic("done called twice")
		}
		p.mu.Lock()
		p.events = append(p.events, fmt.Sprintf("done %s %v", path, err))
		p.mu.Unlock()
	}
}

func (p *progress) Warning(msg string) {
	p.mu.Lock()
	p.warnings = append(p.warnings, msg)
	p.mu.Unlock()
}

func (p *progress) snapshot() (events, warnings []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.events...), append([]string(nil), p.warnings...)
}

// newSub makes a Substituter over a fresh test store.
func newSub(t *testing.T, cfg Config) (*Substituter, *testutil.TestStore, *testutil.LogBuffer) {
	t.Helper()
	st, _, _ := testutil.Store(t)
	var logs testutil.LogBuffer
	if cfg.Store == nil {
		cfg.Store = st
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(&logs, nil))
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, st, &logs
}

func mustValid(t *testing.T, st *testutil.TestStore, want bool, paths ...storepath.Path) {
	t.Helper()
	valid, err := st.ValidPaths(context.Background(), paths)
	if err != nil {
		t.Fatal(err)
	}
	if want && len(valid) != len(paths) {
		t.Fatalf("valid in the store: %v, want all of %v", valid, paths)
	}
	if !want && len(valid) != 0 {
		t.Fatalf("valid in the store: %v, want none", valid)
	}
}

// failingStore is a store.Store that must not be used.
type failingStore struct{ store.Store }
