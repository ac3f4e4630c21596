package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/nixfarm/nixfarm/internal/bench"
)

func benchCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixfarm bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sides := fs.String("sides", strings.Join(bench.AllSides, ","), "sides to compare")
	scenarios := fs.String("scenarios", strings.Join(bench.AllScenarios, ","), "scenarios to run")
	runs := fs.Int("runs", 3, "runs per scenario and side; medians are reported (S1 is ten builds per run)")
	mib := fs.Int("s4-mib", 256, "size of S4's input and output, in MiB")
	queued := fs.Int("s6-queued", 100_000, "builds S6 queues for its memory figure")
	s8Paths := fs.Int("s8-paths", 1000, "S8: small paths (a few KiB each) served as narinfos")
	s8Large := fs.Int("s8-large-mib", 256, "S8: size of the large path whose NAR is served, in MiB")
	s8Seconds := fs.Int("s8-seconds", 10, "S8: seconds wrk runs per measurement")
	s9Paths := fs.Int("s9-paths", 300, "S9: paths in the closure substituted")
	s9MiB := fs.Int("s9-mib", 512, "S9: the closure's total size, in MiB")
	workDir := fs.String("work-dir", "", "directory for stores and logs (default: a temporary one, removed afterwards)")
	farmLog := fs.String("farm-log-level", "warn", "nixfarm serve's log level; its log is WORK-DIR/nixfarm/nixfarm.log")
	farmProfile := fs.String("farm-cpu-profile", "", "have nixfarm serve write a CPU profile to this file")
	farmArgs := fs.String("farm-args", "", "more arguments for nixfarm serve, space-separated, to measure a setting (e.g. \"--sync-delay 0\")")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: nixfarm bench [flags]

Compares nixfarm with stock Nix remote builds on this machine, with the same
stock nix-build as the client everywhere, and prints a Markdown table of
medians and ratios. Sides:
  stock        OpenSSH sshd on 127.0.0.1 serving nix-daemon --stdio and
               nix-store --serve --write on a chroot store
  stock-tuned  the same, with ControlMaster auto and ControlPersist
  local        the client builds by itself (-j 8)
  nixfarm      nixfarm serve with its built-in worker (8 jobs)
S8 compares the farm's binary cache with nginx serving the same paths
(measured with wrk); S9, a builder substituting a closure from nginx.
It needs root, nix-bin, busybox-static, openssh-client and openssh-server,
and for S8 and S9 nginx-light and wrk.

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm bench: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, bench.Config{
		Nixfarm: self, WorkDir: *workDir, Runs: *runs, S4MiB: *mib, S6Queued: *queued,
		S8Paths: *s8Paths, S8LargeMiB: *s8Large, S8Seconds: *s8Seconds, S9Paths: *s9Paths, S9MiB: *s9MiB,
		Sides: strings.Split(*sides, ","), Scenarios: strings.Split(*scenarios, ","), Progress: stderr, FarmLogLevel: *farmLog,
		FarmCPUProfile: *farmProfile, FarmArgs: strings.Fields(*farmArgs),
	})
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm bench: %v\n", err)
		return 1
	}
	fmt.Fprint(stdout, rep.Table())
	return 0
}
