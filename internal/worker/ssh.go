package worker

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
)

// SSH runs `nix-store --serve --write` on a machine reached with the
// OpenSSH client, as Nix's own remote builds do, so ~/.ssh/config,
// agents and jump hosts work as they do for Nix.
type SSH struct {
	// Host is [user@]host, as in the machines file.
	Host string
	// Key is a private key file ("" = ssh's defaults).
	Key string
	// HostKey is the base64 of the host's public key line; if set, only
	// that key is accepted.
	HostKey string
	// RemoteProgram runs instead of nix-store ("" = nix-store).
	RemoteProgram string
	// RemoteStore is the Nix store on the machine ("" = its default).
	RemoteStore string
	// Options are extra ssh options, such as the words of NIX_SSHOPTS.
	Options []string
	// TempDir holds the known-hosts files made for HostKey.
	TempDir string
}

// Open implements Transport.
func (s *SSH) Open(ctx context.Context, opts build.Options) (*Stream, error) {
	args := []string{s.Host, "-x", "-a", "-o", "BatchMode=yes"}
	args = append(args, s.Options...)
	if s.Key != "" {
		args = append(args, "-i", s.Key)
	}
	var knownHosts string
	if s.HostKey != "" {
		line, err := base64.StdEncoding.DecodeString(s.HostKey)
		if err != nil {
			return nil, fmt.Errorf("host key of %s is not base64: %w", s.Host, err)
		}
		f, err := os.CreateTemp(s.TempDir, "known-hosts-*")
		if err != nil {
			return nil, err
		}
		host := s.Host[strings.LastIndexByte(s.Host, '@')+1:]
		fmt.Fprintf(f, "%s %s\n", host, strings.TrimSpace(string(line)))
		f.Close()
		knownHosts = f.Name()
		args = append(args, "-o", "UserKnownHostsFile="+knownHosts, "-o", "StrictHostKeyChecking=yes")
	}
	program := s.RemoteProgram
	if program == "" {
		program = "nix-store"
	}
	serve := ServeArgs(s.RemoteStore, nil, opts)
	args = append(args, program+" "+shellJoin(serve))
	cmd := exec.CommandContext(ctx, "ssh", args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	cleanup := func() {
		if knownHosts != "" {
			os.Remove(knownHosts)
		}
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		cleanup()
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cleanup()
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		cleanup()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		cleanup()
		return nil, fmt.Errorf("starting ssh to %s: %w", s.Host, err)
	}
	return &Stream{Stdin: stdin, Stdout: stdout, Stderr: stderr, Wait: func() error {
		defer cleanup()
		err := cmd.Wait()
		if exit, ok := err.(*exec.ExitError); ok {
			return fmt.Errorf("ssh to %s exited with status %d", s.Host, exit.ExitCode())
		}
		return err
	}}, nil
}

// shellJoin quotes words for the remote shell.
func shellJoin(words []string) string {
	quoted := make([]string, len(words))
	for i, w := range words {
		if w != "" && strings.Trim(w, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:@,+") == "" {
			quoted[i] = w
		} else {
			quoted[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
		}
	}
	return strings.Join(quoted, " ")
}
