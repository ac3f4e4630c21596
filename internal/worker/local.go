package worker

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/usage"
)

// Local runs `nix-store --serve --write` on this machine, in the Nix store
// StoreURI ("" = the machine's default store).
type Local struct {
	NixStore string // "nix-store" if empty
	StoreURI string
	// Options are Nix settings passed to every run, such as
	// extra-platforms and system-features.
	Options map[string]string
	// Meter, if set, measures each session's process tree (see
	// LocalMeter); nil leaves builds' CPU time and memory unknown.
	Meter usage.Meter
}

// LocalMeter returns the meter for a Local worker building in storeURI:
// the machine's cgroups (usage.Detect), unless the builds run under the
// machine's nix-daemon, whose child the builder then is, not
// nix-store's: then none, and builds' usage is unknown.
func LocalMeter(storeURI string, log *slog.Logger) usage.Meter {
	if _, daemon := MachineStore(storeURI, os.Geteuid() == 0); daemon {
		log.Info("builds run under the machine's nix-daemon: their CPU time and peak memory are not measured", "store", storeURI)
		return usage.None{}
	}
	return usage.Detect(log)
}

// Open implements Transport.
func (l *Local) Open(ctx context.Context, opts build.Options) (*Stream, error) {
	bin := l.NixStore
	if bin == "" {
		bin = "nix-store"
	}
	cmd := exec.CommandContext(ctx, bin, ServeArgs(l.StoreURI, l.Options, opts)...)
	// When the build is abandoned, SIGTERM lets Nix kill its builder and
	// clean up; SIGKILL follows if it has not exited 5 seconds later.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	// nix-store forks nothing before it is asked to build, so the
	// builder starts in the group it is moved into now.
	var probe usage.Probe
	if l.Meter != nil {
		var err error
		if probe, err = l.Meter.Start(cmd.Process.Pid); err != nil {
			slog.Warn("not measuring the CPU time and memory of a nix-store session", "err", err)
			probe = nil
		}
	}
	return &Stream{Stdin: stdin, Stdout: stdout, Stderr: stderr, Usage: probe, Wait: func() error {
		err := cmd.Wait()
		if exit, ok := err.(*exec.ExitError); ok {
			return fmt.Errorf("nix-store --serve exited with status %d", exit.ExitCode())
		}
		return err
	}}, nil
}

// ServeArgs returns the arguments of `nix-store --serve --write` for a
// store, fixed Nix settings, and a build's options.
func ServeArgs(storeURI string, settings map[string]string, opts build.Options) []string {
	args := []string{"--serve", "--write"}
	if storeURI != "" {
		args = append(args, "--store", storeURI)
	}
	for _, k := range sortedKeys(settings) {
		args = append(args, "--option", k, settings[k])
	}
	if opts.Cores > 0 {
		args = append(args, "--option", "cores", strconv.Itoa(opts.Cores))
	}
	return args
}

// Delete implements Deleter: it removes paths, and every path referring
// to them, from the store with `nix-store --delete`. Nix refuses to delete
// a path that is alive (a GC root, or in use by a build), and so does it.
func (l *Local) Delete(ctx context.Context, paths []storepath.Path) error {
	bin := l.NixStore
	if bin == "" {
		bin = "nix-store"
	}
	var base []string
	if l.StoreURI != "" {
		base = append(base, "--store", l.StoreURI)
	}
	for _, k := range sortedKeys(l.Options) {
		base = append(base, "--option", k, l.Options[k])
	}
	q := exec.CommandContext(ctx, bin, append(append(slices.Clone(base), "--query", "--referrers-closure"), storepath.Strings(paths)...)...)
	var stderr bytes.Buffer
	q.Stderr = &stderr
	out, err := q.Output()
	if err != nil {
		return fmt.Errorf("listing the referrers of %d paths: %w: %s", len(paths), err, strings.TrimSpace(stderr.String()))
	}
	doomed := strings.Fields(string(out))
	if len(doomed) == 0 {
		return nil
	}
	d := exec.CommandContext(ctx, bin, append(append(slices.Clone(base), "--delete"), doomed...)...)
	stderr.Reset()
	d.Stderr = &stderr
	if err := d.Run(); err != nil {
		return fmt.Errorf("deleting %d paths: %w: %s", len(doomed), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
