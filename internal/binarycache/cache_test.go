package binarycache_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/binarycache"
	"github.com/nixfarm/nixfarm/internal/narinfo"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// fakeLogs holds build logs by account and derivation.
type fakeLogs map[string]string

func (l fakeLogs) Open(_ context.Context, account string, drv storepath.Path) (io.ReadCloser, error) {
	text, ok := l[account+" "+string(drv)]
	if !ok {
		return nil, fmt.Errorf("%w: no log of %s", store.ErrNotFound, drv)
	}
	return io.NopCloser(strings.NewReader(text)), nil
}

type fixture struct {
	st        *testutil.TestStore
	alice     store.Store
	bob       store.Store
	aliceTok  string
	bobTok    string
	cache     *binarycache.Cache
	url       string
	dir       string
	logs      fakeLogs
	logBuffer *testutil.LogBuffer
}

func newFixture(t testing.TB, configure func(*binarycache.Config)) *fixture {
	t.Helper()
	ctx := context.Background()
	st, d, dir := testutil.Store(t)
	svc := account.New(d, account.DefaultValues(), nil)
	f := &fixture{st: st, alice: st.Store, bob: st.For("bob"), dir: filepath.Join(dir, "cache"), logs: fakeLogs{},
		logBuffer: &testutil.LogBuffer{}}
	for _, name := range []string{"alice", "bob"} {
		if err := svc.Add(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if f.aliceTok, err = svc.IssueToken(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if f.bobTok, err = svc.IssueToken(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	cfg := binarycache.Config{
		View: st.For,
		Auth: binarycache.NewTokenAuth(svc, 0, nil),
		Logs: f.logs,
		Dir:  f.dir,
		Log:  slog.New(slog.NewTextHandler(f.logBuffer, nil)),
		// As the farm has it: rendered narinfos kept while the store
		// stays the same.
		Generation: st.Local.Generation,
	}
	if configure != nil {
		configure(&cfg)
	}
	if f.cache, err = binarycache.New(cfg); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.cache)
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

// add puts a single-file path holding contents into view.
func add(t testing.TB, view store.Store, name string, contents []byte) *store.PathInfo {
	t.Helper()
	n := testutil.FileNar(string(contents))
	h := nixhash.SHA256Of(n)
	p, err := storepath.MakeFixedOutput(name, true, h, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	info := &store.PathInfo{Path: p, NarHash: h, NarSize: uint64(len(n)), CA: "fixed:r:sha256:" + h.Nix32()}
	if err := view.AddToStore(context.Background(), info, bytes.NewReader(n)); err != nil {
		t.Fatal(err)
	}
	info, err = view.QueryPathInfo(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func random(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

type req struct {
	method, path string
	login, token string // basic if login != "", else bearer if token != ""
	header       map[string]string
}

func (f *fixture) do(t testing.TB, r req) (*http.Response, []byte) {
	t.Helper()
	if r.method == "" {
		r.method = http.MethodGet
	}
	hr, err := http.NewRequest(r.method, f.url+r.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case r.login != "":
		hr.SetBasicAuth(r.login, r.token)
	case r.token != "":
		hr.Header.Set("Authorization", "Bearer "+r.token)
	}
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// get fetches path as alice and wants 200.
func (f *fixture) get(t testing.TB, path string) []byte {
	t.Helper()
	resp, body := f.do(t, req{path: path, login: "alice", token: f.aliceTok})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", path, resp.Status, body)
	}
	return body
}

func narPath(info *store.PathInfo, ext string) string {
	return "/nar/" + info.Path.HashPart() + "-" + info.NarHash.Nix32() + ext
}

func decompress(t testing.TB, ext string, data []byte) []byte {
	t.Helper()
	var r io.Reader
	switch ext {
	case ".nar":
		return data
	case ".nar.zst":
		zr, err := zstd.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		r = zr
	case ".nar.xz":
		xr, err := xz.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		r = xr
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decompressing %s: %v", ext, err)
	}
	return out
}

func TestNarInfoAndNars(t *testing.T) {
	for _, tc := range []struct{ compression, ext string }{
		{"", ".nar.zst"}, {"zstd", ".nar.zst"}, {"xz", ".nar.xz"}, {"none", ".nar"},
	} {
		t.Run("compression="+tc.compression, func(t *testing.T) {
			f := newFixture(t, func(c *binarycache.Config) { c.Compression = tc.compression; c.Priority = 41 })
			if resp, body := f.do(t, req{path: "/nix-cache-info"}); resp.StatusCode != 200 ||
				string(body) != "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 41\n" {
				t.Fatalf("nix-cache-info: %s %q", resp.Status, body)
			}
			info := add(t, f.alice, "big", bytes.Repeat(random(1, 4096), 64))
			sig := "farm-1:" + strings.Repeat("A", 86) + "=="
			if err := f.alice.AddSignatures(context.Background(), info.Path, []string{sig}); err != nil {
				t.Fatal(err)
			}
			resp, body := f.do(t, req{path: "/" + info.Path.HashPart() + ".narinfo", login: "alice", token: f.aliceTok})
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != narinfo.ContentType {
				t.Fatalf("narinfo: %s %s: %s", resp.Status, resp.Header.Get("Content-Type"), body)
			}
			ni, err := narinfo.Parse(bytes.NewReader(body))
			if err != nil {
				t.Fatalf("%v\n%s", err, body)
			}
			want := map[string]string{".nar.zst": "zstd", ".nar.xz": "xz", ".nar": "none"}[tc.ext]
			if ni.StorePath != info.Path || ni.URL != narPath(info, tc.ext)[1:] || ni.Compression != want ||
				!ni.NarHash.Equal(info.NarHash) || ni.NarSize != info.NarSize || ni.CA != info.CA ||
				len(ni.Sigs) != 1 || ni.Sigs[0] != sig {
				t.Fatalf("narinfo:\n%s", body)
			}
			// The plain NAR and the format the narinfos name are served;
			// another compression is not made on request.
			for _, ext := range []string{".nar", ".nar.zst", ".nar.xz"} {
				resp, body := f.do(t, req{path: narPath(info, ext), token: f.aliceTok})
				if ext != ".nar" && ext != tc.ext {
					if resp.StatusCode != http.StatusNotFound {
						t.Errorf("%s, not offered: %s", ext, resp.Status)
					}
					continue
				}
				if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != binarycache.NarContentType {
					t.Fatalf("%s: %s %s", ext, resp.Status, body)
				}
				nar := decompress(t, ext, body)
				if h := nixhash.SHA256Of(nar); !h.Equal(info.NarHash) || uint64(len(nar)) != info.NarSize {
					t.Fatalf("%s: NAR of %d bytes, %s; want %d, %s", ext, len(nar), h, info.NarSize, info.NarHash)
				}
				if ext != ".nar" && len(body) >= len(nar) {
					t.Errorf("%s: %d bytes for a %d-byte NAR of repeated blocks", ext, len(body), len(nar))
				}
			}
			copies := 1
			if tc.ext == ".nar" {
				copies = 0
			}
			if made, _, n := binarycache.Stats(f.cache); made != copies || n != copies {
				t.Errorf("copies made %d, held %d; want %d", made, n, copies)
			}
		})
	}
}

func TestHeadAndRange(t *testing.T) {
	f := newFixture(t, nil)
	info := add(t, f.alice, "big", random(2, 300_000))
	full := map[string][]byte{}
	for _, ext := range []string{".nar", ".nar.zst"} {
		full[ext] = f.get(t, narPath(info, ext))
		resp, body := f.do(t, req{method: "HEAD", path: narPath(info, ext), token: f.aliceTok})
		if resp.StatusCode != 200 || len(body) != 0 || resp.ContentLength != int64(len(full[ext])) {
			t.Errorf("HEAD %s: %s, length %d, %d body bytes; want %d", ext, resp.Status, resp.ContentLength, len(body), len(full[ext]))
		}
		for _, rg := range [][2]int{{0, 0}, {10, 99}, {1000, len(full[ext]) - 1}} {
			resp, body := f.do(t, req{path: narPath(info, ext), token: f.aliceTok,
				header: map[string]string{"Range": fmt.Sprintf("bytes=%d-%d", rg[0], rg[1])}})
			if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, full[ext][rg[0]:rg[1]+1]) {
				t.Errorf("%s range %v: %s, %d bytes", ext, rg, resp.Status, len(body))
			}
		}
	}
	resp, body := f.do(t, req{method: "HEAD", path: "/" + info.Path.HashPart() + ".narinfo", token: f.aliceTok})
	if resp.StatusCode != 200 || len(body) != 0 || resp.ContentLength <= 0 {
		t.Errorf("HEAD narinfo: %s, length %d, %d body bytes", resp.Status, resp.ContentLength, len(body))
	}
	resp, _ = f.do(t, req{method: "POST", path: "/" + info.Path.HashPart() + ".narinfo", token: f.aliceTok})
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %s", resp.Status)
	}
}

func TestAuth(t *testing.T) {
	f := newFixture(t, nil)
	info := add(t, f.alice, "mine", []byte("alice's"))
	path := "/" + info.Path.HashPart() + ".narinfo"
	for _, tc := range []struct {
		name string
		r    req
		want int
	}{
		{"none", req{}, 401},
		{"wrong token", req{token: f.aliceTok + "x"}, 401},
		{"wrong basic password", req{login: "alice", token: "nope"}, 401},
		{"another account's login", req{login: "bob", token: f.aliceTok}, 401},
		{"bob's token as alice", req{login: "alice", token: f.bobTok}, 401},
		{"unknown scheme", req{header: map[string]string{"Authorization": "Digest x"}}, 401},
		{"empty bearer", req{header: map[string]string{"Authorization": "Bearer "}}, 401},
		{"basic", req{login: "alice", token: f.aliceTok}, 200},
		{"bearer", req{token: f.aliceTok}, 200},
		{"bob's own", req{login: "bob", token: f.bobTok}, 404},
	} {
		tc.r.path = path
		resp, body := f.do(t, tc.r)
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %s: %s", tc.name, resp.Status, body)
		}
		if tc.want == 401 && resp.Header.Get("WWW-Authenticate") != `Basic realm="nixfarm"` {
			t.Errorf("%s: WWW-Authenticate %q", tc.name, resp.Header.Get("WWW-Authenticate"))
		}
	}
	for _, p := range []string{"/", "/x.narinfo", "/nar/", "/nar/" + info.Path.HashPart() + ".nar", "/log/", "/nix-cache-info/x", "/../nix-cache-info"} {
		if resp, body := f.do(t, req{path: p, token: f.aliceTok}); resp.StatusCode != 404 {
			t.Errorf("%s: %s: %s", p, resp.Status, body)
		}
	}
}

// TestOtherAccount: a path in another account's view is answered exactly
// as one nobody holds.
func TestOtherAccount(t *testing.T) {
	f := newFixture(t, nil)
	bobs := add(t, f.bob, "bobs", []byte("bob's secret"))
	nobody := strings.Repeat("0", 32)
	_, want := f.do(t, req{path: "/" + nobody + ".narinfo", token: f.aliceTok})
	paths := []string{"/" + bobs.Path.HashPart() + ".narinfo"}
	for _, ext := range []string{".nar", ".nar.zst"} {
		paths = append(paths, narPath(bobs, ext))
	}
	for _, p := range paths {
		resp, body := f.do(t, req{path: p, token: f.aliceTok})
		if resp.StatusCode != 404 || !bytes.Equal(body, want) {
			t.Errorf("alice gets %s: %s: %q (nobody's: %q)", p, resp.Status, body, want)
		}
		if resp, body := f.do(t, req{path: p, token: f.bobTok}); resp.StatusCode != 200 {
			t.Errorf("bob gets %s: %s: %s", p, resp.Status, body)
		}
	}
	// Alice's own path under the wrong NAR hash.
	mine := add(t, f.alice, "mine", []byte("alice's"))
	for _, ext := range []string{".nar", ".nar.zst"} {
		p := "/nar/" + mine.Path.HashPart() + "-" + bobs.NarHash.Nix32() + ext
		if resp, _ := f.do(t, req{path: p, token: f.aliceTok}); resp.StatusCode != 404 {
			t.Errorf("%s with another NAR hash: %s", ext, resp.Status)
		}
	}
}

func TestPublic(t *testing.T) {
	h := newPublicFixture(t)
	pub := add(t, h.bob, "public", []byte("for everyone"))
	priv := add(t, h.alice, "private", []byte("alice's"))
	if resp, body := h.do(t, req{path: "/" + pub.Path.HashPart() + ".narinfo"}); resp.StatusCode != 200 {
		t.Errorf("anonymous, public path: %s %s", resp.Status, body)
	}
	if resp, body := h.do(t, req{path: narPath(pub, ".nar.zst")}); resp.StatusCode != 200 || len(body) == 0 {
		t.Errorf("anonymous, public NAR: %s", resp.Status)
	}
	if resp, _ := h.do(t, req{path: "/" + priv.Path.HashPart() + ".narinfo"}); resp.StatusCode != 404 {
		t.Errorf("anonymous, alice's path: %s", resp.Status)
	}
	if resp, _ := h.do(t, req{path: "/" + priv.Path.HashPart() + ".narinfo", token: "wrong"}); resp.StatusCode != 401 {
		t.Errorf("wrong token with a public cache: %s", resp.Status)
	}
	if resp, _ := h.do(t, req{path: "/" + priv.Path.HashPart() + ".narinfo", token: h.aliceTok}); resp.StatusCode != 200 {
		t.Errorf("alice, her path: %s", resp.Status)
	}
	drv := storepath.Path(storepath.Dir + "/" + strings.Repeat("1", 32) + "-x.drv")
	h.logs["bob "+string(drv)] = "a log"
	if resp, _ := h.do(t, req{path: "/log/" + drv.Base()}); resp.StatusCode != 404 {
		t.Errorf("anonymous log: %s", resp.Status)
	}
}

// newPublicFixture is a fixture whose public view is bob's.
func newPublicFixture(t *testing.T) *fixture {
	return newFixture(t, func(c *binarycache.Config) { c.Public = c.View("bob") })
}

func TestLog(t *testing.T) {
	f := newFixture(t, nil)
	drv := storepath.Path(storepath.Dir + "/" + strings.Repeat("1", 32) + "-hello.drv")
	f.logs["alice "+string(drv)] = "building hello\ndone\n"
	resp, body := f.do(t, req{path: "/log/" + drv.Base(), token: f.aliceTok})
	if resp.StatusCode != 200 || string(body) != "building hello\ndone\n" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") ||
		resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Cache-Control") != "private, no-store" {
		t.Errorf("log: %s %q %v", resp.Status, body, resp.Header)
	}
	if resp, _ := f.do(t, req{path: "/log/" + drv.Base(), token: f.bobTok}); resp.StatusCode != 404 {
		t.Errorf("bob reads alice's log: %s", resp.Status)
	}
	if resp, _ := f.do(t, req{path: "/log/" + drv.Base()}); resp.StatusCode != 401 {
		t.Errorf("anonymous log: %s", resp.Status)
	}
	if resp, _ := f.do(t, req{path: "/log/" + strings.Repeat("1", 32) + "-hello", token: f.aliceTok}); resp.StatusCode != 404 {
		t.Errorf("log of a non-derivation: %s", resp.Status)
	}
	n := newFixture(t, func(c *binarycache.Config) { c.Logs = nil })
	if resp, _ := n.do(t, req{path: "/log/" + drv.Base(), token: n.aliceTok}); resp.StatusCode != 404 {
		t.Errorf("log without Logs: %s", resp.Status)
	}
}

func TestEviction(t *testing.T) {
	const size = 64 << 10 // random: zstd cannot shrink it
	f := newFixture(t, func(c *binarycache.Config) { c.MaxDirBytes = 2*size + size/2 })
	a := add(t, f.alice, "a", random(10, size))
	b := add(t, f.alice, "b", random(11, size))
	c := add(t, f.alice, "c", random(12, size))
	f.get(t, narPath(a, ".nar.zst"))
	f.get(t, narPath(b, ".nar.zst"))
	f.get(t, narPath(a, ".nar.zst")) // a is now the most recently served
	f.get(t, narPath(c, ".nar.zst")) // over the bound: b goes
	exists := func(info *store.PathInfo) bool {
		_, err := os.Stat(filepath.Join(f.dir, info.NarHash.Nix32()+".nar.zst"))
		return err == nil
	}
	if !exists(a) || exists(b) || !exists(c) {
		t.Fatalf("after eviction: a %v, b %v, c %v; want a and c", exists(a), exists(b), exists(c))
	}
	made, total, n := binarycache.Stats(f.cache)
	if made != 3 || n != 2 || total > 2*size+size/2 {
		t.Fatalf("made %d, holding %d copies, %d bytes", made, n, total)
	}
	body := f.get(t, narPath(b, ".nar.zst"))
	if nar := decompress(t, ".nar.zst", body); !nixhash.SHA256Of(nar).Equal(b.NarHash) {
		t.Fatal("b made again: wrong NAR")
	}
	if made, _, _ := binarycache.Stats(f.cache); made != 4 {
		t.Fatalf("b not made again: made %d", made)
	}
	// A new cache over the same directory takes stock of it, removes what
	// was left half written, and applies its own bound.
	if err := os.WriteFile(filepath.Join(f.dir, "tmp-123"), []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "README"), []byte("not ours"), 0o644); err != nil {
		t.Fatal(err)
	}
	again, err := binarycache.New(binarycache.Config{View: f.st.For, Auth: binarycache.NewTokenAuth(nil, 0, nil), Dir: f.dir, MaxDirBytes: size + size/2})
	if err != nil {
		t.Fatal(err)
	}
	if _, total, n := binarycache.Stats(again); n != 1 || total > size+size/2 {
		t.Errorf("restarted: %d copies, %d bytes", n, total)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "tmp-123")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("half-written copy kept: %v", err)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "README")); err != nil {
		t.Errorf("a file not ours removed: %v", err)
	}
}

func TestConcurrentFirstRequests(t *testing.T) {
	f := newFixture(t, nil)
	info := add(t, f.alice, "big", random(3, 1<<20))
	var calls atomic.Int32
	release := make(chan struct{})
	binarycache.WrapCompressor(f.cache, func(_ io.Writer, next func() error) error {
		calls.Add(1)
		<-release
		return next()
	})
	const n = 8
	bodies := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bodies[i] = f.get(t, narPath(info, ".nar.zst"))
		}()
	}
	// Let the requests pile up on the copy being made.
	time.Sleep(200 * time.Millisecond)
	close(release)
	wg.Wait()
	for i := range n {
		if !bytes.Equal(bodies[i], bodies[0]) || len(bodies[i]) == 0 {
			t.Fatalf("response %d differs", i)
		}
	}
	if nar := decompress(t, ".nar.zst", bodies[0]); !nixhash.SHA256Of(nar).Equal(info.NarHash) {
		t.Fatal("wrong NAR")
	}
	if c := calls.Load(); c != 1 {
		t.Errorf("compressed %d times", c)
	}
	if made, _, _ := binarycache.Stats(f.cache); made != 1 {
		t.Errorf("made %d copies", made)
	}
}

