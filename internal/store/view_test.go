package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/signature"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Every operation of one account's view answers for another account's
// paths as if they did not exist.
func TestViewsHideOtherAccounts(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	alice, bob := s.For("alice"), s.For("bob")
	dep := path("dep", 'd')
	own := path("own", 'o')
	add(t, alice, dep, "dep")
	add(t, alice, own, "refers to "+string(dep), dep)

	if valid, err := bob.ValidPaths(ctx, []storepath.Path{dep, own}); err != nil || len(valid) != 0 {
		t.Errorf("ValidPaths: %v %v", valid, err)
	}
	if _, err := bob.QueryPathInfo(ctx, own); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("QueryPathInfo: %v", err)
	}
	if _, _, err := bob.NarFromPath(ctx, own); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("NarFromPath: %v", err)
	}
	if _, err := bob.QueryPathFromHashPart(ctx, own.HashPart()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("QueryPathFromHashPart: %v", err)
	}
	if _, err := bob.Closure(ctx, []storepath.Path{own}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Closure: %v", err)
	}
	if _, err := bob.ClosureInfos(ctx, []storepath.Path{own}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ClosureInfos: %v", err)
	}
	if err := bob.AddSignatures(ctx, own, []string{"k:AAAA"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AddSignatures: %v", err)
	}
	// Bob's own referrer of the same dependency: he sees his, not hers.
	add(t, bob, dep, "dep")
	mine := path("bobs", 'b')
	add(t, bob, mine, "bob refers to "+string(dep), dep)
	if refs, err := bob.Referrers(ctx, dep); err != nil || len(refs) != 1 || refs[0] != mine {
		t.Errorf("Referrers for bob: %v %v", refs, err)
	}
	// A reference to a path bob cannot see is refused, as if missing.
	n := fileNar(t, "x")
	err := bob.AddToStore(ctx, &store.PathInfo{Path: path("sneaky", 's'), NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)),
		References: []storepath.Path{own}}, bytes.NewReader(n))
	if !errors.Is(err, store.ErrInvalidReference) {
		t.Errorf("a reference to another account's path: %v", err)
	}
	// Alice is unaffected.
	if refs, _ := alice.Referrers(ctx, dep); len(refs) != 1 || refs[0] != own {
		t.Errorf("Referrers for alice: %v", refs)
	}
}

// Two accounts hold different contents under one path at once, each
// seeing its own; identical bytes are stored once.
func TestViewsHoldTheirOwnContents(t *testing.T) {
	s, dir := newStore(t)
	ctx := context.Background()
	alice, bob, carol := s.For("alice"), s.For("bob"), s.For("carol")
	p := path("contested", 'c')
	add(t, alice, p, "alice's bytes")
	add(t, bob, p, "bob's bytes")
	add(t, carol, p, "alice's bytes")
	for _, tc := range []struct {
		view store.Store
		want string
	}{{alice, "alice's bytes"}, {bob, "bob's bytes"}, {carol, "alice's bytes"}} {
		rc, info, err := tc.view.NarFromPath(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, fileNar(t, tc.want)) || !info.NarHash.Equal(nixhash.SHA256Of(fileNar(t, tc.want))) {
			t.Errorf("a view reads %q", got)
		}
	}
	// A later upload by alice of other bytes does not replace hers.
	n := fileNar(t, "alice again")
	if err := alice.AddToStore(ctx, &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}, bytes.NewReader(n)); err != nil {
		t.Fatal(err)
	}
	if info, _ := alice.QueryPathInfo(ctx, p); !info.NarHash.Equal(nixhash.SHA256Of(fileNar(t, "alice's bytes"))) {
		t.Errorf("alice's path changed")
	}
	blobs, _ := filepath.Glob(filepath.Join(dir, "nar", "*", "*"))
	var files int
	for _, b := range blobs {
		if filepath.Base(filepath.Dir(b)) != "tmp" {
			files++
		}
	}
	if files != 2 {
		t.Errorf("%d blobs for two distinct NARs: %v", files, blobs)
	}
}

