package store_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

func newStore(t *testing.T) (*testutil.TestStore, string) {
	t.Helper()
	s, _, dir := testutil.Store(t)
	return s, dir
}

func fileNar(t testing.TB, contents string) []byte { return testutil.FileNar(contents) }

func path(name string, c byte) storepath.Path {
	return storepath.Path(storepath.Dir + "/" + strings.Repeat(string(c), 32) + "-" + name)
}

func add(t *testing.T, s store.Store, p storepath.Path, contents string, refs ...storepath.Path) *store.PathInfo {
	t.Helper()
	n := fileNar(t, contents)
	info := &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)), References: refs, Account: "alice"}
	if err := s.AddToStore(context.Background(), info, bytes.NewReader(n)); err != nil {
		t.Fatalf("adding %s: %v", p, err)
	}
	return info
}

func TestAddAndQuery(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	a := path("a", 'a')
	b := path("b", 'b')
	add(t, s, a, "a")
	add(t, s, b, "b refers to "+string(a), a, b)

	info, err := s.QueryPathInfo(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.References) != 2 || info.References[0] != a || info.References[1] != b {
		t.Errorf("references %v", info.References)
	}
	if info.Account != "alice" || info.RegistrationTime.IsZero() {
		t.Errorf("info %+v", info)
	}
	rc, got, err := s.NarFromPath(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(data, fileNar(t, "b refers to "+string(a))) || got.NarSize != uint64(len(data)) {
		t.Errorf("NAR round trip failed")
	}
	if p, err := s.QueryPathFromHashPart(ctx, a.HashPart()); err != nil || p != a {
		t.Errorf("hash part lookup: %v %v", p, err)
	}
	closure, err := s.Closure(ctx, []storepath.Path{b})
	if err != nil || len(closure) != 2 {
		t.Errorf("closure %v %v", closure, err)
	}
	refs, err := s.Referrers(ctx, a)
	if err != nil || len(refs) != 1 || refs[0] != b {
		t.Errorf("referrers %v %v", refs, err)
	}
	valid, err := s.ValidPaths(ctx, []storepath.Path{path("x", 'x'), b, a, b})
	if err != nil || len(valid) != 2 || valid[0] != b || valid[1] != a {
		t.Errorf("valid %v %v", valid, err)
	}
	if _, err := s.QueryPathInfo(ctx, path("x", 'x')); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("missing path: %v", err)
	}
	if _, err := s.Closure(ctx, []storepath.Path{path("x", 'x')}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("closure of missing path: %v", err)
	}
}

func TestRejectedUploadsLeaveNothing(t *testing.T) {
	ctx := context.Background()
	good := fileNar(t, "contents")
	cases := []struct {
		name string
		info func(p storepath.Path) *store.PathInfo
		nar  []byte
		want error
		msg  string
	}{
		{"wrong hash", func(p storepath.Path) *store.PathInfo {
			return &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of([]byte("other")), NarSize: uint64(len(good))}
		}, good, store.ErrHashMismatch, "NAR hash mismatch"},
		{"wrong size", func(p storepath.Path) *store.PathInfo {
			return &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(good), NarSize: uint64(len(good)) + 8}
		}, good, store.ErrSizeMismatch, "declared"},
		{"missing reference", func(p storepath.Path) *store.PathInfo {
			return &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(good), NarSize: uint64(len(good)), References: []storepath.Path{path("gone", 'g')}}
		}, good, store.ErrInvalidReference, "not in the farm store"},
		{"truncated NAR", func(p storepath.Path) *store.PathInfo {
			return &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(good), NarSize: uint64(len(good))}
		}, good[:len(good)-9], nil, "EOF"},
		{"not a NAR", func(p storepath.Path) *store.PathInfo {
			return &store.PathInfo{Path: p}
		}, []byte("GIF89a and other things that are not NARs"), nil, "magic"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, dir := newStore(t)
			p := path("bad", 'b')
			err := s.AddToStore(ctx, tc.info(p), bytes.NewReader(tc.nar))
			if err == nil {
				t.Fatal("accepted")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not mention %q", err, tc.msg)
			}
			if _, err := s.QueryPathInfo(ctx, p); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("registered after rejection: %v", err)
			}
			filepath.Walk(filepath.Join(dir, "nar"), func(path string, fi os.FileInfo, err error) error {
				if err == nil && !fi.IsDir() {
					t.Errorf("blob left behind: %s", path)
				}
				return nil
			})
		})
	}
}

