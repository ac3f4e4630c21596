package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/nixfarm/nixfarm/internal/account"
	"github.com/nixfarm/nixfarm/internal/db"
	"github.com/nixfarm/nixfarm/internal/signature"
)

const accountsUsage = `Usage:
  nixfarm accounts add NAME [--max-... VALUE ...]   add an account (limits optional)
  nixfarm accounts list [--json]                    list the accounts
  nixfarm accounts show NAME [--json]               an account's keys, limits and trusted keys
  nixfarm accounts remove NAME                      remove an account, its keys and tokens
  nixfarm accounts set-limits NAME --max-... VALUE  set limits ("default" for the farm's default)
  nixfarm accounts trust NAME KEY                   trust a Nix signing key (name:base64)
  nixfarm accounts untrust NAME KEY                 stop trusting one: its own, or one of the
                                                    upstream keys every account trusts
  nixfarm accounts token NAME [--host HOST]         issue a binary cache token (shown once)
  nixfarm accounts token --revoke NAME              revoke all of an account's cache tokens

Every command takes --state-dir DIR (the farm's state directory) and works on
its database directly, while the farm runs or not.
`

const keysUsage = `Usage:
  nixfarm keys add --account NAME (KEYFILE | -)     add OpenSSH public keys (one per line)
  nixfarm keys list [--account NAME] [--json]       list keys
  nixfarm keys remove --account NAME FINGERPRINT    remove a key (SHA256:...)

Every command takes --state-dir DIR. A removed key is refused from the next
connection on.
`

// limitFlags adds a --max-... flag per limit to fs, recording the values
// given ("default": the farm's default again, as nil).
func limitFlags(fs *flag.FlagSet) map[account.Limit]*int64 {
	set := map[account.Limit]*int64{}
	for _, which := range account.AllLimits() {
		fs.Func(which.Name(), which.What()+` ("default" to use the farm's)`, func(s string) error {
			if s == "default" {
				set[which] = nil
				return nil
			}
			v, err := which.Parse(s)
			if err != nil {
				return err
			}
			set[which] = &v
			return nil
		})
	}
	return set
}

// serveLimitFlags adds the farm's default limits to serve's flags.
func serveLimitFlags(fs *flag.FlagSet) *account.Values {
	vals := account.DefaultValues()
	for _, which := range account.AllLimits() {
		fs.Func(which.Name(), fmt.Sprintf("limit for accounts that set none: %s (default %s; 0: unlimited)",
			which.What(), which.Format(vals[which])), func(s string) error {
			v, err := which.Parse(s)
			if err != nil {
				return err
			}
			vals[which] = v
			return nil
		})
	}
	return &vals
}

// parseInterleaved parses flags given before, between or after the
// positional arguments, and returns those.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// openAccounts opens the state database of an existing state directory.
func openAccounts(ctx context.Context, stateDir string) (*account.Service, func(), error) {
	if st, err := os.Stat(stateDir); err != nil || !st.IsDir() {
		return nil, nil, fmt.Errorf("no state directory %s (give the farm's with --state-dir)", stateDir)
	}
	d, err := db.Open(ctx, filepath.Join(stateDir, "nixfarm.db"))
	if err != nil {
		return nil, nil, err
	}
	return account.New(d, account.DefaultValues(), nil), func() { d.Close() }, nil
}

func accountsCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" || args[0] == "help" {
		fmt.Fprint(stderr, accountsUsage)
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("nixfarm accounts "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", defaultStateDir(), "the farm's state directory")
	asJSON := fs.Bool("json", false, "print JSON")
	var tok tokenFlags
	if sub == "token" {
		tok.revoke = fs.Bool("revoke", false, "revoke every cache token of the account")
		tok.host = fs.String("host", "FARM-HOST", "the binary cache's host name, for the netrc line printed")
	}
	var limits map[account.Limit]*int64
	if sub == "add" || sub == "set-limits" {
		limits = limitFlags(fs)
	}
	fs.Usage = func() { fmt.Fprint(stderr, accountsUsage+"\nFlags:\n"); fs.PrintDefaults() }
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	want := map[string]int{"add": 1, "list": 0, "show": 1, "remove": 1, "set-limits": 1, "trust": 2, "untrust": 2, "token": 1}
	n, known := want[sub]
	if !known {
		fmt.Fprintf(stderr, "nixfarm accounts: unknown command %q\n\n%s", sub, accountsUsage)
		return 2
	}
	if len(pos) != n {
		fmt.Fprintf(stderr, "nixfarm accounts %s: want %d arguments, got %d\n\n%s", sub, n, len(pos), accountsUsage)
		return 2
	}
	ctx := context.Background()
	svc, closeDB, err := openAccounts(ctx, *stateDir)
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm accounts %s: %v\n", sub, err)
		return 1
	}
	defer closeDB()
	if sub == "token" {
		err = runToken(ctx, svc, pos[0], tok, stdout)
	} else {
		err = runAccounts(ctx, svc, sub, pos, limits, *asJSON, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm accounts %s: %v\n", sub, err)
		return 1
	}
	if sub == "show" && !*asJSON {
		// The account's own signing key, from the farm's (if it has one yet).
		if data, err := os.ReadFile(filepath.Join(*stateDir, "signing-key")); err == nil {
			if farm, err := signature.ParseSecretKey(strings.TrimSpace(string(data))); err == nil {
				k := account.SigningKey(farm, pos[0], svc.Removals(context.Background(), pos[0]))
				fmt.Fprintf(stdout, "signing key (signs what the farm builds for it as a remote builder):\n  %s\n", k.Public())
			}
		}
	}
	return 0
}

func runAccounts(ctx context.Context, svc *account.Service, sub string, pos []string, limits map[account.Limit]*int64, asJSON bool, stdout io.Writer) error {
	switch sub {
	case "add":
		if err := svc.Add(ctx, pos[0]); err != nil {
			return err
		}
		if len(limits) > 0 {
			if err := svc.SetLimits(ctx, pos[0], limits); err != nil {
				return err
			}
		}
		fmt.Fprintf(stdout, "added account %s; add its keys with: nixfarm keys add --account %s KEYFILE\n", pos[0], pos[0])
	case "remove":
		keys, err := svc.Remove(ctx, pos[0])
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed account %s, its %d keys and its tokens; what it uploaded and built stays in the farm store\n", pos[0], keys)
	case "set-limits":
		if len(limits) == 0 {
			return errors.New("no limits given: use --max-... VALUE (see nixfarm accounts set-limits --help)")
		}
		if err := svc.SetLimits(ctx, pos[0], limits); err != nil {
			return err
		}
		return showAccount(ctx, svc, pos[0], asJSON, stdout)
	case "trust":
		if err := svc.Trust(ctx, pos[0], pos[1]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "account %s trusts %s\n", pos[0], pos[1])
	case "untrust":
		if err := svc.Untrust(ctx, pos[0], pos[1]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "account %s no longer trusts %s (paths it has seen signed by it stay in its view)\n", pos[0], pos[1])
	case "show":
		return showAccount(ctx, svc, pos[0], asJSON, stdout)
	case "list":
		all, err := svc.List(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(stdout, all)
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tKEYS\tCREATED\tOWN LIMITS")
		for _, a := range all {
			var own []string
			for _, which := range account.AllLimits() {
				if !a.Limits.IsDefault(which) {
					own = append(own, which.Name()+"="+which.Format(a.Limits.Get(which)))
				}
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", a.Name, a.Keys, a.Created.UTC().Format("2006-01-02 15:04"), strings.Join(own, " "))
		}
		return tw.Flush()
	}
	return nil
}

type tokenFlags struct {
	revoke *bool
	host   *string
}

// runToken issues a binary cache token, or revokes an account's tokens.
func runToken(ctx context.Context, svc *account.Service, name string, tok tokenFlags, stdout io.Writer) error {
	if *tok.revoke {
		n, err := svc.RevokeTokens(ctx, name)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "revoked %d cache tokens of account %s (a running farm may accept them for a few more seconds)\n", n, name)
		return nil
	}
	token, err := svc.IssueToken(ctx, name)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, `binary cache token for account %s (shown once; the farm keeps only its hash):
%s

Nix reads it from a netrc file (nix.conf: netrc-file = /etc/nix/netrc), one line:
machine %s login %s password %s
`, name, token, *tok.host, name, token)
	return nil
}