// A build recorded for one account is shared with another whose key is
// the same, and the shared outputs are in its view from then on.
func TestShareBuilds(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	alice, bob := s.For("alice"), s.For("bob")
	out := path("out", 'o')
	info := add(t, alice, out, "built")
	outputs := map[string]storepath.Path{"out": out}
	if err := alice.(store.Sharer).RecordBuild(ctx, "key1", map[string]*store.PathInfo{"out": info}, "local"); err != nil {
		t.Fatal(err)
	}
	if ok, err := bob.(store.Sharer).AdoptBuild(ctx, "other-key", outputs); ok || err != nil {
		t.Errorf("adopted under another key: %v %v", ok, err)
	}
	if ok, err := bob.(store.Sharer).AdoptBuild(ctx, "key1", map[string]storepath.Path{"out": path("else", 'e')}); ok || err != nil {
		t.Errorf("adopted other output paths: %v %v", ok, err)
	}
	if ok, err := bob.(store.Sharer).AdoptBuild(ctx, "key1", outputs); !ok || err != nil {
		t.Fatalf("not adopted: %v %v", ok, err)
	}
	got, err := bob.QueryPathInfo(ctx, out)
	if err != nil || !got.NarHash.Equal(info.NarHash) {
		t.Errorf("bob's shared output: %+v %v", got, err)
	}
	// A revoked worker's builds are no longer shared.
	if n, err := s.ForgetWorker(ctx, "local"); err != nil || n != 1 {
		t.Errorf("ForgetWorker: %d %v", n, err)
	}
	if ok, _ := s.For("carol").(store.Sharer).AdoptBuild(ctx, "key1", outputs); ok {
		t.Errorf("shared the build of a forgotten worker")
	}
}

// A .drv is stored only under the path of its text, whatever content
// address its upload declares (or none).
func TestDerivationMustMatchItsPath(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	text := `Derive([("out","/nix/store/` + strings.Repeat("o", 32) + `-x","","")],[],[],"x86_64-linux","/bin/sh",[],[])`
	good, err := storepath.MakeText("x.drv", []byte(text), nil)
	if err != nil {
		t.Fatal(err)
	}
	n := fileNar(t, text)
	if err := s.AddToStore(ctx, &store.PathInfo{Path: good, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}, bytes.NewReader(n)); err != nil {
		t.Fatalf("a .drv under its own path: %v", err)
	}
	if info, _ := s.QueryPathInfo(ctx, good); !strings.HasPrefix(info.CA, "text:sha256:") {
		t.Errorf("its content address: %q", info.CA)
	}
	lying := fileNar(t, strings.Replace(text, "/bin/sh", "/bin/ev", 1))
	other := path("x.drv", 'l')
	err = s.AddToStore(ctx, &store.PathInfo{Path: other, NarHash: nixhash.SHA256Of(lying), NarSize: uint64(len(lying))}, bytes.NewReader(lying))
	if !errors.Is(err, store.ErrContentAddress) || !strings.Contains(err.Error(), "path of its text") {
		t.Errorf("a .drv under another path: %v", err)
	}
	if _, err := s.QueryPathInfo(ctx, other); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the lying .drv is registered")
	}
	err = s.AddToStore(ctx, &store.PathInfo{Path: other, NarHash: nixhash.SHA256Of(lying), NarSize: uint64(len(lying)), CA: "fixed:r:sha256:" + nixhash.SHA256Of(lying).Nix32()}, bytes.NewReader(lying))
	if !errors.Is(err, store.ErrContentAddress) {
		t.Errorf("a .drv with a fixed-output content address: %v", err)
	}
}

// A path whose info lists a reference twice means it once; it is
// registered, and no blob is left behind by a failed add.
func TestDuplicateReference(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	dep := path("dep", 'd')
	add(t, s, dep, "dep")
	p := path("twice", 't')
	info := add(t, s, p, "refers to "+string(dep), dep, dep)
	got, err := s.QueryPathInfo(ctx, p)
	if err != nil || len(got.References) != 1 {
		t.Errorf("references %v %v (declared %v)", got, err, info.References)
	}
}

// A registration that fails after its blob was committed removes the
// blob: nothing half-written stays.
func TestFailedRegistrationLeavesNoBlob(t *testing.T) {
	s, dir := newStore(t)
	ctx := context.Background()
	first := path("first", 'h')
	add(t, s, first, "first")
	n := fileNar(t, "second, same hash part")
	err := s.AddToStore(ctx, &store.PathInfo{Path: path("second", 'h'), NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n))}, bytes.NewReader(n))
	if err == nil {
		t.Fatal("registered a second path with a taken hash part")
	}
	key := nixhash.SHA256Of(n).Nix32()
	if _, err := os.Stat(filepath.Join(dir, "nar", key[:2], key)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the failed add's blob is left: %v", err)
	}
}

