package substituter

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/narinfo"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// TestSubstituteClosure substitutes a four-level closure, one compression
// per level, references first, over HTTP and over file://.
func TestSubstituteClosure(t *testing.T) {
	for _, via := range []string{"http", "file"} {
		t.Run(via, func(t *testing.T) {
			u := newTestCache(t, "closure")
			d, _ := u.add(spec{name: "d", contents: "leaf", compression: "bzip2"})
			c, _ := u.add(spec{name: "c", contents: "c needs d", refs: []storepath.Path{d}, compression: "zstd"})
			b, _ := u.add(spec{name: "b", contents: "b needs c and d", refs: []storepath.Path{c, d}, compression: "none"})
			a, ani := u.add(spec{name: "a", contents: "a needs b", refs: []storepath.Path{b}, compression: "xz"})
			url := u.url()
			if via == "file" {
				url = u.fileURL()
			}
			s, st, _ := newSub(t, Config{URLs: []string{url}, Keys: []signature.PublicKey{u.pub()}})
			var prog progress
			got, err := s.Substitute(context.Background(), []storepath.Path{a}, &prog)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, []storepath.Path{a}) {
				t.Fatalf("Substitute returned %v, want [%s]", got, a)
			}
			mustValid(t, st, true, a, b, c, d)
			// Each path's copy is done before a path that refers to it starts.
			events, _ := prog.snapshot()
			pos := func(ev string) int {
				i := slices.Index(events, ev)
				if i < 0 {
					t.Fatalf("no event %q in %q", ev, events)
				}
				return i
			}
			for _, pair := range [][2]storepath.Path{{d, c}, {c, b}, {b, a}} {
				if pos(fmt.Sprintf("done %s <nil>", pair[0])) > pos(fmt.Sprintf("start %s %s", pair[1], url)) {
					t.Errorf("%s started before %s was done: %q", pair[1], pair[0], events)
				}
			}
			info, err := st.QueryPathInfo(context.Background(), a)
			if err != nil {
				t.Fatal(err)
			}
			if !info.NarHash.Equal(ani.NarHash) || !slices.Equal(info.References, []storepath.Path{b}) || !slices.Contains(info.Sigs, ani.Sigs[0]) {
				t.Errorf("registered %+v, narinfo %+v", info, ani)
			}
			// Everything is there now: nothing more is fetched.
			before := u.narGets.Load()
			if got, err := s.Substitute(context.Background(), []storepath.Path{a, d}, nil); err != nil || len(got) != 2 {
				t.Fatalf("second Substitute: %v, %v", got, err)
			}
			if n := u.narGets.Load(); n != before {
				t.Errorf("second Substitute fetched %d NARs", n-before)
			}
		})
	}
}

// TestQueryCache checks that lookups are remembered: hits for HitTTL,
// misses for MissTTL.
func TestQueryCache(t *testing.T) {
	u := newTestCache(t, "many")
	var present, absent []storepath.Path
	for i := range 250 {
		p, _ := u.add(spec{name: fmt.Sprintf("p%d", i), contents: fmt.Sprint(i)})
		present = append(present, p)
		absent = append(absent, pathFor(t, fmt.Sprintf("q%d", i), "nowhere"))
	}
	clk := newClock()
	s, _, _ := newSub(t, Config{URLs: []string{u.url()}, Keys: []signature.PublicKey{u.pub()}, Now: clk.Now})
	all := append(slices.Clone(present), absent...)
	query := func() map[storepath.Path]*narinfo.NarInfo {
		t.Helper()
		found, err := s.Query(context.Background(), all)
		if err != nil {
			t.Fatal(err)
		}
		if len(found) != len(present) {
			t.Fatalf("found %d paths, want %d", len(found), len(present))
		}
		for _, p := range present {
			if found[p] == nil || found[p].StorePath != p {
				t.Fatalf("%s not found", p)
			}
		}
		return found
	}
	query()
	if n := u.requests.Load(); n != 501 { // nix-cache-info and 500 narinfos
		t.Errorf("first Query made %d requests, want 501", n)
	}
	u.requests.Store(0)
	query()
	if n := u.requests.Load(); n != 0 {
		t.Errorf("second Query made %d requests, want 0", n)
	}
	clk.advance(DefaultMissTTL + time.Second)
	query()
	if n := u.requests.Load(); n != int64(len(absent)) {
		t.Errorf("Query after MissTTL made %d requests, want %d (the misses)", n, len(absent))
	}
	u.requests.Store(0)
	clk.advance(DefaultHitTTL)
	query()
	if n := u.requests.Load(); n != 500 {
		t.Errorf("Query after HitTTL made %d requests, want 500", n)
	}
}

