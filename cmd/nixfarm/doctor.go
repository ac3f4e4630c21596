package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/nixfarm/nixfarm/internal/clientconfig"
	"github.com/nixfarm/nixfarm/internal/doctor"
)

const doctorUsage = `Usage: nixfarm doctor [--farm HOST[:PORT]] [--drv PATH] [--json] [flags]

Checks, in the order a build meets them, whether this machine's Nix can
build through a nixfarm farm: Nix and nix-daemon, the daemon's settings
(and whether it has read nix.conf since it changed), trust, the build
user's SSH key (root's under nix-daemon), the farm's host key, the login
and account, what the farm's workers offer, and real test builds through
both remote builders and remote-store mode.

Every failed check says what is wrong, why it stops remote builds, and the
command or edit that fixes it. The exit status is 0 if remote builds work,
1 if not. Run it with sudo to check root's files too; --user names the user
whose builds to check (default: the one sudo came from).

Flags:
`

func doctorCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixfarm doctor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var opts doctor.Options
	fs.StringVar(&opts.Farm, "farm", "", "the farm, HOST[:PORT] (default: the first ssh or ssh-ng builder)")
	fs.StringVar(&opts.User, "user", "", "the user whose builds to check (root only; default: $SUDO_USER, or you)")
	fs.StringVar(&opts.Builders, "builders", "", "the --builders value you pass to Nix, if any, to check it the same way")
	fs.StringVar(&opts.Drv, "drv", "", "a derivation (.drv) to ask about: would the farm take it, and which workers could run it")
	fs.BoolVar(&opts.NoBuild, "no-build", false, "skip the test builds")
	fs.DurationVar(&opts.Timeout, "timeout", 2*time.Minute, "how long each step and test build may take")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	fs.Usage = func() { fmt.Fprint(stderr, doctorUsage); fs.PrintDefaults() }
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if opts.Farm != "" {
		if err := clientconfig.ValidFarm(opts.Farm); err != nil {
			fmt.Fprintf(stderr, "nixfarm doctor: %v\n", err)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	report := doctor.Run(ctx, opts)
	if *asJSON {
		if err := report.WriteJSON(stdout); err != nil {
			fmt.Fprintf(stderr, "nixfarm doctor: %v\n", err)
		}
	} else {
		report.Write(stdout)
	}
	if !report.OK {
		return 1
	}
	return 0
}
