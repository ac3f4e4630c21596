package account_test

import (
	"context"
	"slices"
	"testing"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/signature"
)

func keyNames(keys []signature.PublicKey) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.Name)
	}
	slices.Sort(out)
	return out
}

// Every account trusts the farm's upstream keys until it untrusts one;
// trusting it again undoes that.
func TestUpstreamTrust(t *testing.T) {
	ctx := context.Background()
	s := newService(t)
	for _, name := range []string{"alice", "bob"} {
		if err := s.Add(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	_, up1, _ := signature.Generate("up-1")
	_, up2, _ := signature.Generate("up-2")
	_, own, _ := signature.Generate("own-1")
	s.SetUpstreamKeys([]signature.PublicKey{up1, up2})
	if err := s.Trust(ctx, "alice", own.String()); err != nil {
		t.Fatal(err)
	}
	if got := keyNames(s.TrustedKeys(ctx, "alice")); !slices.Equal(got, []string{"own-1", "up-1", "up-2"}) {
		t.Fatalf("alice trusts %v", got)
	}
	// An account only in authorized_keys trusts the upstream keys too.
	if got := keyNames(s.TrustedKeys(ctx, "carol")); !slices.Equal(got, []string{"up-1", "up-2"}) {
		t.Fatalf("carol trusts %v", got)
	}
	if err := s.Untrust(ctx, "alice", up1.String()); err != nil {
		t.Fatal(err)
	}
	if err := s.Untrust(ctx, "alice", own.String()); err != nil {
		t.Fatal(err)
	}
	if got := keyNames(s.TrustedKeys(ctx, "alice")); !slices.Equal(got, []string{"up-2"}) {
		t.Fatalf("after untrusting, alice trusts %v", got)
	}
	if got := keyNames(s.TrustedKeys(ctx, "bob")); !slices.Equal(got, []string{"up-1", "up-2"}) {
		t.Fatalf("bob trusts %v after alice untrusted a key", got)
	}
	a, err := s.Get(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Untrusted, []string{own.String(), up1.String()}) && !slices.Equal(a.Untrusted, []string{up1.String(), own.String()}) {
		t.Fatalf("alice's untrusted keys: %v", a.Untrusted)
	}
	if err := s.Trust(ctx, "alice", up1.String()); err != nil {
		t.Fatal(err)
	}
	if got := keyNames(s.TrustedKeys(ctx, "alice")); !slices.Equal(got, []string{"up-1", "up-2"}) {
		t.Fatalf("after trusting again, alice trusts %v", got)
	}
	if err := s.Untrust(ctx, "nobody", up1.String()); err == nil {
		t.Fatal("untrusting for an unknown account succeeded")
	}
	if err := s.Untrust(ctx, "alice", "not-a-key"); err == nil {
		t.Fatal("untrusting a malformed key succeeded")
	}
}

// An account's signing key is its own; it stays when the account moves
// from authorized_keys into the accounts table, and changes once the
// account is removed and made again under the same name.
func TestSigningKeys(t *testing.T) {
	ctx := context.Background()
	s := newService(t)
	farm, _, _ := signature.Generate("nixfarm-1")
	keys := &account.SigningKeys{Farm: farm, Accounts: s}
	carol := keys.For("carol") // only in authorized_keys
	if carol.Name != "nixfarm-carol-1" || carol.String() != keys.For("carol").String() {
		t.Fatalf("carol's key %s", carol.Name)
	}
	first := keys.For("alice").String()
	if err := s.Add(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if keys.For("alice").String() != first {
		t.Error("alice's key changed when she was added to the accounts table")
	}
	if cli := account.SigningKey(farm, "alice", s.Removals(ctx, "alice")); cli.String() != first {
		t.Errorf("the CLI derives another key than the server")
	}
	if first == keys.For("bob").String() {
		t.Fatal("two accounts share a key")
	}
	if _, err := s.Remove(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	second := keys.For("alice").String()
	if second == first {
		t.Error("alice, removed and added again, has her old key")
	}
	if cli := account.SigningKey(farm, "alice", s.Removals(ctx, "alice")); cli.String() != second {
		t.Errorf("after a removal the CLI derives another key than the server")
	}
}