// Concurrent AddSignatures all land.
func TestAddSignaturesConcurrently(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	p := path("signed", 'z')
	add(t, s, p, "x")
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.AddSignatures(ctx, p, []string{fmt.Sprintf("k%d:AAAA", i)}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	info, _ := s.QueryPathInfo(ctx, p)
	if len(info.Sigs) != 16 {
		t.Errorf("%d of 16 signatures kept: %v", len(info.Sigs), info.Sigs)
	}
}

// Paths the farm built are signed with its key when registered.
func TestBuiltPathsAreSigned(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	sk, pk, err := signature.Generate("farm-1")
	if err != nil {
		t.Fatal(err)
	}
	s.Key = &sk
	p := path("built", 'u')
	n := fileNar(t, "output")
	info := &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)), Ultimate: true, Sign: true, Worker: "local"}
	if err := s.AddToStore(ctx, info, bytes.NewReader(n)); err != nil {
		t.Fatal(err)
	}
	got, _ := s.QueryPathInfo(ctx, p)
	fp := signature.Fingerprint(p, got.NarHash, got.NarSize, got.References)
	if !signature.VerifyAny([]signature.PublicKey{pk}, fp, got.Sigs) || got.Worker != "local" {
		t.Errorf("built path: sigs %v, worker %q", got.Sigs, got.Worker)
	}
	// A path built but not vouched for is not signed.
	r := path("unverified", 'w')
	n = fileNar(t, "output of a BasicDerivation")
	if err := s.AddToStore(ctx, &store.PathInfo{Path: r, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)), Ultimate: true}, bytes.NewReader(n)); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.QueryPathInfo(ctx, r); len(got.Sigs) != 0 {
		t.Errorf("an unverified output carries %v", got.Sigs)
	}
	// An upload is not signed.
	q := path("uploaded", 'v')
	add(t, s, q, "upload")
	if got, _ := s.QueryPathInfo(ctx, q); len(got.Sigs) != 0 {
		t.Errorf("an upload carries %v", got.Sigs)
	}

	// With account keys, an unverified output is signed by the key of the
	// account it was built for, in that account's view only.
	keys := map[string]*signature.SecretKey{}
	s.AccountKey = func(account string) *signature.SecretKey {
		if keys[account] == nil {
			k := sk.Derive("farm-"+account+"-1", "account\x00"+account)
			keys[account] = &k
		}
		return keys[account]
	}
	u := path("unverified2", 'x')
	n = fileNar(t, "another output of a BasicDerivation")
	if err := s.AddToStore(ctx, &store.PathInfo{Path: u, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)), Ultimate: true}, bytes.NewReader(n)); err != nil {
		t.Fatal(err)
	}
	got, _ = s.QueryPathInfo(ctx, u)
	fp = signature.Fingerprint(u, got.NarHash, got.NarSize, got.References)
	alicePub := s.AccountKey("alice").Public()
	if len(got.Sigs) != 1 || !alicePub.Verify(fp, got.Sigs[0]) {
		t.Errorf("an unverified output carries %v, want alice's signature alone", got.Sigs)
	}
	// Bob, given the same output by an identical build, gets his own.
	bob := s.Local.For("bob").(*store.View)
	if err := s.Store.(store.Sharer).RecordBuild(ctx, "key-1", map[string]*store.PathInfo{"out": got}, "local"); err != nil {
		t.Fatal(err)
	}
	if ok, err := bob.AdoptBuild(ctx, "key-1", map[string]storepath.Path{"out": u}); !ok || err != nil {
		t.Fatalf("bob adopting: %v %v", ok, err)
	}
	bobs, _ := bob.QueryPathInfo(ctx, u)
	if len(bobs.Sigs) != 1 || !s.AccountKey("bob").Public().Verify(fp, bobs.Sigs[0]) || alicePub.Verify(fp, bobs.Sigs[0]) {
		t.Errorf("bob's shared output carries %v, want bob's signature alone", bobs.Sigs)
	}
}

