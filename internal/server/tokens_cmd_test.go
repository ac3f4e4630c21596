package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/apiauth"
	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/sshd"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// run runs an exec request as account and returns its exit status,
// stdout and stderr.
func run(t *testing.T, h *execHandler, acct, line string) (uint32, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := h.Exec(context.Background(), &sshd.Session{Account: acct, Fingerprint: "SHA256:" + acct, Command: line,
		Env: map[string]string{}, Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut})
	return code, out.String(), errOut.String()
}

func testHandler(t *testing.T) (*execHandler, *account.Service) {
	_, d, _ := testutil.Store(t)
	log := slog.New(slog.DiscardHandler)
	accounts := account.New(d, account.DefaultValues(), log)
	for _, a := range []string{"alice", "bob"} {
		if err := accounts.Add(context.Background(), a); err != nil {
			t.Fatal(err)
		}
	}
	sched := scheduler.New(scheduler.Config{Log: log, UnbuildableGrace: time.Hour})
	t.Cleanup(sched.Close)
	return &execHandler{accounts: accounts, sched: sched, log: log}, accounts
}

var tokenLine = regexp.MustCompile(`(?m)^API token (\d+) for account (\w+), scope read .*\n.*\n(nfapi_\S+)$`)

// Over SSH an account makes read tokens for itself only, sees and
// revokes only its own, and another account's token id is as unknown as
// a missing one.
func TestTokensOverSSH(t *testing.T) {
	h, accounts := testHandler(t)
	ctx := context.Background()
	code, out, errOut := run(t, h, "alice", "nixfarm tokens create --name ci --expires 30d")
	m := tokenLine.FindStringSubmatch(out)
	if code != 0 || m == nil || m[2] != "alice" {
		t.Fatalf("create: %d\n%s%s", code, out, errOut)
	}
	aliceID, secret := m[1], m[3]
	g, err := accounts.APIToken(ctx, secret)
	if err != nil || g.Viewer != (apiauth.Viewer{Account: "alice"}) || g.Expires.Sub(time.Now()) > 31*24*time.Hour {
		t.Fatalf("alice's token grants %+v, %v", g, err)
	}
	_, out, _ = run(t, h, "bob", "nixfarm tokens create")
	bobID := tokenLine.FindStringSubmatch(out)[1]

	for _, bad := range []string{"--expires never", "--expires 400d", "--expires 1s", "--scope admin", "--name 'a\tb'", "extra"} {
		if code, out, errOut := run(t, h, "alice", "nixfarm tokens create "+bad); code == 0 || out != "" || !strings.Contains(errOut, "nixfarm tokens create") {
			t.Errorf("create %s: %d %q %q", bad, code, out, errOut)
		}
	}

	code, out, _ = run(t, h, "alice", "nixfarm tokens list --json")
	var list []account.APIToken
	if err := json.Unmarshal([]byte(out), &list); code != 0 || err != nil || len(list) != 1 || fmt.Sprint(list[0].ID) != aliceID || list[0].Name != "ci" {
		t.Fatalf("alice's list: %d %v\n%s", code, err, out)
	}
	if _, out, _ := run(t, h, "alice", "nixfarm tokens list"); strings.Contains(out, "nfapi_") || strings.Contains(out, "bob") ||
		!strings.Contains(out, "ci") {
		t.Errorf("alice's table:\n%s", out)
	}

	// Bob's id is no token of alice's, nor is a missing one: the same
	// answer.
	_, _, bobsAnswer := run(t, h, "alice", "nixfarm tokens revoke "+bobID)
	_, _, missing := run(t, h, "alice", "nixfarm tokens revoke 999")
	if !strings.Contains(bobsAnswer, "no such API token") || strings.ReplaceAll(bobsAnswer, bobID, "N") != strings.ReplaceAll(missing, "999", "N") {
		t.Errorf("revoking bob's token: %q; a missing one: %q", bobsAnswer, missing)
	}
	if toks, _ := accounts.APITokens(ctx, "bob"); toks[0].Revoked != nil {
		t.Fatal("alice revoked bob's token")
	}
	if code, out, errOut := run(t, h, "alice", "nixfarm tokens revoke ci"); code != 0 || !strings.Contains(out, "revoked API token "+aliceID) {
		t.Fatalf("revoke by name: %d %s%s", code, out, errOut)
	}
	if _, err := accounts.APIToken(ctx, secret); err != apiauth.ErrRevoked {
		t.Errorf("a revoked token: %v", err)
	}
	if code, _, errOut := run(t, h, "alice", "nixfarm tokens revoke "+aliceID); code == 0 || !strings.Contains(errOut, "revoked already") {
		t.Errorf("revoking twice: %d %s", code, errOut)
	}

	// The cap, named with the way out.
	for i := 0; i < account.MaxLiveAPITokens; i++ {
		if code, _, errOut := run(t, h, "alice", "nixfarm tokens create"); code != 0 {
			t.Fatalf("token %d: %s", i, errOut)
		}
	}
	if code, _, errOut := run(t, h, "alice", "nixfarm tokens create"); code == 0 || !strings.Contains(errOut, "has 20") || !strings.Contains(errOut, "tokens revoke") {
		t.Errorf("token past the cap: %d %s", code, errOut)
	}
	if code, _, errOut := run(t, h, "bob", "nixfarm tokens create"); code != 0 {
		t.Errorf("bob is not capped by alice's tokens: %s", errOut)
	}
	if code, _, errOut := run(t, h, "carol", "nixfarm tokens list"); code == 0 || !strings.Contains(errOut, "nixfarm accounts add carol") {
		t.Errorf("an account from the authorized_keys file only: %d %s", code, errOut)
	}
}

