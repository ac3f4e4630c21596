package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nixfarm/nixfarm/internal/agent"
	"github.com/nixfarm/nixfarm/internal/buildusers"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// listFlag is a comma-separated list that knows whether it was set, so
// that an explicit empty list overrides the default.
type listFlag struct {
	set    bool
	values []string
}

func (l *listFlag) String() string { return strings.Join(l.values, ",") }
func (l *listFlag) Set(s string) error {
	l.set = true
	l.values = nil
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			l.values = append(l.values, v)
		}
	}
	return nil
}

func workerCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixfarm worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	hostname, _ := os.Hostname()
	coordinator := fs.String("coordinator", "", "host:port of the coordinator's --worker-listen address (required)")
	credFile := fs.String("credential-file", "", "file holding this worker's credential, from `nixfarm workers add NAME` on the coordinator (required)")
	tokenFile := fs.String("token-file", "", "no longer accepted: use --credential-file")
	hostKey := fs.String("coordinator-host-key", "", "the coordinator's SSH host key (key line, base64, or SHA256 fingerprint); unset accepts any")
	name := fs.String("name", hostname, "this worker's name on the farm")
	storeURI := fs.String("store", "", "Nix store URI to build in (default: this machine's store)")
	nixStore := fs.String("nix-store", "nix-store", "nix-store binary")
	var systems, features, mandatory listFlag
	fs.Var(&systems, "systems", "systems this worker builds for, comma-separated (default: the local Nix's system and extra-platforms)")
	fs.Var(&features, "features", "supported system features (default: the local Nix's system-features)")
	fs.Var(&mandatory, "mandatory-features", "features every derivation this worker takes must require")
	maxJobs := fs.Int("max-jobs", runtime.NumCPU(), "builds run at once")
	buildUsers := fs.String("build-users-group", "", "as root, with a --store of the worker's own, build as the members of this group, created with one user per job if missing (e.g. "+buildusers.DefaultGroup+", on a machine that also builds for itself); in the machine's own store, or given the machine's group (nixbld), share its users with the jobs capped below those free at start (default: build as the machine's Nix does, unchecked)")
	speed := fs.Float64("speed-factor", 1, "how fast this worker is relative to others")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: nixfarm worker --coordinator HOST:PORT --name NAME --credential-file FILE [flags]\n\nJoins a farm as a build machine. It dials out to the coordinator, so it works behind NAT.\nThe credential is issued for NAME on the coordinator: nixfarm workers add NAME.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	log, ok := newLogger(*logLevel, stderr)
	if !ok {
		return 2
	}
	if *tokenFile != "" {
		fmt.Fprintln(stderr, "nixfarm worker: --token-file is no longer accepted: each worker has its own credential.\nOn the coordinator, `nixfarm workers add NAME` issues one; pass it with --credential-file and --name NAME.")
		return 2
	}
	if *coordinator == "" || *credFile == "" {
		fmt.Fprintln(stderr, "nixfarm worker: --coordinator and --credential-file are required")
		return 2
	}
	data, err := os.ReadFile(*credFile)
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm worker: reading the credential: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	caps := worker.Capabilities{Systems: systems.values, SupportedFeatures: features.values, MandatoryFeatures: mandatory.values,
		MaxJobs: *maxJobs, SpeedFactor: *speed}
	native := ""
	nc, err := worker.DetectNix(ctx, "")
	if err == nil {
		native = nc.System
		if !systems.set {
			caps.Systems = nc.Systems()
		}
		if !features.set {
			caps.SupportedFeatures = nc.SystemFeatures
		}
	} else if !systems.set {
		fmt.Fprintf(stderr, "nixfarm worker: %v; pass --systems (and --features)\n", err)
		return 1
	} else {
		native = systems.values[0]
	}
	slices.Sort(caps.SupportedFeatures)
	settings := caps.Settings(native)
	// Builds get a /bin/sh as on NixOS builders, if Nix gives them none.
	if shell := worker.SandboxShell(nc.SandboxPaths, "/bin/busybox", "/usr/bin/busybox"); shell != "" {
		settings["extra-sandbox-paths"] = shell
	}
	if *buildUsers != "" {
		if nc.BuildUsersGroup == "" {
			nc.BuildUsersGroup = "nixbld" // Nix's default, when Nix could not be asked
		}
		root := os.Geteuid() == 0
		machine, daemon := worker.MachineStore(*storeURI, root)
		plan, err := buildusers.Configure(ctx, buildusers.Host{}, buildusers.Request{
			Root: root, Group: *buildUsers, NixGroup: nc.BuildUsersGroup,
			MachineStore: machine, Daemon: daemon, Jobs: caps.MaxJobs,
		}, log)
		if err != nil {
			fmt.Fprintf(stderr, "nixfarm worker: build users: %v\n", err)
			return 1
		}
		caps.MaxJobs = plan.Jobs
		maps.Copy(settings, plan.Settings())
	}
	a, err := agent.New(agent.Config{
		Coordinator: *coordinator, Credential: strings.TrimSpace(string(data)), CoordinatorHostKey: *hostKey,
		Name: *name, Version: version, Caps: caps,
		Local: &worker.Local{NixStore: *nixStore, StoreURI: *storeURI, Options: settings, Meter: worker.LocalMeter(*storeURI, log)},
		Log:   log,
	})
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm worker: %v\n", err)
		return 2
	}
	log.Info("nixfarm worker starting", "name", *name, "coordinator", *coordinator, "store", *storeURI, "capabilities", caps.String(), "max_jobs", caps.MaxJobs)
	if err := a.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "nixfarm worker: %v\n", err)
		return 1
	}
	return 0
}

func workersCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "add", "revoke", "list":
			return credentialsCmd(args[0], args[1:], stdout, stderr)
		}
	}
	fs := flag.NewFlagSet("nixfarm workers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://127.0.0.1:2280", "the coordinator's HTTP API (its --http-listen)")
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: nixfarm workers [--json] [--url URL]\n       nixfarm workers add|revoke|list ...\n\nLists the farm's connected workers: state, systems, features, running builds, last heartbeat.\nThe agents' credentials: nixfarm workers add NAME, revoke NAME, list (see their --help).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(strings.TrimSuffix(*url, "/") + "/api/v1/workers")
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm workers: %v\n(is `nixfarm serve` running with --http-listen at %s?)\n", err, *url)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "nixfarm workers: %s answered %s\n", *url, resp.Status)
		return 1
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm workers: %v\n", err)
		return 1
	}
	if *asJSON {
		stdout.Write(body)
		return 0
	}
	var list struct {
		Workers []scheduler.WorkerInfo `json:"workers"`
		Queued  int                    `json:"queued"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		fmt.Fprintf(stderr, "nixfarm workers: %v\n", err)
		return 1
	}
	scheduler.WriteWorkers(stdout, list.Workers, list.Queued, time.Now())
	return 0
}

// parseFlags parses flags; ok is false when the command should exit with
// code (0 for --help).
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected arguments: %s\n", fs.Name(), strings.Join(fs.Args(), " "))
		return 2, false
	}
	return 0, true
}

func newLogger(level string, stderr io.Writer) (*slog.Logger, bool) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		fmt.Fprintf(stderr, "--log-level: %v\n", err)
		return nil, false
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: l}))
	slog.SetDefault(log)
	return log, true
}