// TestLookupCacheBounded checks that the lookup cache never holds more than
// its bound.
func TestLookupCacheBounded(t *testing.T) {
	lc := lookupCache{max: 100}
	now := time.Now()
	for i := range 1000 {
		lc.put(lookupKey{0, storepath.Path(fmt.Sprint(i))}, entry{expires: now.Add(time.Hour)}, now)
		if lc.len() > 100 {
			t.Fatalf("%d entries after %d puts", lc.len(), i+1)
		}
	}
}

// TestRefusals checks each way a cache can lie: nothing is registered, and
// the error says what was wrong.
func TestRefusals(t *testing.T) {
	stranger, _, err := signature.Generate("stranger-1")
	if err != nil {
		t.Fatal(err)
	}
	other := pathFor(t, "other", "x")
	bomb := bigNar(1 << 20)
	tests := []struct {
		name string
		sp   spec
		want string
	}{
		{"unsigned", spec{unsigned: true}, "not signed"},
		{"untrusted key", spec{signWith: &stranger}, "no valid signature by a trusted key"},
		{"NAR hash", spec{mutate: func(ni *narinfo.NarInfo) { ni.NarHash = nixhash.SHA256Of([]byte("other")) }}, "NAR hash mismatch"},
		{"NarSize lie", spec{mutate: func(ni *narinfo.NarInfo) { ni.NarSize += 64 }}, "NAR size mismatch"},
		{"oversize", spec{narBytes: func([]byte) []byte { return bomb }}, errOversize.Error()},
		{"dotdot URL", spec{mutate: func(ni *narinfo.NarInfo) { ni.URL = "nar/../../etc/passwd" }}, `contains ".."`},
		{"absolute URL", spec{mutate: func(ni *narinfo.NarInfo) { ni.URL = "/etc/passwd" }}, "is absolute"},
		{"scheme URL", spec{mutate: func(ni *narinfo.NarInfo) { ni.URL = "http://evil/x.nar" }}, "scheme"},
		{"compression", spec{compression: "lz4"}, `unsupported compression "lz4"`},
		{"StorePath", spec{mutate: func(ni *narinfo.NarInfo) { ni.StorePath = other }}, "describes " + string(other)},
		{"FileSize", spec{mutate: func(ni *narinfo.NarInfo) { ni.FileSize -= 10 }}, "larger than its FileSize"},
		{"FileHash", spec{mutate: func(ni *narinfo.NarInfo) { ni.FileHash = nixhash.SHA256Of(nil) }}, "file hash mismatch"},
		{"md5 NarHash", spec{mutate: func(ni *narinfo.NarInfo) { ni.NarHash = nixhash.Hash{Algo: nixhash.MD5, Digest: make([]byte, 16)} }}, "not sha256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newTestCache(t, "liar")
			tt.sp.name, tt.sp.contents = "victim", "contents of "+tt.name
			p, _ := u.add(tt.sp)
			s, st, logs := newSub(t, Config{URLs: []string{u.url()}, Keys: []signature.PublicKey{u.pub()}})
			got, err := s.Substitute(context.Background(), []storepath.Path{p}, nil)
			if len(got) != 0 {
				t.Errorf("Substitute returned %v", got)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), string(p)) || !strings.Contains(err.Error(), u.url()) {
				t.Errorf("error %v, want one naming %s, %s and %q", err, p, u.url(), tt.want)
			}
			mustValid(t, st, false, p)
			if tt.name == "unsigned" {
				// Refused narinfos are logged once per path and cache.
				s.Substitute(context.Background(), []storepath.Path{p}, nil)
				if n := strings.Count(logs.String(), "refusing a narinfo"); n != 1 {
					t.Errorf("refusal logged %d times:\n%s", n, logs)
				}
			}
		})
	}
}

