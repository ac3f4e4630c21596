package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"

	"github.com/nixfarm/nixfarm/internal/db"
	"github.com/nixfarm/nixfarm/internal/records"
)

// logsCmd is `nixfarm logs ID|DRV [--follow]`: a build's log from a state
// directory, any account's (the operator's view; a user reads their own
// with `ssh FARM nixfarm logs ID`).
func logsCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixfarm logs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", defaultStateDir(), "the farm's state directory")
	follow, parse := records.ParseLogArgs(fs, args)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: nixfarm logs [flags] BUILD-ID|DRV-PATH\n\nPrints a build's log from the farm's state directory (while it runs or not); a\nderivation path names its latest build. A user reads their own account's with:\nssh FARM nixfarm logs BUILD-ID [--follow]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	arg, err := parse()
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm logs: %v\n", err)
		return 2
	}
	if st, err := os.Stat(*stateDir); err != nil || !st.IsDir() {
		fmt.Fprintf(stderr, "nixfarm logs: no state directory %s (give the farm's with --state-dir)\n", *stateDir)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	d, err := db.Open(ctx, filepath.Join(*stateDir, "nixfarm.db"))
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm logs: %v\n", err)
		return 1
	}
	defer d.Close()
	svc := records.New(d, filepath.Join(*stateDir, "logs"), nil)
	rec, err := svc.WriteLog(ctx, records.Viewer{Admin: true}, arg, *follow, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm logs: %v\n", err)
		return 1
	}
	if *follow && !rec.Status.Succeeded() {
		return 1
	}
	return 0
}
