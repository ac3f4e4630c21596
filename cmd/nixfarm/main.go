// Command nixfarm is the nixfarm build farm: one binary for the SSH
// endpoint that stock Nix clients build through, the farm store and the
// built-in worker.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/nixfarm/nixfarm/internal/buildusers"
	"github.com/nixfarm/nixfarm/internal/server"
	"github.com/nixfarm/nixfarm/internal/sshd"
	"github.com/nixfarm/nixfarm/internal/store"
)

const usage = `nixfarm is an open, self-hostable build farm for Nix.

Usage:
  nixfarm serve [flags]     run the farm: SSH endpoint, farm store, scheduler, built-in worker
  nixfarm worker [flags]    run a build machine that joins a farm
  nixfarm workers [flags]   list a farm's connected workers
  nixfarm workers add|revoke|list
                            issue, revoke and list the agents' credentials
  nixfarm builds [flags]    list the farm's builds (--account, --status, --since, --json, ...)
  nixfarm usage [flags]     each account's builds, CPU hours and bytes over a period
  nixfarm summary --since T --format github
                            a CI step summary of the builds since T (Markdown)
  nixfarm logs ID|DRV [--follow]
                            print a build's log; --follow streams one under way
  nixfarm queue [--watch]   the running farm's queued and running builds: position, reason, start
  nixfarm accounts ...      add, list, show, remove accounts; set their limits
  nixfarm keys ...          add, list, remove the SSH keys of accounts
  nixfarm tokens ...        create, list, revoke the API tokens of accounts
  nixfarm client-config --farm HOST[:PORT] [--apply]
                            set up this machine's Nix to build through a farm
  nixfarm doctor [flags]    check that remote builds work here, and explain what does not
  nixfarm bench [flags]     compare nixfarm with stock Nix remote builds on this machine
  nixfarm version           print the version
  nixfarm help [command]    show a command's flags
`

