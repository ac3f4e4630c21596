package account_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

func newService(t *testing.T) *account.Service {
	t.Helper()
	_, d, _ := testutil.Store(t)
	return account.New(d, account.DefaultValues(), nil)
}

func newKey(t *testing.T, comment string) (ssh.PublicKey, []byte) {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	line := bytes.TrimSpace(ssh.MarshalAuthorizedKey(pk))
	return pk, append(line, []byte(" "+comment+"\n")...)
}

func TestAccounts(t *testing.T) {
	ctx := context.Background()
	s := newService(t)
	for _, bad := range []string{"", "Alice", "-x", "a b", "a/b", strings.Repeat("a", 65)} {
		if err := s.Add(ctx, bad); err == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
	if err := s.Add(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(ctx, "bob.ci_1-x"); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(ctx, "alice"); !errors.Is(err, account.ErrExists) {
		t.Errorf("second add: %v", err)
	}
	all, err := s.List(ctx)
	if err != nil || len(all) != 2 || all[0].Name != "alice" || all[1].Name != "bob.ci_1-x" {
		t.Fatalf("list: %+v %v", all, err)
	}
	if err := s.Trust(ctx, "alice", "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="); err != nil {
		t.Fatal(err)
	}
	if err := s.Trust(ctx, "alice", "nope"); err == nil {
		t.Error("a bad Nix key was trusted")
	}
	if err := s.Trust(ctx, "carol", "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="); !errors.Is(err, account.ErrUnknown) {
		t.Errorf("trust for an unknown account: %v", err)
	}
	a, err := s.Get(ctx, "alice")
	if err != nil || len(a.Trusted) != 1 {
		t.Fatalf("get: %+v %v", a, err)
	}

	pk, line := newKey(t, "laptop")
	keys, err := s.AddKeys(ctx, "alice", line)
	if err != nil || len(keys) != 1 || keys[0].Comment != "laptop" || keys[0].Fingerprint != ssh.FingerprintSHA256(pk) {
		t.Fatalf("add key: %+v %v", keys, err)
	}
	if _, err := s.AddKeys(ctx, "bob.ci_1-x", line); !errors.Is(err, account.ErrExists) || !strings.Contains(err.Error(), "alice") {
		t.Errorf("the same key for another account: %v", err)
	}
	if _, err := s.AddKeys(ctx, "carol", line); !errors.Is(err, account.ErrUnknown) {
		t.Errorf("a key for an unknown account: %v", err)
	}
	for _, bad := range []string{"", "# only a comment\n", "ssh-ed25519 notbase64 x\n"} {
		if _, err := s.AddKeys(ctx, "bob.ci_1-x", []byte(bad)); err == nil {
			t.Errorf("key text %q accepted", bad)
		}
	}
	// Two keys, one of them bad: neither is added.
	_, good := newKey(t, "ok")
	if _, err := s.AddKeys(ctx, "bob.ci_1-x", append(good, []byte("garbage\n")...)); err == nil {
		t.Error("a file with a bad key was accepted")
	}
	if ks, _ := s.Keys(ctx, "bob.ci_1-x"); len(ks) != 0 {
		t.Errorf("bob has keys %+v after a refused add", ks)
	}
	acct, ok, err := s.LookupKey(ctx, pk)
	if err != nil || !ok || acct != "alice" {
		t.Errorf("lookup: %q %v %v", acct, ok, err)
	}
	opk, _ := newKey(t, "x")
	if _, ok, _ := s.LookupKey(ctx, opk); ok {
		t.Error("an unknown key was found")
	}
	if err := s.RemoveKey(ctx, "bob.ci_1-x", ssh.FingerprintSHA256(pk)); err == nil {
		t.Error("removed alice's key from bob")
	}
	if err := s.RemoveKey(ctx, "alice", ssh.FingerprintSHA256(pk)); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.LookupKey(ctx, pk); ok {
		t.Error("a removed key still authenticates")
	}

	// Removing an account removes its keys.
	s.AddKeys(ctx, "alice", line)
	n, err := s.Remove(ctx, "alice")
	if err != nil || n != 1 {
		t.Fatalf("remove: %d %v", n, err)
	}
	if _, ok, _ := s.LookupKey(ctx, pk); ok {
		t.Error("the key of a removed account still authenticates")
	}
	if _, err := s.Remove(ctx, "alice"); !errors.Is(err, account.ErrUnknown) {
		t.Errorf("second remove: %v", err)
	}
	if ks, _ := s.Keys(ctx, ""); len(ks) != 0 {
		t.Errorf("keys left: %+v", ks)
	}
}

func TestLimits(t *testing.T) {
	ctx := context.Background()
	s := newService(t)
	def := account.DefaultValues()
	// An account the database does not hold has the defaults.
	l := s.Limits(ctx, "stranger")
	if l.Values != def || !l.IsDefault(account.UploadSize) {
		t.Errorf("stranger's limits %+v", l)
	}
	s.Add(ctx, "alice")
	one, zero := int64(1<<20), int64(0)
	if err := s.SetLimits(ctx, "alice", map[account.Limit]*int64{account.UploadSize: &one, account.StoredBytes: &zero}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLimits(ctx, "bob", map[account.Limit]*int64{account.UploadSize: &one}); !errors.Is(err, account.ErrUnknown) {
		t.Errorf("limits of an unknown account: %v", err)
	}
	l = s.Limits(ctx, "alice")
	if l.Get(account.UploadSize) != 1<<20 || l.IsDefault(account.UploadSize) || l.Get(account.StoredBytes) != 0 || l.IsDefault(account.StoredBytes) ||
		l.Get(account.LogSize) != def[account.LogSize] || !l.IsDefault(account.LogSize) {
		t.Errorf("alice's limits %+v", l)
	}
	// Back to the default.
	if err := s.SetLimits(ctx, "alice", map[account.Limit]*int64{account.UploadSize: nil}); err != nil {
		t.Fatal(err)
	}
	if l := s.Limits(ctx, "alice"); !l.IsDefault(account.UploadSize) || l.Get(account.UploadSize) != def[account.UploadSize] {
		t.Errorf("after reset: %+v", l)
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		limit account.Limit
		in    string
		want  int64
	}{
		{account.UploadSize, "1048576", 1 << 20},
		{account.UploadSize, "512K", 512 << 10},
		{account.UploadSize, "1.5GiB", 3 << 29},
		{account.UploadSize, "64 MiB", 64 << 20},
		{account.UploadSize, "unlimited", 0},
		{account.ConcurrentBuilds, "4", 4},
		{account.ConcurrentBuilds, "0", 0},
	} {
		got, err := tc.limit.Parse(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("%s %q: %d %v, want %d", tc.limit.Name(), tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		limit account.Limit
		in    string
	}{
		{account.UploadSize, "1X"}, {account.UploadSize, "-1"}, {account.UploadSize, ""}, {account.UploadSize, "1e99G"},
		{account.ConcurrentBuilds, "1K"}, {account.ConcurrentBuilds, "-2"}, {account.ConcurrentBuilds, "x"},
	} {
		if v, err := tc.limit.Parse(tc.in); err == nil {
			t.Errorf("%s %q parsed as %d", tc.limit.Name(), tc.in, v)
		} else if !strings.Contains(err.Error(), tc.limit.Name()) {
			t.Errorf("error %q does not name the limit", err)
		}
	}
	for n, want := range map[int64]string{512: "512 B", 1 << 30: "1 GiB", 1288490189: "1.2 GiB", 64 << 20: "64 MiB"} {
		if got := account.FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
	if account.LogSize.Format(0) != "unlimited" || account.QueuedBuilds.Format(7) != "7" {
		t.Error("Format")
	}
}