// An account that trusts a key sees what the farm holds signed by it,
// whoever uploaded it, with its references; nothing else.
func TestSignedPathsAreVisibleToWhoTrustsTheKey(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	sk, pk, _ := signature.Generate("cache-1")
	other, _, _ := signature.Generate("other-1")
	bob := s.For("bob")
	dep := path("dep", 'd')
	top := path("top", 't')
	unsigned := path("unsigned", 'u')
	sign := func(k signature.SecretKey, info *store.PathInfo) {
		if err := bob.AddSignatures(ctx, info.Path, []string{k.Sign(signature.Fingerprint(info.Path, info.NarHash, info.NarSize, info.References))}); err != nil {
			t.Fatal(err)
		}
	}
	sign(sk, add(t, bob, dep, "dep"))
	sign(sk, add(t, bob, top, "top refers to "+string(dep), dep))
	sign(other, add(t, bob, unsigned, "signed by a key alice does not trust"))
	bob.AddSignatures(ctx, dep, []string{"cache-1:" + strings.Repeat("A", 88)}) // a forgery beside it changes nothing

	// Asked by hash part first (as a binary cache client asks), dave, who
	// trusts the key, finds it.
	dave := s.Local.For("dave").(*store.View).WithTrustedKeys([]signature.PublicKey{pk})
	if got, err := dave.QueryPathFromHashPart(ctx, top.HashPart()); err != nil || got != top {
		t.Errorf("by hash part, dave gets %q, %v", got, err)
	}
	if _, err := s.Local.For("carol").QueryPathFromHashPart(ctx, top.HashPart()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("by hash part, carol, who trusts nobody, finds bob's signed path: %v", err)
	}
	alice := s.Local.For("alice").(*store.View).WithTrustedKeys([]signature.PublicKey{pk})
	if _, err := s.Local.For("carol").QueryPathInfo(ctx, top); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("carol, who trusts nobody, sees bob's signed path: %v", err)
	}
	info, err := alice.QueryPathInfo(ctx, top)
	if err != nil || len(info.References) != 1 {
		t.Fatalf("alice does not see the signed path: %v", err)
	}
	// She gets the signature that made it visible, so her Nix takes it;
	// not the forgery beside it.
	if len(info.Sigs) != 1 || !pk.Verify(signature.Fingerprint(top, info.NarHash, info.NarSize, info.References), info.Sigs[0]) {
		t.Errorf("alice's info of the signed path carries signatures %q", info.Sigs)
	}
	if closure, err := alice.Closure(ctx, []storepath.Path{top}); err != nil || len(closure) != 2 {
		t.Errorf("its closure: %v %v", closure, err)
	}
	if valid, _ := alice.ValidPaths(ctx, []storepath.Path{unsigned}); len(valid) != 0 {
		t.Errorf("alice sees a path signed by a key she does not trust")
	}
	// A signature that does not verify makes nothing visible: a forged
	// one under the trusted key's name.
	forged := path("forged", 'f')
	fi := add(t, bob, forged, "forged")
	bob.AddSignatures(ctx, fi.Path, []string{"cache-1:" + strings.Repeat("B", 88)})
	if valid, _ := alice.ValidPaths(ctx, []storepath.Path{forged}); len(valid) != 0 {
		t.Errorf("a forged signature made a path visible")
	}
}

// An account that uploads bytes another account has cannot tell: the
// info it gets back is its own (time, deriver, signatures), with no
// "built here" and no farm signature from the other's build.
func TestIdenticalUploadRevealsNothing(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	sk, _, _ := signature.Generate("farm-1")
	s.Key = &sk
	p := path("secret", 's')
	n := fileNar(t, "a secret output")
	built := &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)), Ultimate: true, Sign: true,
		Deriver: path("secret.drv", 'd'), RegistrationTime: time.Unix(1000, 0)}
	if err := s.For("alice").AddToStore(ctx, built, bytes.NewReader(n)); err != nil {
		t.Fatal(err)
	}
	guess := &store.PathInfo{Path: p, NarHash: nixhash.SHA256Of(n), NarSize: uint64(len(n)), RegistrationTime: time.Unix(2000, 0)}
	if err := s.For("bob").AddToStore(ctx, guess, bytes.NewReader(n)); err != nil {
		t.Fatal(err)
	}
	got, err := s.For("bob").QueryPathInfo(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if got.Ultimate || len(got.Sigs) != 0 || got.Deriver != "" || got.RegistrationTime.Unix() != 2000 {
		t.Errorf("bob's info tells of alice's build: %+v", got)
	}
	if got, _ := s.For("alice").QueryPathInfo(ctx, p); !got.Ultimate || len(got.Sigs) != 1 || got.Deriver != built.Deriver {
		t.Errorf("alice's own info: %+v", got)
	}
}

// The binary cache's one-lookup narinfo query answers like
// QueryPathFromHashPart and QueryPathInfo together: the view's own paths,
// paths seen by a trusted signature, and nothing of other accounts'.
func TestInfoFromHashPart(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	sk, pk, _ := signature.Generate("cache-1")
	mine := path("mine", 'm')
	add(t, s, mine, "alice's")
	bob := s.Local.For("bob")
	theirs := path("theirs", 't')
	add(t, bob, theirs, "bob's")
	signed := path("signed", 's')
	si := add(t, bob, signed, "bob's, signed")
	bob.AddSignatures(ctx, signed, []string{sk.Sign(signature.Fingerprint(signed, si.NarHash, si.NarSize, nil))})

	alice := s.Local.For("alice").(*store.View).WithTrustedKeys([]signature.PublicKey{pk})
	if info, err := alice.QueryPathInfoFromHashPart(ctx, mine.HashPart()); err != nil || info.Path != mine {
		t.Errorf("her own path: %v %v", info, err)
	}
	if _, err := alice.QueryPathInfoFromHashPart(ctx, theirs.HashPart()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("bob's path: %v", err)
	}
	if info, err := alice.QueryPathInfoFromHashPart(ctx, signed.HashPart()); err != nil || info.Path != signed || len(info.Sigs) != 1 {
		t.Errorf("bob's signed path: %+v %v", info, err)
	}
	if _, err := alice.QueryPathInfoFromHashPart(ctx, "short"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a malformed hash part: %v", err)
	}
}
