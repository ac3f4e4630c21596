package account_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/apiauth"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// clock is a settable clock for the tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestAPITokens(t *testing.T) {
	ctx := context.Background()
	_, d, _ := testutil.Store(t)
	s := account.New(d, account.DefaultValues(), nil)
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	account.SetClock(s, clk.Now)

	if _, _, err := s.CreateAPIToken(ctx, "nobody", account.ScopeRead, "", 0); !errors.Is(err, account.ErrUnknown) {
		t.Fatalf("token for a missing account: %v", err)
	}
	for _, name := range []string{"alice", "bob"} {
		if err := s.Add(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.CreateAPIToken(ctx, "alice", "write", "", 0); err == nil || !strings.Contains(err.Error(), "write") {
		t.Fatalf("scope write: %v", err)
	}
	if _, _, err := s.CreateAPIToken(ctx, "alice", account.ScopeRead, "bad\x1b[31m", 0); err == nil {
		t.Fatal("a name with an escape sequence was accepted")
	}
	ci, ciSecret, err := s.CreateAPIToken(ctx, "alice", account.ScopeRead, "ci", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ciSecret, account.APITokenPrefix) || len(ciSecret) != len(account.APITokenPrefix)+43 {
		t.Fatalf("secret %q", ciSecret)
	}
	_, forever, err := s.CreateAPIToken(ctx, "alice", account.ScopeRead, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	_, admin, err := s.CreateAPIToken(ctx, "bob", account.ScopeAdmin, "ops", 0)
	if err != nil {
		t.Fatal(err)
	}

	// The secret is nowhere in the database, only its hash.
	rows, err := d.QueryContext(ctx, `SELECT hash, account, scope, name FROM api_tokens`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var cols [4]string
		if err := rows.Scan(&cols[0], &cols[1], &cols[2], &cols[3]); err != nil {
			t.Fatal(err)
		}
		for _, c := range cols {
			for _, secret := range []string{ciSecret, forever, admin} {
				if strings.Contains(c, strings.TrimPrefix(secret, account.APITokenPrefix)) {
					t.Fatalf("the database holds a secret in clear: %q", c)
				}
			}
		}
	}
	rows.Close()

	g, err := s.APIToken(ctx, ciSecret)
	if err != nil || g.Account != "alice" || g.Admin || !g.Expires.Equal(clk.Now().Add(24*time.Hour)) {
		t.Fatalf("ci token: %+v, %v", g, err)
	}
	if g, err := s.APIToken(ctx, admin); err != nil || g.Account != "bob" || !g.Admin {
		t.Fatalf("admin token: %+v, %v", g, err)
	}
	for _, bad := range []string{"", "x", ciSecret + "x", account.APITokenPrefix + strings.Repeat("A", 43), strings.TrimPrefix(ciSecret, account.APITokenPrefix)} {
		if _, err := s.APIToken(ctx, bad); !errors.Is(err, apiauth.ErrUnknown) {
			t.Fatalf("token %q: %v", bad, err)
		}
	}

	// Last use: recorded, then not rewritten within a minute.
	list, err := s.APITokens(ctx, "alice")
	if err != nil || len(list) != 2 || list[0].ID != ci.ID || list[0].Name != "ci" || list[0].LastUsed == nil || !list[0].LastUsed.Equal(clk.Now()) {
		t.Fatalf("alice's tokens: %+v, %v", list, err)
	}
	clk.Add(30 * time.Second)
	s.APIToken(ctx, ciSecret)
	list, _ = s.APITokens(ctx, "alice")
	if !list[0].LastUsed.Equal(clk.Now().Add(-30 * time.Second)) {
		t.Fatalf("last use rewritten within a minute: %v", list[0].LastUsed)
	}
	clk.Add(31 * time.Second)
	s.APIToken(ctx, ciSecret)
	list, _ = s.APITokens(ctx, "alice")
	if !list[0].LastUsed.Equal(clk.Now()) {
		t.Fatalf("last use not recorded after a minute: %v", list[0].LastUsed)
	}
	if list[1].LastUsed != nil {
		t.Fatalf("an unused token has a last use: %v", list[1].LastUsed)
	}

	// Expiry.
	clk.Add(24 * time.Hour)
	if _, err := s.APIToken(ctx, ciSecret); !errors.Is(err, apiauth.ErrExpired) {
		t.Fatalf("expired token: %v", err)
	}
	if list, _ := s.APITokens(ctx, "alice"); list[0].State(clk.Now()) != "expired" || list[1].State(clk.Now()) != "live" {
		t.Fatalf("states: %+v", list)
	}
	if _, err := s.APIToken(ctx, forever); err != nil {
		t.Fatalf("a token without expiry: %v", err)
	}

	// Revocation.
	all, err := s.APITokens(ctx, "")
	if err != nil || len(all) != 3 {
		t.Fatalf("all tokens: %+v, %v", all, err)
	}
	rev, err := s.RevokeAPIToken(ctx, all[1].ID)
	if err != nil || rev.Revoked == nil || rev.State(clk.Now()) != "revoked" {
		t.Fatalf("revoke: %+v, %v", rev, err)
	}
	if _, err := s.APIToken(ctx, forever); !errors.Is(err, apiauth.ErrRevoked) {
		t.Fatalf("revoked token: %v", err)
	}
	if _, err := s.RevokeAPIToken(ctx, all[1].ID); err == nil || !strings.Contains(err.Error(), "already") {
		t.Fatalf("revoking twice: %v", err)
	}
	if _, err := s.RevokeAPIToken(ctx, 9999); !errors.Is(err, account.ErrNoAPIToken) {
		t.Fatalf("revoking a missing id: %v", err)
	}

	// A removed account's tokens go with it, and stay gone when the
	// name is added again.
	if _, err := s.Remove(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.APIToken(ctx, admin); !errors.Is(err, apiauth.ErrUnknown) {
		t.Fatalf("a removed account's token: %v", err)
	}
	if err := s.Add(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.APIToken(ctx, admin); !errors.Is(err, apiauth.ErrUnknown) {
		t.Fatalf("a re-added account's old token: %v", err)
	}
	if list, err := s.APITokens(ctx, "bob"); err != nil || len(list) != 0 {
		t.Fatalf("bob's tokens after removal: %+v, %v", list, err)
	}
	if _, err := s.APITokens(ctx, "carol"); !errors.Is(err, account.ErrUnknown) {
		t.Fatalf("tokens of a missing account: %v", err)
	}
}

func TestParseExpiry(t *testing.T) {
	for in, want := range map[string]time.Duration{"never": 0, "30d": 30 * 24 * time.Hour, "12h": 12 * time.Hour, "90m": 90 * time.Minute} {
		if got, err := account.ParseExpiry(in); err != nil || got != want {
			t.Errorf("ParseExpiry(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0d", "-1d", "d", "1.5d", "30s", "forever", "99999999d"} {
		if _, err := account.ParseExpiry(in); err == nil {
			t.Errorf("ParseExpiry(%q) accepted", in)
		}
	}
}

// Tokens made and revoked (or left to expire) over and over do not pile
// up without end: an account keeps its newest MaxDeadAPITokens dead
// ones, and another account's are not touched.
func TestDeadAPITokensBounded(t *testing.T) {
	ctx := context.Background()
	_, d, _ := testutil.Store(t)
	s := account.New(d, account.DefaultValues(), nil)
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	account.SetClock(s, clk.Now)
	for _, name := range []string{"alice", "bob"} {
		if err := s.Add(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	bobs, _, err := s.CreateAPIToken(ctx, "bob", account.ScopeRead, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeOwnAPIToken(ctx, "bob", "1"); err != nil {
		t.Fatal(err)
	}
	var last account.APIToken
	for i := 0; i < account.MaxDeadAPITokens+30; i++ {
		tok, _, err := s.CreateAPIToken(ctx, "alice", account.ScopeRead, "", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if _, err := s.RevokeOwnAPIToken(ctx, "alice", strconv.FormatInt(tok.ID, 10)); err != nil {
				t.Fatal(err)
			}
		} else {
			clk.Add(2 * time.Hour) // it expires
		}
		last = tok
	}
	if _, _, err := s.CreateAPIToken(ctx, "alice", account.ScopeRead, "", time.Hour); err != nil {
		t.Fatal(err)
	}
	list, err := s.APITokens(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) > account.MaxDeadAPITokens+1 {
		t.Errorf("alice holds %d tokens, most of them dead", len(list))
	}
	found := false
	for _, tok := range list {
		found = found || tok.ID == last.ID
	}
	if !found {
		t.Errorf("the newest dead token %d was removed", last.ID)
	}
	if list, _ := s.APITokens(ctx, "bob"); len(list) != 1 || list[0].ID != bobs.ID {
		t.Errorf("bob's tokens: %+v", list)
	}
}