func TestAddIsIdempotentAndDeduplicates(t *testing.T) {
	s, dir := newStore(t)
	ctx := context.Background()
	p := path("same", 's')
	add(t, s, p, "same")
	add(t, s, p, "same") // already valid: read and dropped
	add(t, s, path("twin", 't'), "same")
	var blobs int
	filepath.Walk(filepath.Join(dir, "nar"), func(path string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			blobs++
		}
		return nil
	})
	if blobs != 1 {
		t.Errorf("%d blobs for identical contents, want 1", blobs)
	}
	// Concurrent uploads of one path register it once.
	q := path("racy", 'r')
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := fileNar(t, "racy")
			info := &store.PathInfo{Path: q, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}
			if err := s.AddToStore(ctx, info, bytes.NewReader(n)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if _, err := s.QueryPathInfo(ctx, q); err != nil {
		t.Error(err)
	}
}

func TestAddSignatures(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	p := path("signed", 'z')
	add(t, s, p, "x")
	if err := s.AddSignatures(ctx, p, []string{"k1:AAAA", "k2:BBBB"}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSignatures(ctx, p, []string{"k1:AAAA"}); err != nil {
		t.Fatal(err)
	}
	info, _ := s.QueryPathInfo(ctx, p)
	if len(info.Sigs) != 2 {
		t.Errorf("sigs %v", info.Sigs)
	}
	if err := s.AddSignatures(ctx, p, []string{"bad sig"}); err == nil {
		t.Error("accepted a signature with a space")
	}
}

func TestTopoSort(t *testing.T) {
	a, b, c := path("a", 'a'), path("b", 'b'), path("c", 'c')
	infos := []*store.PathInfo{
		{Path: c, References: []storepath.Path{b, c}},
		{Path: a},
		{Path: b, References: []storepath.Path{a, path("outside", 'o')}},
	}
	sorted, err := store.TopoSort(infos)
	if err != nil {
		t.Fatal(err)
	}
	if sorted[0].Path != a || sorted[1].Path != b || sorted[2].Path != c {
		t.Errorf("order %v %v %v", sorted[0].Path, sorted[1].Path, sorted[2].Path)
	}
	infos[1].References = []storepath.Path{c}
	if _, err := store.TopoSort(infos); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle not reported: %v", err)
	}
}

func TestContentAddressVerified(t *testing.T) {
	ctx := context.Background()
	text := "Derive([])"
	textNar := fileNar(t, text)
	textPath, _ := storepath.MakeText("x.drv", []byte(text), nil)
	textCA := "text:" + nixhash.SHA256Of([]byte(text)).String()
	flatNar := fileNar(t, "tarball")
	flatHash := nixhash.SHA256Of([]byte("tarball"))
	flatPath, _ := storepath.MakeFixedOutput("src.tar", false, flatHash, nil, false)
	recHash := nixhash.SHA256Of(flatNar)
	recPath, _ := storepath.MakeFixedOutput("src", true, recHash, nil, false)
	var dirNar bytes.Buffer
	w := nar.NewWriter(&dirNar)
	w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory})
	w.Close()

	good := []struct {
		p   storepath.Path
		ca  string
		nar []byte
	}{
		{textPath, textCA, textNar},
		{flatPath, "fixed:" + flatHash.String(), flatNar},
		{recPath, "fixed:r:" + recHash.String(), flatNar},
	}
	for _, g := range good {
		s, _ := newStore(t)
		if err := s.AddToStore(ctx, &store.PathInfo{Path: g.p, CA: g.ca}, bytes.NewReader(g.nar)); err != nil {
			t.Errorf("%s: %v", g.ca, err)
		}
	}
	bad := []struct {
		name string
		p    storepath.Path
		ca   string
		nar  []byte
		want string
	}{
		{"text contents differ", textPath, textCA, fileNar(t, "Derive([x])"), "contents hash to"},
		{"text path differs", path("x.drv", 'x'), textCA, textNar, "gives " + string(textPath)},
		{"flat hash differs", flatPath, "fixed:" + nixhash.SHA256Of([]byte("other")).String(), flatNar, "contents hash to"},
		{"flat but a directory", flatPath, "fixed:" + flatHash.String(), dirNar.Bytes(), "holds a directory"},
		{"recursive path differs", path("src", 's'), "fixed:r:" + recHash.String(), flatNar, "gives " + string(recPath)},
		{"unparsable ca", recPath, "fixed:r:sha256:zzz", flatNar, "content address"},
		{"unknown ca kind", recPath, "nar:" + recHash.String(), flatNar, "neither text: nor fixed:"},
	}
	for _, b := range bad {
		s, _ := newStore(t)
		err := s.AddToStore(ctx, &store.PathInfo{Path: b.p, CA: b.ca}, bytes.NewReader(b.nar))
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: error %v, want %q", b.name, err, b.want)
		}
		if _, err := s.QueryPathInfo(ctx, b.p); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s: registered", b.name)
		}
	}
}