// TestOversizeStopsAtOnce checks that a decompression bomb is not
// decompressed beyond NarSize+1 bytes.
func TestOversizeStopsAtOnce(t *testing.T) {
	bomb := compress(t, "xz", bigNar(4<<20))
	ni := &narinfo.NarInfo{Compression: "xz", NarSize: 1000, FileSize: uint64(len(bomb))}
	ns, err := newNarStream(strings.NewReader(string(bomb)), ni)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var got int
	buf := make([]byte, 4096)
	for {
		n, err := ns.Read(buf)
		got += n
		if err != nil {
			if !errors.Is(err, errOversize) {
				t.Fatalf("error %v, want errOversize", err)
			}
			break
		}
	}
	if got >= 1000 {
		t.Errorf("read %d bytes; the last ones should be held back", got)
	}
}

// TestUnsignedCA checks that a content-addressed path needs a signature
// too (unlike in Nix): its narinfo's sizes would otherwise bound nothing
// until the whole NAR is in. Signed, it is taken, and its contents must
// match its path.
func TestUnsignedCA(t *testing.T) {
	u := newTestCache(t, "ca")
	data := "fixed output"
	h := nixhash.SHA256Of([]byte(data))
	p, err := storepath.MakeFixedOutput("fixed", false, h, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	ca := func(ni *narinfo.NarInfo) { ni.CA = "fixed:sha256:" + h.Nix32() }
	u.add(spec{path: p, contents: data, unsigned: true, mutate: ca})
	s, st, _ := newSub(t, Config{URLs: []string{u.url()}})
	if got, err := s.Substitute(context.Background(), []storepath.Path{p}, nil); err == nil || !strings.Contains(err.Error(), "not signed") || len(got) != 0 {
		t.Fatalf("Substitute of an unsigned CA path: %v, %v", got, err)
	}
	mustValid(t, st, false, p)
	// Signed, by a trusted key: taken.
	u2 := newTestCache(t, "ca2")
	u2.add(spec{path: p, contents: data, mutate: ca})
	s2, st2, _ := newSub(t, Config{URLs: []string{u2.url()}, Keys: []signature.PublicKey{u2.pub()}})
	if got, err := s2.Substitute(context.Background(), []storepath.Path{p}, nil); err != nil || len(got) != 1 {
		t.Fatalf("Substitute of a signed CA path: %v, %v", got, err)
	}
	mustValid(t, st2, true, p)
	// A CA path whose contents do not match its path is refused by the store.
	q, err := storepath.MakeFixedOutput("liar", false, h, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	u2.add(spec{path: q, contents: "not the fixed output", mutate: ca})
	if got, err := s2.Substitute(context.Background(), []storepath.Path{q}, nil); err == nil || len(got) != 0 {
		t.Fatalf("Substitute of a lying CA path: %v, %v", got, err)
	}
	mustValid(t, st2, false, q)
}

// TestXZDictionaryBomb: an xz file whose block header declares a 4 GiB
// dictionary (the file is not covered by the narinfo's signature) is
// refused before anything is allocated for it.
func TestXZDictionaryBomb(t *testing.T) {
	data := testutil.FileNar("small")
	file := compress(t, "xz", data)
	// The block header follows the 12-byte stream header: its size byte,
	// flags, then the LZMA2 filter (0x21, one property byte: the
	// dictionary size), padding, and a CRC32 of the header.
	size := (int(file[12]) + 1) * 4
	hdr := file[12 : 12+size]
	i := bytes.Index(hdr, []byte{0x21, 0x01})
	if i < 0 {
		t.Fatalf("no LZMA2 filter in the block header % x", hdr)
	}
	hdr[i+2] = 40 // 4 GiB
	binary.LittleEndian.PutUint32(hdr[size-4:], crc32.ChecksumIEEE(hdr[:size-4]))
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	ni := &narinfo.NarInfo{Compression: "xz", NarSize: uint64(len(data)), FileSize: uint64(len(file))}
	ns, err := newNarStream(bytes.NewReader(file), ni)
	if err == nil {
		defer ns.Close()
		_, err = io.ReadAll(ns)
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "dictionary") {
		t.Fatalf("decoding a 4 GiB dictionary: %v", err)
	}
	var r *Refusal
	if !errors.As(err, &r) {
		t.Errorf("the error is not a Refusal: %v", err)
	}
	if grew := int64(after.Sys) - int64(before.Sys); grew > 256<<20 {
		t.Errorf("memory grew by %d MiB", grew>>20)
	}
}

// TestMissingReference checks that a path whose reference no cache has is
// not substituted, and that a path no cache has is simply absent.
func TestMissingReference(t *testing.T) {
	u := newTestCache(t, "holes")
	gone := pathFor(t, "gone", "never uploaded")
	p, _ := u.add(spec{name: "p", contents: "p", refs: []storepath.Path{gone}})
	nowhere := pathFor(t, "nowhere", "")
	s, st, _ := newSub(t, Config{URLs: []string{u.url()}, Keys: []signature.PublicKey{u.pub()}})
	got, err := s.Substitute(context.Background(), []storepath.Path{p, nowhere}, nil)
	if len(got) != 0 {
		t.Errorf("returned %v", got)
	}
	if err == nil || !strings.Contains(err.Error(), string(gone)) || strings.Contains(err.Error(), string(nowhere)) {
		t.Errorf("error %v, want one naming %s only", err, gone)
	}
	if n := u.narGets.Load(); n != 0 {
		t.Errorf("%d NARs fetched", n)
	}
	mustValid(t, st, false, p)
}

// TestFailover checks that a NAR failing from one cache is fetched from the
// next that has the path.
func TestFailover(t *testing.T) {
	bad := newTestCache(t, "bad")
	good := newTestCache(t, "good")
	spec := spec{name: "p", contents: "the real thing"}
	p, _ := good.add(spec)
	spec.file = func(b []byte) []byte { b = slices.Clone(b); b[len(b)/2] ^= 1; return b }
	spec.mutate = func(ni *narinfo.NarInfo) { ni.FileSize, ni.FileHash = 0, nixhash.Hash{} }
	spec.signWith = &good.key
	bad.add(spec)
	s, st, _ := newSub(t, Config{URLs: []string{bad.url(), good.url()}, Keys: []signature.PublicKey{good.pub()}})
	var prog progress
	got, err := s.Substitute(context.Background(), []storepath.Path{p}, &prog)
	if err != nil || len(got) != 1 {
		t.Fatalf("Substitute: %v, %v", got, err)
	}
	mustValid(t, st, true, p)
	events, _ := prog.snapshot()
	if len(events) != 4 || !strings.HasPrefix(events[0], "start "+string(p)+" "+bad.url()) || events[3] != "done "+string(p)+" <nil>" {
		t.Errorf("events %q", events)
	}
}

// TestPriority checks that nix-cache-info's Priority orders caches.
func TestPriority(t *testing.T) {
	first := newTestCache(t, "first")
	second := newTestCache(t, "second")
	second.write("nix-cache-info", []byte("StoreDir: /nix/store\nPriority: 10\n"))
	sp := spec{name: "p", contents: "both"}
	p, _ := first.add(sp)
	second.add(sp)
	s, _, _ := newSub(t, Config{URLs: []string{first.url(), second.url()}, Keys: []signature.PublicKey{first.pub(), second.pub()}})
	found, err := s.Query(context.Background(), []storepath.Path{p})
	if err != nil {
		t.Fatal(err)
	}
	if ni := found[p]; ni == nil || !strings.HasPrefix(ni.Sigs[0], "second-1:") {
		t.Errorf("found %+v, want the lower Priority cache's", ni)
	}
}

// TestWrongStoreDir checks that a cache for another store directory is
// never used, and said so once.
func TestWrongStoreDir(t *testing.T) {
	u := newTestCache(t, "elsewhere")
	u.write("nix-cache-info", []byte("StoreDir: /gnu/store\n"))
	p, _ := u.add(spec{name: "p", contents: "x"})
	s, _, logs := newSub(t, Config{URLs: []string{u.url()}, Keys: []signature.PublicKey{u.pub()}})
	for range 3 {
		if found, err := s.Query(context.Background(), []storepath.Path{p}); err != nil || len(found) != 0 {
			t.Fatalf("Query: %v, %v", found, err)
		}
	}
	if n := u.requests.Load(); n != 1 {
		t.Errorf("%d requests, want 1 (nix-cache-info)", n)
	}
	if n := strings.Count(logs.String(), "not using this cache"); n != 1 || !strings.Contains(logs.String(), "/gnu/store") {
		t.Errorf("logged %d times:\n%s", n, logs)
	}
}

// closedPort returns the address of a port nothing listens on.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestDownUpstream checks that an unreachable cache is dialled once per
// down period, said so once, and that the next cache serves meanwhile.
func TestDownUpstream(t *testing.T) {
	dead := closedPort(t)
	u := newTestCache(t, "alive")
	var paths []storepath.Path
	for i := range 5 {
		p, _ := u.add(spec{name: fmt.Sprintf("p%d", i), contents: fmt.Sprint(i)})
		paths = append(paths, p)
	}
	var deadDials atomic.Int64
	dialer := &net.Dialer{}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == dead {
			deadDials.Add(1)
		}
		return dialer.DialContext(ctx, network, addr)
	}}}
	clk := newClock()
	s, st, logs := newSub(t, Config{URLs: []string{"http://" + dead, u.url()}, Keys: []signature.PublicKey{u.pub()}, Now: clk.Now, HTTP: client})
	var prog progress
	for _, p := range paths {
		got, err := s.Substitute(context.Background(), []storepath.Path{p}, &prog)
		if err != nil || len(got) != 1 {
			t.Fatalf("Substitute: %v, %v", got, err)
		}
	}
	mustValid(t, st, true, paths...)
	if n := deadDials.Load(); n != 1 {
		t.Errorf("the dead cache was dialled %d times, want 1", n)
	}
	_, warnings := prog.snapshot()
	if len(warnings) != 1 || !strings.Contains(warnings[0], "http://"+dead+" is unreachable") || !strings.Contains(warnings[0], "skipping it for 1m0s") {
		t.Errorf("warnings %q", warnings)
	}
	if n := strings.Count(logs.String(), "substituter unreachable"); n != 1 {
		t.Errorf("logged %d times", n)
	}
	// After DownFor it is tried again, fails again, and is skipped twice as long.
	clk.advance(DefaultDownFor)
	var prog2 progress
	q, _ := u.add(spec{name: "q", contents: "later"})
	if got, err := s.Substitute(context.Background(), []storepath.Path{q}, &prog2); err != nil || len(got) != 1 {
		t.Fatalf("Substitute: %v, %v", got, err)
	}
	if n := deadDials.Load(); n != 2 {
		t.Errorf("the dead cache was dialled %d times after DownFor, want 2", n)
	}
	if _, warnings := prog2.snapshot(); len(warnings) != 1 || !strings.Contains(warnings[0], "skipping it for 2m0s") {
		t.Errorf("warnings %q", warnings)
	}
}