var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stdout, stderr)
	case "worker":
		return workerCmd(args[1:], stdout, stderr)
	case "workers":
		return workersCmd(args[1:], stdout, stderr)
	case "bench":
		return benchCmd(args[1:], stdout, stderr)
	case "builds":
		return buildsCmd(args[1:], stdout, stderr)
	case "usage":
		return usageCmd(args[1:], stdout, stderr)
	case "summary":
		return summaryCmd(args[1:], stdout, stderr)
	case "logs":
		return logsCmd(args[1:], stdout, stderr)
	case "queue":
		return queueCmd(args[1:], stdout, stderr)
	case "accounts":
		return accountsCmd(args[1:], stdout, stderr)
	case "keys":
		return keysCmd(args[1:], os.Stdin, stdout, stderr)
	case "tokens":
		return tokensCmd(args[1:], stdout, stderr)
	case "client-config":
		return clientConfigCmd(args[1:], stdout, stderr)
	case "doctor":
		return doctorCmd(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "nixfarm", version)
		return 0
	case "help", "-h", "--help":
		if len(args) > 1 {
			return run([]string{args[1], "--help"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "nixfarm: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func serve(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixfarm serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg server.Config
	fs.StringVar(&cfg.StateDir, "state-dir", defaultStateDir(), "directory for the database, NARs, logs and host key")
	fs.StringVar(&cfg.SSHListen, "ssh-listen", ":2222", "address the SSH endpoint listens on")
	fs.StringVar(&cfg.AuthorizedKeys, "authorized-keys", "", "OpenSSH authorized_keys file; each key's comment names its account; keys added with `nixfarm keys add` work too (default STATE-DIR/authorized_keys)")
	fs.BoolVar(&cfg.LocalWorker, "local-worker", true, "run the built-in worker, which builds with this machine's Nix")
	fs.StringVar(&cfg.LocalStore, "local-store", "", "Nix store URI the built-in worker builds in (default STATE-DIR/worker-store, a chroot store; \"daemon\" or \"auto\" for the machine's store)")
	fs.IntVar(&cfg.LocalJobs, "local-jobs", 4, "builds the built-in worker runs at once; more wait their turn")
	fs.StringVar(&cfg.BuildUsersGroup, "build-users-group", buildusers.DefaultGroup, "as root, the built-in worker builds as the members of this group, created with one user per job if missing, so the machine's own Nix keeps its build users; the machine's group (nixbld) shares them instead, with the jobs capped below those free at start")
	fs.IntVar(&cfg.WarmSessions, "warm-sessions", 1, "nix-store --serve sessions the built-in worker and each static worker keep started ahead of need (0: none)")
	fs.StringVar(&cfg.NixStore, "nix-store", "nix-store", "nix-store binary the built-in worker runs")
	fs.StringVar(&cfg.Machines, "machines", "", "Nix machines file of static workers, driven over SSH with the serve protocol (NIX_SSHOPTS applies)")
	fs.StringVar(&cfg.WorkerListen, "worker-listen", "", "address `nixfarm worker` agents dial, e.g. :2223 (default: no agents)")
	oldToken := fs.String("worker-token-file", "", "no longer accepted: each agent has its own credential (nixfarm workers add NAME)")
	fs.StringVar(&cfg.HTTPListen, "http-listen", "127.0.0.1:2280", "address of the HTTP API that `nixfarm workers` reads (\"\" to disable)")
	fs.DurationVar(&cfg.Scheduler.UnbuildableGrace, "unbuildable-grace", 30*time.Second, "how long a build no worker can take waits for one to join before it fails")
	fs.IntVar(&cfg.Scheduler.MaxAttempts, "max-attempts", 3, "workers a build is tried on when workers are lost or fail to run it")
	fs.DurationVar(&cfg.Scheduler.QuarantineFor, "quarantine", time.Minute, "how long a worker that failed 3 builds in a row gets no builds")
	fs.BoolVar(&cfg.CancelOnDisconnect, "cancel-on-disconnect", false, "stop a build when every client waiting for it has gone (default: finish it and keep the result)")
	fs.DurationVar(&cfg.BuildRetention, "build-retention", 90*24*time.Hour, "how long build records and their logs are kept after the build ends, pruned hourly (0: for ever)")
	fs.DurationVar(&cfg.SyncDelay, "sync-delay", store.DefaultSyncDelay, "how long after upload a NAR is synced to disk (0: at once); NARs not synced yet are checked against their hashes after a crash")
	cfg.Limits = serveLimitFlags(fs)
	ciphers := fs.String("ssh-ciphers", strings.Join(sshd.DefaultCiphers, ","), "SSH ciphers offered to clients, comma-separated; clients pick the first of their own list that is offered (add chacha20-poly1305@openssh.com for clients without AES-GCM, at a CPU cost)")
	fs.IntVar(&cfg.SSHLimits.MaxConnections, "max-connections", sshd.DefaultMaxConnections, "SSH connections open at once, authenticated or not; more are closed at once (the agent listener has its own count)")
	fs.IntVar(&cfg.SSHLimits.MaxUnauthenticatedPerSource, "max-unauthenticated-per-source", sshd.DefaultMaxUnauthenticatedPerSource, "SSH connections from one IP address that have not authenticated yet; more are closed at once")
	fs.IntVar(&cfg.SSHLimits.MaxConnectionsPerAccount, "max-connections-per-account", sshd.DefaultMaxConnectionsPerAccount, "SSH connections one account may hold; more are refused with a message the client shows")
	fs.DurationVar(&cfg.SSHLimits.HandshakeTimeout, "handshake-timeout", sshd.DefaultHandshakeTimeout, "how long an SSH connection may take to authenticate before it is closed")
	fs.DurationVar(&cfg.SSHLimits.IdleTimeout, "idle-timeout", sshd.DefaultIdleTimeout, "how long an authenticated SSH connection may stay without an open session before it is closed (a session, however quiet, keeps it: long silent builds are safe)")
	var substituters, upstreamKeys repeatFlag
	fs.Var(&substituters, "substituter", "an upstream binary cache the farm fetches paths from (http(s):// or file://); repeat for more, in order of preference; '' for none (default "+server.DefaultSubstituter+")")
	fs.Var(&upstreamKeys, "trusted-public-key", "a key (name:base64) whose signature makes an upstream path acceptable; repeat for more; every account trusts these unless it untrusts one (default "+server.DefaultTrustedPublicKey+")")
	fs.BoolVar(&cfg.PublicCache, "public-cache", false, "let anyone read, from the binary cache on --http-listen, the paths the farm signed (built from checked derivations, or fetched from upstream); accounts always read their own with a token (nixfarm accounts token)")
	fs.StringVar(&cfg.CacheCompression, "cache-compression", "zstd", "compression of the NARs the binary cache offers: zstd, xz or none")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	cpuProfile := fs.String("cpu-profile", "", "write a CPU profile (go tool pprof) to this file until nixfarm stops")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: nixfarm serve [flags]\n\nRuns the farm: the SSH endpoint stock Nix clients build through (ssh-ng:// or ssh://),\nthe farm store, the scheduler and its workers.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	if *oldToken != "" {
		fmt.Fprintln(stderr, "nixfarm serve: --worker-token-file is no longer accepted: a shared join token let any holder take any worker name.\nIssue each agent its own credential with `nixfarm workers add NAME` and start it with --credential-file.")
		return 2
	}
	log, ok := newLogger(*logLevel, stderr)
	if !ok {
		return 2
	}
	cfg.Log = log
	cfg.Out = stdout
	cfg.Substituters, cfg.TrustedPublicKeys = []string{server.DefaultSubstituter}, []string{server.DefaultTrustedPublicKey}
	if substituters.set {
		cfg.Substituters = substituters.values
	}
	if upstreamKeys.set {
		cfg.TrustedPublicKeys = upstreamKeys.values
	}
	cfg.SSHCiphers = strings.Split(*ciphers, ",")
	cfg.Version = version
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(stderr, "nixfarm serve: CPU profile: %v\n", err)
			return 1
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	farm, err := server.Start(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm serve: %v\n", err)
		return 1
	}
	if err := farm.Serve(ctx); err != nil {
		fmt.Fprintf(stderr, "nixfarm serve: %v\n", err)
		return 1
	}
	log.Info("nixfarm stopped")
	return 0
}

func defaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/nixfarm"
	}
	if d, err := os.UserHomeDir(); err == nil {
		return d + "/.local/state/nixfarm"
	}
	return ".nixfarm"
}

// repeatFlag is a flag that may be given more than once, each time with
// one or more space-separated values (as nix.conf lists them), and knows
// whether it was given, so that an explicit empty value overrides the
// default.
type repeatFlag struct {
	set    bool
	values []string
}

func (r *repeatFlag) String() string { return strings.Join(r.values, " ") }
func (r *repeatFlag) Set(s string) error {
	r.set = true
	r.values = append(r.values, strings.Fields(s)...)
	return nil
}
