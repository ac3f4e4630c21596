package worker

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
)

// Local runs `nix-store --serve --write` on this machine, in the Nix store
// StoreURI ("" = the machine's default store).
type Local struct {
	NixStore string // "nix-store" if empty
	StoreURI string
	// Options are Nix settings passed to every run, such as
	// extra-platforms and system-features.
	Options map[string]string
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
	return &Stream{Stdin: stdin, Stdout: stdout, Stderr: stderr, Wait: func() error {
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