// showAccount prints an account's limits, keys and trusted keys. The
// defaults shown are the built-in ones: the CLI cannot know the flags
// `nixfarm serve` runs with.
func showAccount(ctx context.Context, svc *account.Service, name string, asJSON bool, stdout io.Writer) error {
	a, err := svc.Get(ctx, name)
	if err != nil {
		return err
	}
	keys, err := svc.Keys(ctx, name)
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, struct {
			*account.Account
			KeyList []account.Key `json:"keyList"`
		}{a, keys})
	}
	fmt.Fprintf(stdout, "account: %s\ncreated: %s\nlimits:\n", a.Name, a.Created.UTC().Format("2006-01-02 15:04:05 UTC"))
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	for _, which := range account.AllLimits() {
		v := "default (" + which.Format(a.Limits.Get(which)) + " unless nixfarm serve sets another)"
		if !a.Limits.IsDefault(which) {
			v = which.Format(a.Limits.Get(which))
		}
		fmt.Fprintf(tw, "  %s\t%s\n", which.Name(), v)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "keys:\n")
	for _, k := range keys {
		fmt.Fprintf(stdout, "  %s %s %s\n", k.Fingerprint, k.Type, k.Comment)
	}
	fmt.Fprintf(stdout, "trusted signing keys:\n")
	for _, k := range a.Trusted {
		fmt.Fprintf(stdout, "  %s\n", k)
	}
	fmt.Fprintf(stdout, "  and the upstream keys nixfarm serve has (--trusted-public-key), except:\n")
	for _, k := range a.Untrusted {
		fmt.Fprintf(stdout, "    %s\n", k)
	}
	return nil
}

func keysCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" || args[0] == "help" {
		fmt.Fprint(stderr, keysUsage)
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("nixfarm keys "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", defaultStateDir(), "the farm's state directory")
	acct := fs.String("account", "", "the account")
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() { fmt.Fprint(stderr, keysUsage+"\nFlags:\n"); fs.PrintDefaults() }
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	want := map[string]int{"add": 1, "list": 0, "remove": 1}
	n, known := want[sub]
	if !known {
		fmt.Fprintf(stderr, "nixfarm keys: unknown command %q\n\n%s", sub, keysUsage)
		return 2
	}
	if len(pos) != n || (sub != "list" && *acct == "") {
		fmt.Fprintf(stderr, "nixfarm keys %s: wrong arguments\n\n%s", sub, keysUsage)
		return 2
	}
	ctx := context.Background()
	svc, closeDB, err := openAccounts(ctx, *stateDir)
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm keys %s: %v\n", sub, err)
		return 1
	}
	defer closeDB()
	if err := runKeys(ctx, svc, sub, *acct, pos, *asJSON, stdin, stdout); err != nil {
		fmt.Fprintf(stderr, "nixfarm keys %s: %v\n", sub, err)
		return 1
	}
	return 0
}

func runKeys(ctx context.Context, svc *account.Service, sub, acct string, pos []string, asJSON bool, stdin io.Reader, stdout io.Writer) error {
	switch sub {
	case "add":
		var data []byte
		var err error
		if pos[0] == "-" {
			data, err = io.ReadAll(io.LimitReader(stdin, 1<<20))
		} else {
			data, err = os.ReadFile(pos[0])
		}
		if err != nil {
			return fmt.Errorf("reading keys: %w", err)
		}
		keys, err := svc.AddKeys(ctx, acct, data)
		if err != nil {
			return err
		}
		for _, k := range keys {
			fmt.Fprintf(stdout, "added key %s (%s) to account %s\n", k.Fingerprint, k.Type, acct)
		}
	case "remove":
		if err := svc.RemoveKey(ctx, acct, pos[0]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed key %s from account %s\n", pos[0], acct)
	case "list":
		keys, err := svc.Keys(ctx, acct)
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(stdout, keys)
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ACCOUNT\tFINGERPRINT\tTYPE\tCOMMENT\tADDED")
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.Account, k.Fingerprint, k.Type, k.Comment, k.Added.UTC().Format("2006-01-02 15:04"))
		}
		return tw.Flush()
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