// TestFailedCopy: a copy that fails half way is never served nor kept,
// the client learns nothing of the farm's files, and the next request
// makes it again.
func TestFailedCopy(t *testing.T) {
	f := newFixture(t, nil)
	info := add(t, f.alice, "big", random(4, 100_000))
	var fail atomic.Bool
	fail.Store(true)
	binarycache.WrapCompressor(f.cache, func(dst io.Writer, next func() error) error {
		if fail.Load() {
			dst.Write([]byte("half a copy"))
			return fmt.Errorf("writing /var/lib/nixfarm/secret: %w", os.ErrPermission)
		}
		return next()
	})
	resp, body := f.do(t, req{path: narPath(info, ".nar.zst"), token: f.aliceTok})
	if resp.StatusCode != 500 || !strings.Contains(string(body), "internal error (id ") || strings.Contains(string(body), "/var/lib") {
		t.Fatalf("failed copy: %s %q", resp.Status, body)
	}
	if !strings.Contains(f.logBuffer.String(), "/var/lib/nixfarm/secret") {
		t.Errorf("the log lacks the error: %s", f.logBuffer.String())
	}
	if des, _ := os.ReadDir(f.dir); len(des) != 0 {
		t.Fatalf("left in the directory: %v", des)
	}
	fail.Store(false)
	body = f.get(t, narPath(info, ".nar.zst"))
	if nar := decompress(t, ".nar.zst", body); !nixhash.SHA256Of(nar).Equal(info.NarHash) {
		t.Fatal("wrong NAR")
	}
}

