package credentials_test

import (
	"context"
	"encoding/base64"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/credentials"
	"github.com/nixfarm/nixfarm/internal/db"
)

func open(t *testing.T) (*credentials.Store, *time.Time) {
	t.Helper()
	d, err := db.Open(context.Background(), filepath.Join(t.TempDir(), "nixfarm.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return credentials.New(d, func() time.Time { return now }), &now
}

func TestIssueVerifyRevoke(t *testing.T) {
	ctx := context.Background()
	s, now := open(t)
	secret, err := s.Issue(ctx, "builder-1")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := base64.RawURLEncoding.DecodeString(secret); err != nil || len(b) != 32 {
		t.Errorf("secret %q is not 32 bytes of base64url: %v", secret, err)
	}
	other, err := s.Issue(ctx, "builder-2")
	if err != nil || other == secret {
		t.Fatalf("second credential %q, %v", other, err)
	}
	if _, err := s.Issue(ctx, "builder-1"); !errors.Is(err, credentials.ErrExists) {
		t.Errorf("a second live credential for builder-1: %v", err)
	}

	id, err := s.Verify(ctx, "builder-1", secret)
	if err != nil || id == 0 {
		t.Fatalf("verify: %d, %v", id, err)
	}
	// A credential admits only its own name.
	if _, err := s.Verify(ctx, "builder-2", secret); !errors.Is(err, credentials.ErrWrongName) {
		t.Errorf("builder-1's credential admitted builder-2: %v", err)
	}
	for _, bad := range []string{"", "nope", secret + "x", strings.ToUpper(secret)} {
		if _, err := s.Verify(ctx, "builder-1", bad); !errors.Is(err, credentials.ErrUnknown) {
			t.Errorf("secret %q admitted: %v", bad, err)
		}
	}

	list, err := s.List(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("list %+v, %v", list, err)
	}
	if list[0].Name != "builder-1" || !list[0].Created.Equal(*now) || !list[0].LastSeen.Equal(*now) || !list[0].Revoked.IsZero() {
		t.Errorf("listed %+v", list[0])
	}
	if !list[1].LastSeen.IsZero() {
		t.Errorf("builder-2 never logged in, listed %+v", list[1])
	}
	live, err := s.Live(ctx, []int64{id, 999})
	if err != nil || !live[id] || live[999] {
		t.Errorf("live %v, %v", live, err)
	}

	*now = now.Add(time.Hour)
	if err := s.Revoke(ctx, "builder-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Verify(ctx, "builder-1", secret); !errors.Is(err, credentials.ErrUnknown) {
		t.Errorf("a revoked credential admitted: %v", err)
	}
	if live, _ := s.Live(ctx, []int64{id}); live[id] {
		t.Error("a revoked credential is live")
	}
	if err := s.Revoke(ctx, "builder-1"); !errors.Is(err, credentials.ErrNoCredential) {
		t.Errorf("revoking twice: %v", err)
	}
	list, _ = s.List(ctx)
	if !list[0].Revoked.Equal(*now) {
		t.Errorf("revoked credential listed %+v", list[0])
	}
	// A new one can be issued once the old one is revoked.
	fresh, err := s.Issue(ctx, "builder-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Verify(ctx, "builder-1", fresh); err != nil {
		t.Error(err)
	}
	if _, err := s.Verify(ctx, "builder-1", secret); err == nil {
		t.Error("the revoked secret works again")
	}
}

func TestNames(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	for _, name := range []string{"local", "LOCAL", "", "bad name", "-x", strings.Repeat("a", 65)} {
		if _, err := s.Issue(ctx, name); err == nil {
			t.Errorf("issued a credential for %q", name)
		}
	}
	if _, err := s.Issue(ctx, "local"); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("local: %v", err)
	}
	if _, err := s.Verify(ctx, "local", "anything"); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("verify local: %v", err)
	}
}
