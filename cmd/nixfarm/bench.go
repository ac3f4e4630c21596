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
It needs root, nix-bin, busybox-static, openssh-client and openssh-server.

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