// TestTokenCache: a token's verdict is reused within the TTL, then looked
// up again (so a revoked token stops working).
func TestTokenCache(t *testing.T) {
	lookups := &countingLookup{tokens: map[string]string{"good": "alice"}}
	now := time.Unix(1000, 0)
	auth := binarycache.NewTokenAuth(lookups, 10*time.Second, func() time.Time { return now })
	r := httptest.NewRequest("GET", "/x.narinfo", nil)
	r.SetBasicAuth("alice", "good")
	for range 3 {
		if a, err := auth.Account(context.Background(), r); err != nil || a != "alice" {
			t.Fatalf("good: %q %v", a, err)
		}
	}
	bad := httptest.NewRequest("GET", "/x.narinfo", nil)
	bad.Header.Set("Authorization", "Bearer bad")
	for range 3 {
		if _, err := auth.Account(context.Background(), bad); !errors.Is(err, binarycache.ErrBadCredentials) {
			t.Fatalf("bad: %v", err)
		}
	}
	if n := lookups.n.Load(); n != 2 {
		t.Fatalf("%d lookups, want 2", n)
	}
	delete(lookups.tokens, "good")
	now = now.Add(11 * time.Second)
	if _, err := auth.Account(context.Background(), r); !errors.Is(err, binarycache.ErrBadCredentials) {
		t.Fatalf("revoked: %v", err)
	}
	lookups.fail = true
	if _, err := auth.Account(context.Background(), bad); err == nil || errors.Is(err, binarycache.ErrBadCredentials) {
		t.Fatalf("lookup failure after the TTL: %v", err)
	}
	if _, err := auth.Account(context.Background(), httptest.NewRequest("GET", "/", nil)); !errors.Is(err, binarycache.ErrNoCredentials) {
		t.Fatalf("no credentials: %v", err)
	}
}

type countingLookup struct {
	tokens map[string]string
	fail   bool
	n      atomic.Int32
}

func (l *countingLookup) TokenAccount(_ context.Context, token string) (string, error) {
	l.n.Add(1)
	if l.fail {
		return "", errors.New("database is gone")
	}
	if a, ok := l.tokens[token]; ok {
		return a, nil
	}
	return "", account.ErrBadToken
}