// TestServerErrorMarksDown checks that a 5xx on a narinfo marks the cache
// down: no request reaches it until DownFor has passed.
func TestServerErrorMarksDown(t *testing.T) {
	u := newTestCache(t, "flaky")
	p, _ := u.add(spec{name: "p", contents: "x"})
	u.narinfoStatus.Store(http.StatusServiceUnavailable)
	clk := newClock()
	s, _, _ := newSub(t, Config{URLs: []string{u.url()}, Keys: []signature.PublicKey{u.pub()}, Now: clk.Now})
	for range 3 {
		if found, _ := s.Query(context.Background(), []storepath.Path{p}); len(found) != 0 {
			t.Fatalf("found %v", found)
		}
	}
	if n := u.requests.Load(); n != 2 { // nix-cache-info, one narinfo
		t.Errorf("%d requests while down, want 2", n)
	}
	u.narinfoStatus.Store(0)
	clk.advance(DefaultDownFor)
	if found, _ := s.Query(context.Background(), []storepath.Path{p}); len(found) != 1 {
		t.Errorf("not found after the cache recovered")
	}
}

// TestSingleFlight checks that concurrent Substitute calls for one path
// fetch its NAR once.
func TestSingleFlight(t *testing.T) {
	u := newTestCache(t, "popular")
	p, _ := u.add(spec{name: "p", contents: "wanted by all"})
	hold := make(chan struct{})
	u.holdNar.Store(&hold)
	s, st, _ := newSub(t, Config{URLs: []string{u.url()}, Keys: []signature.PublicKey{u.pub()}})
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			got, err := s.Substitute(context.Background(), []storepath.Path{p}, nil)
			if err == nil && len(got) != 1 {
				err = fmt.Errorf("returned %v", got)
			}
			errs[i] = err
		})
	}
	// Hold the NAR until all calls wait for the one fetch (or, if they
	// never do, for a while).
	for waiters, deadline := 0, time.Now().Add(10*time.Second); waiters < n && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
		s.fetchF.mu.Lock()
		if c := s.fetchF.calls[p]; c != nil {
			waiters = c.waiters
		}
		s.fetchF.mu.Unlock()
	}
	close(hold)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := u.narGets.Load(); got != 1 {
		t.Errorf("%d NAR GETs, want 1", got)
	}
	mustValid(t, st, true, p)
}

