package server

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/apiauth"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/sshd"
)

// `ssh farm nixfarm tokens ...`: the session's account makes, lists and
// revokes its own API tokens, so that a user who has only a key can use
// the HTTP API and the dashboard. Only read tokens, each lasting at most
// sshTokenMaxLifetime; admin tokens are made by the operator, on the
// state directory.

const (
	// sshTokenDefaultLifetime is how long a token made over SSH lasts
	// when --expires is not given.
	sshTokenDefaultLifetime = 90 * 24 * time.Hour
	// sshTokenMaxLifetime bounds --expires over SSH.
	sshTokenMaxLifetime = 365 * 24 * time.Hour
)

const sshTokensUsage = `Usage:
  nixfarm tokens create [--name LABEL] [--expires DURATION]
                          make an API token for your account (its secret is shown once)
  nixfarm tokens list [--json]
                          your account's API tokens (never their secrets)
  nixfarm tokens revoke ID|NAME
                          revoke one of your account's API tokens

An API token is sent as "Authorization: Bearer TOKEN" to the farm's HTTP API
and logs in to its dashboard. A token made here has scope read: it sees your
account's own builds, usage and logs. --expires is a number of days (30d) or
hours (12h): 90d if not given, at most 365d. An account holds at most 20 live
tokens. A revoked token may keep working for up to 10 seconds.
`

// tokens runs `nixfarm tokens` over SSH for the session's account.
func (h *execHandler) tokens(ctx context.Context, s *sshd.Session, args []string) error {
	if h.accounts == nil {
		return errors.New("this farm keeps no accounts")
	}
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" || args[0] == "help" {
		fmt.Fprint(s.Stdout, sshTokensUsage)
		return nil
	}
	sub := args[0]
	fs := flag.NewFlagSet("nixfarm tokens "+sub, flag.ContinueOnError)
	fs.SetOutput(s.Stderr)
	fs.Usage = func() { fmt.Fprint(s.Stderr, sshTokensUsage+"\nFlags:\n"); fs.PrintDefaults() }
	var (
		label, expires, scope *string
		asJSON                *bool
		want                  int
	)
	switch sub {
	case "create":
		label = fs.String("name", "", "a label to tell the token by in the listing")
		expires = fs.String("expires", "90d", "how long the token works: days (30d) or hours (12h), at most 365d")
		scope = fs.String("scope", "read", "read, the only scope a token made over SSH may have")
	case "list":
		asJSON = fs.Bool("json", false, "print JSON")
	case "revoke":
		want = 1
	default:
		return publicerr.New("nixfarm tokens: unknown command %q (create, list or revoke; nixfarm tokens --help)", sub)
	}
	pos, err := parseInterleavedFlags(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return publicerr.New("nixfarm tokens %s: %v", sub, err)
	}
	if len(pos) != want {
		return publicerr.New("nixfarm tokens %s: want %d arguments, got %d (nixfarm tokens --help)", sub, want, len(pos))
	}
	switch sub {
	case "create":
		if *scope != string(account.ScopeRead) {
			return publicerr.New("nixfarm tokens create: a token made over SSH has scope read (your account's own data); admin tokens are made by the farm's operator")
		}
		lifetime, err := sshTokenLifetime(*expires)
		if err != nil {
			return publicerr.New("nixfarm tokens create: %v", err)
		}
		return h.createToken(ctx, s, *label, lifetime)
	case "list":
		return h.listTokens(ctx, s, *asJSON)
	default:
		return h.revokeToken(ctx, s, pos[0])
	}
}

// parseInterleavedFlags parses flags given before, after or between the
// positional arguments, and returns the positional ones.
func parseInterleavedFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// sshTokenLifetime reads --expires over SSH: never is refused, and so is
// anything longer than sshTokenMaxLifetime.
func sshTokenLifetime(s string) (time.Duration, error) {
	if s == "never" {
		return 0, fmt.Errorf("a token made over SSH expires, after at most %dd; the farm's operator can make one that never does", int(sshTokenMaxLifetime.Hours()/24))
	}
	d, err := account.ParseExpiry(s)
	if err != nil {
		return 0, err
	}
	if d > sshTokenMaxLifetime {
		return 0, fmt.Errorf("expiry %q is longer than the %dd a token made over SSH may last", s, int(sshTokenMaxLifetime.Hours()/24))
	}
	return d, nil
}

// accountsError says what went wrong with the account service in words
// the session's user may read, and logs the rest.
func (h *execHandler) accountsError(s *sshd.Session, what string, err error) error {
	switch {
	case errors.Is(err, account.ErrUnknown):
		return publicerr.New("your account %s is not in the farm's account list (its key comes from the authorized_keys file); ask the farm's operator to run `nixfarm accounts add %s`", s.Account, s.Account)
	case errors.Is(err, account.ErrTooManyAPITokens), errors.Is(err, account.ErrNoAPIToken),
		errors.Is(err, account.ErrAmbiguousAPIToken), errors.Is(err, account.ErrAPITokenRevoked):
		// Their messages name only the account's own tokens and what
		// the user gave.
		return publicerr.Wrap(err)
	}
	h.log.Error(what, "account", s.Account, "err", err)
	return errors.New("the farm cannot read its API tokens right now; tell the farm's operator")
}

func (h *execHandler) createToken(ctx context.Context, s *sshd.Session, label string, lifetime time.Duration) error {
	if err := account.ValidAPITokenName(label); err != nil {
		return publicerr.New("nixfarm tokens create: %v", err)
	}
	t, secret, err := h.accounts.CreateAPIToken(ctx, s.Account, account.ScopeRead, label, lifetime)
	if err != nil {
		return h.accountsError(s, "creating an API token over SSH", err)
	}
	h.log.Info("API token created over SSH", "account", s.Account, "id", t.ID, "fingerprint", s.Fingerprint)
	fmt.Fprintf(s.Stdout, `API token %d for account %s, scope read (sees your account's own builds), expires %s.
Shown once; the farm keeps only its hash:
%s

Use it as: curl -H "Authorization: Bearer $TOKEN" http://FARM-HOST:2280/api/v1/builds
or log in to the dashboard (http://FARM-HOST:2280/ui/) with it.
Revoke it with: ssh FARM nixfarm tokens revoke %d
`, t.ID, s.Account, t.Expires.UTC().Format(time.RFC3339), secret, t.ID)
	return nil
}

func (h *execHandler) listTokens(ctx context.Context, s *sshd.Session, asJSON bool) error {
	list, err := h.accounts.APITokens(ctx, s.Account)
	if err != nil {
		return h.accountsError(s, "listing API tokens over SSH", err)
	}
	if asJSON {
		enc := json.NewEncoder(s.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	return account.WriteAPITokenTable(s.Stdout, list, time.Now(), false)
}

func (h *execHandler) revokeToken(ctx context.Context, s *sshd.Session, ref string) error {
	t, err := h.accounts.RevokeOwnAPIToken(ctx, s.Account, ref)
	if err != nil {
		return h.accountsError(s, "revoking an API token over SSH", err)
	}
	h.log.Info("API token revoked over SSH", "account", s.Account, "id", t.ID, "fingerprint", s.Fingerprint)
	fmt.Fprintf(s.Stdout, "revoked API token %d; the farm may accept it for up to %s more\n", t.ID, apiauth.DefaultTTL)
	return nil
}
