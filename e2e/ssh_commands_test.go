package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// A user who has only a key (bob) makes an API token over SSH, reads
// /api/v1/builds with it, lists and revokes it (then 401). With one
// worker slot busy with alice's build, `ssh farm nixfarm queue` shows bob
// his waiting build's position and reason and nothing of alice's but a
// count, --watch follows it until it is done, and the operator's
// `nixfarm queue` shows both.
func TestSSHTokensAndQueue(t *testing.T) {
	f := startFarm(t, "--local-jobs", "1")
	f.mustCLI("accounts", "add", "bob")
	bob, _ := asAccount(t, f, "bob")
	c := newClient(t) // alice, Nix 2.8

	// The queue: alice's build holds the only slot for about 6 s.
	slow := c.expr("slow-alice", `mk { name = "slow-alice"; args = ["-c" "sleep 6; echo done > $out"]; }`)
	slowDone := make(chan result, 1)
	go func() { slowDone <- c.build(f, "ssh-ng", slow) }()
	waitRunning(t, f, 1)
	waiter := c.expr("waiter-bob", `mk { name = "waiter-bob"; args = ["-c" "echo waited > $out"]; }`)
	waiterDone := make(chan result, 1)
	go func() { waiterDone <- c.build(bob, "ssh-ng", waiter) }()

	queued := regexp.MustCompile(`queued +1 of 1 +waiter-bob\.drv +the only x86_64-linux worker, local, is (busy|full)`)
	var out, stderr string
	var code int
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if out, stderr, code = sshCmd(bob, "nixfarm", "nixfarm", "queue"); code != 0 || queued.MatchString(out) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("ssh nixfarm queue, as bob:\n%s", out)
	if code != 0 || !queued.MatchString(out) || !strings.Contains(out, "Other accounts: 1 running, 0 queued.") || strings.Contains(out, "slow-alice") {
		t.Fatalf("bob's queue: exit %d, want %s\n%s%s", code, queued, out, stderr)
	}
	operator, err := f.cli("queue", "--url", f.apiURL)
	t.Logf("nixfarm queue:\n%s", operator)
	if err != nil || !regexp.MustCompile(`running +- +alice +slow-alice\.drv +building on worker local`).MatchString(operator) ||
		!regexp.MustCompile(`queued +1 of 1 +bob +waiter-bob\.drv`).MatchString(operator) {
		t.Errorf("the operator's queue: %v", err)
	}
	// --watch follows bob's build until it is done, then ends.
	watchOut, watchErr, watchCode := sshCmd(bob, "nixfarm", "nixfarm", "queue", "--watch")
	t.Logf("ssh nixfarm queue --watch:\n%s", watchOut)
	if watchCode != 0 || !strings.Contains(watchOut, "waiter-bob.drv") || strings.Contains(watchOut, "slow-alice") ||
		!strings.HasSuffix(watchOut, "No builds of account bob are queued or running.\nOther accounts: 0 running, 0 queued.\n") {
		t.Errorf("bob's watch: exit %d\n%s", watchCode, watchErr)
	}
	for name, done := range map[string]chan result{"alice's": slowDone, "bob's": waiterDone} {
		if r := <-done; r.err != nil {
			t.Fatalf("%s build failed: %v\n%s", name, r.err, r.stderr)
		}
	}

	// Tokens: made, used, listed and revoked over SSH.
	out, stderr, code = sshCmd(bob, "nixfarm", "nixfarm", "tokens", "create", "--name", "laptop", "--expires", "7d")
	m := apiTokenRE.FindStringSubmatch(out)
	if code != 0 || m == nil || !strings.Contains(out, "for account bob, scope read") {
		t.Fatalf("ssh nixfarm tokens create: exit %d\n%s%s", code, out, stderr)
	}
	id, token := m[1], m[2]
	code2, body := f.apiGet("/api/v1/builds", token)
	if code2 != 200 || !strings.Contains(body, "waiter-bob") || strings.Contains(body, "slow-alice") {
		t.Fatalf("GET /api/v1/builds with bob's token: %d %s", code2, body)
	}
	if _, stderr, code := sshCmd(bob, "nixfarm", "nixfarm", "tokens", "create", "--expires", "never"); code == 0 || !strings.Contains(stderr, "expires") {
		t.Errorf("a token that never expires over SSH: exit %d %s", code, stderr)
	}
	out, stderr, code = sshCmd(bob, "nixfarm", "nixfarm", "tokens", "list")
	if code != 0 || !regexp.MustCompile(fmt.Sprintf(`(?m)^%s +read +laptop +live`, id)).MatchString(out) || strings.Contains(out, "nfapi_") {
		t.Errorf("ssh nixfarm tokens list: exit %d\n%s%s", code, out, stderr)
	}
	// Alice cannot see or revoke bob's token.
	if out, _, _ := sshCmd(f, "nixfarm", "nixfarm", "tokens", "list"); strings.Contains(out, "laptop") {
		t.Errorf("alice lists bob's token:\n%s", out)
	}
	f.mustCLI("accounts", "add", "alice") // alice's key is in authorized_keys only
	if _, stderr, code := sshCmd(f, "nixfarm", "nixfarm", "tokens", "revoke", id); code == 0 || !strings.Contains(stderr, "no such API token") {
		t.Errorf("alice revoking bob's token: exit %d %s", code, stderr)
	}
	if out, stderr, code = sshCmd(bob, "nixfarm", "nixfarm", "tokens", "revoke", "laptop"); code != 0 || !strings.Contains(out, "revoked API token "+id) {
		t.Fatalf("ssh nixfarm tokens revoke: exit %d\n%s%s", code, out, stderr)
	}
	deadline = time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if code2, body = f.apiGet("/api/v1/builds", token); code2 == 401 {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if code2 != 401 || !strings.Contains(body, "revoked") {
		t.Errorf("a token revoked over SSH: %d %s", code2, body)
	}
	if out, _, code := sshCmd(bob, "nixfarm", "nixfarm", "help"); code != 0 || !strings.Contains(out, "nixfarm tokens") || !strings.Contains(out, "nixfarm queue") {
		t.Errorf("ssh nixfarm help: exit %d\n%s", code, out)
	}
}
