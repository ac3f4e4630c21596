package account_test

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/account"
)

func TestCacheTokens(t *testing.T) {
	ctx := context.Background()
	s := newService(t)
	if _, err := s.IssueToken(ctx, "nobody"); !errors.Is(err, account.ErrUnknown) || !strings.Contains(err.Error(), "nobody") {
		t.Fatalf("token for a missing account: %v", err)
	}
	for _, name := range []string{"alice", "bob"} {
		if err := s.Add(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	a1, err := s.IssueToken(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	a2, err := s.IssueToken(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	b1, err := s.IssueToken(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if raw, err := base64.RawURLEncoding.DecodeString(a1); err != nil || len(raw) != 32 {
		t.Fatalf("token %q: %d bytes, %v", a1, len(raw), err)
	}
	if a1 == a2 {
		t.Fatal("two tokens alike")
	}
	for tok, want := range map[string]string{a1: "alice", a2: "alice", b1: "bob"} {
		if got, err := s.TokenAccount(ctx, tok); err != nil || got != want {
			t.Errorf("TokenAccount(%s) = %q, %v; want %s", tok, got, err, want)
		}
	}
	for _, bad := range []string{"", a1[:len(a1)-1], a1 + "x", strings.Repeat("a", 10000)} {
		if got, err := s.TokenAccount(ctx, bad); !errors.Is(err, account.ErrBadToken) {
			t.Errorf("TokenAccount(%.20q) = %q, %v", bad, got, err)
		}
	}
	if n, err := s.RevokeTokens(ctx, "alice"); err != nil || n != 2 {
		t.Fatalf("revoke: %d, %v", n, err)
	}
	if _, err := s.TokenAccount(ctx, a1); !errors.Is(err, account.ErrBadToken) {
		t.Errorf("revoked token: %v", err)
	}
	if got, err := s.TokenAccount(ctx, b1); err != nil || got != "bob" {
		t.Errorf("bob's token after alice's revocation: %q, %v", got, err)
	}
	if _, err := s.RevokeTokens(ctx, "nobody"); !errors.Is(err, account.ErrUnknown) {
		t.Errorf("revoke for a missing account: %v", err)
	}
	// Removing the account takes its tokens with it.
	if _, err := s.Remove(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TokenAccount(ctx, b1); !errors.Is(err, account.ErrBadToken) {
		t.Errorf("token of a removed account: %v", err)
	}
}