// TestCancelledWaiter checks that a caller giving up does not cancel the
// fetch others wait for, and that the last one does.
func TestCancelledWaiter(t *testing.T) {
	var f flight[int, int]
	started := make(chan struct{})
	release := make(chan struct{})
	var sawCancel atomic.Bool
	fn := func(ctx context.Context) (int, error) {
		close(started)
		select {
		case <-release:
			return 7, nil
		case <-ctx.Done():
			sawCancel.Store(true)
			return 0, ctx.Err()
		}
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	done1 := make(chan error)
	go func() { _, err := f.do(ctx1, 1, fn); done1 <- err }()
	<-started
	done2 := make(chan int)
	go func() { v, _ := f.do(context.Background(), 1, fn); done2 <- v }()
	for {
		f.mu.Lock()
		w := f.calls[1].waiters
		f.mu.Unlock()
		if w == 2 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel1()
	if err := <-done1; !errors.Is(err, context.Canceled) {
		t.Errorf("first caller: %v", err)
	}
	close(release)
	if v := <-done2; v != 7 || sawCancel.Load() {
		t.Errorf("second caller got %d (cancelled %v)", v, sawCancel.Load())
	}
}

// TestNoURLs checks that a Substituter without caches finds nothing.
func TestNoURLs(t *testing.T) {
	s, st, _ := newSub(t, Config{})
	p := pathFor(t, "p", "x")
	if found, err := s.Query(context.Background(), []storepath.Path{p}); err != nil || len(found) != 0 {
		t.Errorf("Query: %v, %v", found, err)
	}
	if got, err := s.Substitute(context.Background(), []storepath.Path{p}, nil); err != nil || len(got) != 0 {
		t.Errorf("Substitute: %v, %v", got, err)
	}
	mustValid(t, st, false, p)
	if len(s.URLs()) != 0 {
		t.Errorf("URLs %v", s.URLs())
	}
}

func TestNewURLs(t *testing.T) {
	for _, bad := range []string{"ftp://x", "cache.nixos.org", "file://host/dir", "file:///", "https://x/?a=b", "https://", "::"} {
		if _, err := New(Config{URLs: []string{bad}, Store: failingStore{}}); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("New(%q): %v, want an error naming it", bad, err)
		}
	}
	s, err := New(Config{URLs: []string{"https://cache.nixos.org/", "file:///tmp/c/", "https://cache.nixos.org"}, Store: failingStore{}})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.URLs(); !slices.Equal(got, []string{"https://cache.nixos.org", "file:///tmp/c"}) {
		t.Errorf("URLs() = %q", got)
	}
}

// TestCancelled checks that Query ends with ctx.
func TestCancelled(t *testing.T) {
	u := newTestCache(t, "slow")
	p, _ := u.add(spec{name: "p", contents: "x"})
	s, _, _ := newSub(t, Config{URLs: []string{u.url()}, Keys: []signature.PublicKey{u.pub()}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Query(ctx, []storepath.Path{p}); !errors.Is(err, context.Canceled) {
		t.Errorf("Query: %v", err)
	}
}
