package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/nixfarm/nixfarm/internal/clientconfig"
)

const clientConfigUsage = `Usage: nixfarm client-config --farm HOST[:PORT] [--apply] [flags]

Sets up this machine's Nix to build through a nixfarm farm:
  - the builders line: the farm's systems and features from its live worker
    pool, max-jobs sized to its slots, and its host key (8th field), whose
    fingerprint is shown for you to compare with the farm operator's;
  - an ssh config block for the user who runs the builds (root under
    nix-daemon), with keep-alives so a dead connection fails instead of
    hanging;
  - a key without a passphrase for that user, if it has none;
  - the command the farm's operator runs to add the key to your account.
On NixOS and nix-darwin it prints a snippet for your configuration instead.

Without --apply it prints all of this; with --apply it writes the files
(backing up every file it changes), restarts nix-daemon, and says what it
did. Running it again changes nothing unless the farm changed.

Flags:
`

func clientConfigCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixfarm client-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	farm := fs.String("farm", "", "the farm's SSH endpoint, HOST[:PORT] (port 22 if none)")
	alias := fs.String("alias", "nixfarm", "the ssh Host alias the builders line names (works with every Nix, whatever the port)")
	acct := fs.String("account", "", "your account on the farm, for the operator's command (default: NAME)")
	keyFile := fs.String("key", "", "the private key to use (default: the build user's ~/.ssh/nixfarm_ed25519, made if no usable key exists)")
	scheme := fs.String("scheme", "ssh-ng", "the builders line's protocol: ssh-ng (nix-daemon's) or ssh (nix-store --serve)")
	maxJobs := fs.Int("max-jobs", 0, "builds sent to the farm at once (default: the slots of its workers)")
	hostKeyFP := fs.String("host-key", "", "the farm's host key fingerprint (SHA256:...) as its operator gave it: anything else is refused (default: trust what the farm shows, and print its fingerprint to compare)")
	apply := fs.Bool("apply", false, "write the files and restart nix-daemon, instead of printing what to do")
	root := fs.String("root", "/", "apply to the system under this directory (for tests and images); nothing is restarted")
	fs.Usage = func() { fmt.Fprint(stderr, clientConfigUsage); fs.PrintDefaults() }
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if err := clientconfig.ValidFarm(*farm); err != nil {
		fmt.Fprintf(stderr, "nixfarm client-config: %v\n", err)
		return 2
	}
	if !regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`).MatchString(*alias) {
		fmt.Fprintf(stderr, "nixfarm client-config: --alias %q: use letters, digits, '.', '_' and '-'\n", *alias)
		return 2
	}
	if *scheme != "ssh-ng" && *scheme != "ssh" {
		fmt.Fprintf(stderr, "nixfarm client-config: --scheme must be ssh-ng or ssh, not %q\n", *scheme)
		return 2
	}
	if *hostKeyFP != "" && !strings.HasPrefix(*hostKeyFP, "SHA256:") {
		fmt.Fprintf(stderr, "nixfarm client-config: --host-key %q: give the fingerprint as SHA256:... (nixfarm serve prints it)\n", *hostKeyFP)
		return 2
	}
	opts := clientconfig.Options{Farm: *farm, Alias: *alias, Account: *acct, KeyFile: *keyFile, Scheme: *scheme,
		HostKeyFP: *hostKeyFP, MaxJobs: *maxJobs, Apply: *apply, Root: *root}
	if err := clientconfig.Configure(context.Background(), opts, stdout); err != nil {
		fmt.Fprintf(stderr, "nixfarm client-config: %v\n", err)
		return 1
	}
	return 0
}