// ssh nixfarm queue shows the account's own builds with position and
// reason, and of other accounts' builds only counts.
func TestQueueOverSSH(t *testing.T) {
	h, _ := testHandler(t)
	drvOf := func(name string) storepath.Path {
		return storepath.Path("/nix/store/" + strings.Repeat("d", 32) + "-" + name + ".drv")
	}
	for _, name := range []string{"alice-one", "bob-secret", "alice-two"} {
		acct, _, _ := strings.Cut(name, "-")
		drv := &derivation.Basic{Name: name, Platform: "riscv64-linux", Env: map[string]string{}}
		h.sched.Submit(context.Background(), &build.Request{DrvPath: drvOf(name), Drv: drv, Account: acct}, func(*build.Result, error) {})
	}
	code, out, errOut := run(t, h, "alice", "nixfarm queue")
	t.Logf("alice's queue:\n%s", out)
	if code != 0 || !strings.Contains(out, "alice-one.drv") || !strings.Contains(out, "alice-two.drv") || strings.Contains(out, "bob") ||
		!strings.Contains(out, "no worker offers riscv64-linux") || !strings.Contains(out, "Other accounts: 0 running, 1 queued.") {
		t.Errorf("alice's queue: %d\n%s%s", code, out, errOut)
	}
	code, out, _ = run(t, h, "alice", "nixfarm queue --json")
	var v scheduler.QueueView
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || len(v.Builds) != 2 || v.OthersQueued != 1 || v.Queued != 3 {
		t.Fatalf("alice's queue --json: %d %v\n%s", code, err, out)
	}
	if strings.Contains(out, "bob") || v.Builds[0].Position != 1 || v.Builds[1].Position != 3 || v.Builds[0].InClass != 3 {
		t.Errorf("alice's queue --json:\n%s", out)
	}
	if _, out, _ := run(t, h, "carol", "nixfarm queue"); !strings.Contains(out, "No builds of account carol are queued or running.") ||
		!strings.Contains(out, "Other accounts: 0 running, 3 queued.") {
		t.Errorf("carol's queue:\n%s", out)
	}
	// Watching with nothing of one's own ends at once.
	if code, out, _ := run(t, h, "carol", "nixfarm queue --watch"); code != 0 || !strings.Contains(out, "No builds") {
		t.Errorf("carol's watch: %d\n%s", code, out)
	}
	if code, _, errOut := run(t, h, "alice", "nixfarm queue --account bob"); code == 0 || !strings.Contains(errOut, "-account") {
		t.Errorf("queue --account: %d %s", code, errOut)
	}
	if code, out, _ := run(t, h, "alice", "nixfarm help"); code != 0 || !strings.Contains(out, "nixfarm queue") || !strings.Contains(out, "nixfarm tokens") {
		t.Errorf("help: %d\n%s", code, out)
	}
}
