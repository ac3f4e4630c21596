package worker

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/storepath"
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
