package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/apiauth"
)

const tokensUsage = `Usage:
  nixfarm tokens create --account NAME [--scope read|admin] [--expires 90d|12h|never] [--name LABEL]
                                         make an API token (shown once)
  nixfarm tokens list [--account NAME] [--json]
                                         list API tokens (never their secrets)
  nixfarm tokens revoke ID               revoke an API token

An API token is sent as "Authorization: Bearer TOKEN" to the farm's HTTP API
(serve --http-listen). A read token sees its account's own builds; an admin
token sees every account's. Every command takes --state-dir DIR and works on
the farm's database directly: only whoever holds the state directory can make
admin tokens. A user who has only an SSH key makes, lists and revokes their own
account's read tokens with ssh FARM nixfarm tokens create|list|revoke. An
account holds at most 20 live tokens. A running farm may accept a revoked token
for up to 10 more seconds.
`

func tokensCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" || args[0] == "help" {
		fmt.Fprint(stderr, tokensUsage)
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("nixfarm tokens "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", defaultStateDir(), "the farm's state directory")
	var (
		acct, scope, expires, label *string
		asJSON                      *bool
		want                        int
	)
	switch sub {
	case "create":
		acct = fs.String("account", "", "the account the token belongs to (required)")
		scope = fs.String("scope", "read", "read: the account's own data; admin: every account's")
		expires = fs.String("expires", "90d", "how long the token works: a number of days (30d), a duration (12h) or never")
		label = fs.String("name", "", "a label to tell the token by in the listing")
	case "list":
		acct = fs.String("account", "", "list only this account's tokens")
		asJSON = fs.Bool("json", false, "print JSON")
	case "revoke":
		want = 1
	default:
		fmt.Fprintf(stderr, "nixfarm tokens: unknown command %q\n\n%s", sub, tokensUsage)
		return 2
	}
	fs.Usage = func() { fmt.Fprint(stderr, tokensUsage+"\nFlags:\n"); fs.PrintDefaults() }
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(pos) != want {
		fmt.Fprintf(stderr, "nixfarm tokens %s: want %d arguments, got %d\n\n%s", sub, want, len(pos), tokensUsage)
		return 2
	}
	var (
		sc       account.Scope
		lifetime time.Duration
		id       int64
	)
	switch sub {
	case "create":
		if *acct == "" {
			err = errors.New("--account is required")
		} else if sc, err = account.ParseScope(*scope); err == nil {
			lifetime, err = account.ParseExpiry(*expires)
		}
	case "revoke":
		if id, err = strconv.ParseInt(pos[0], 10, 64); err != nil || id <= 0 {
			err = fmt.Errorf("invalid token id %q: give the number nixfarm tokens list shows", pos[0])
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm tokens %s: %v\n", sub, err)
		return 2
	}
	ctx := context.Background()
	svc, closeDB, err := openAccounts(ctx, *stateDir)
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm tokens %s: %v\n", sub, err)
		return 1
	}
	defer closeDB()
	switch sub {
	case "create":
		err = createToken(ctx, svc, *acct, sc, *label, lifetime, stdout)
	case "list":
		err = listTokens(ctx, svc, *acct, *asJSON, stdout)
	case "revoke":
		var t account.APIToken
		if t, err = svc.RevokeAPIToken(ctx, id); err == nil {
			fmt.Fprintf(stdout, "revoked API token %d (%s, account %s); a running farm may accept it for up to %s more\n",
				t.ID, t.Scope, t.Account, apiauth.DefaultTTL)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm tokens %s: %v\n", sub, err)
		return 1
	}
	return 0
}

func createToken(ctx context.Context, svc *account.Service, name string, scope account.Scope, label string, lifetime time.Duration, stdout io.Writer) error {
	t, secret, err := svc.CreateAPIToken(ctx, name, scope, label, lifetime)
	if err != nil {
		return err
	}
	expiry := "never expires"
	if t.Expires != nil {
		expiry = "expires " + t.Expires.UTC().Format(time.RFC3339)
	}
	sees := "account " + name + "'s own builds"
	if scope == account.ScopeAdmin {
		sees = "every account's builds"
	}
	fmt.Fprintf(stdout, `API token %d for account %s, scope %s (sees %s), %s.
Shown once; the farm keeps only its hash:
%s

Use it as: curl -H "Authorization: Bearer $TOKEN" http://FARM-HOST:2280/api/v1/workers
Revoke it with: nixfarm tokens revoke %d
`, t.ID, name, scope, sees, expiry, secret, t.ID)
	return nil
}

func listTokens(ctx context.Context, svc *account.Service, name string, asJSON bool, stdout io.Writer) error {
	list, err := svc.APITokens(ctx, name)
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, list)
	}
	return account.WriteAPITokenTable(stdout, list, time.Now(), true)
}
