package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/nixfarm/nixfarm/internal/db"
	"github.com/nixfarm/nixfarm/internal/records"
)

// buildsCmd is `nixfarm builds`: the build records of a state directory,
// every account's (the operator's view; a user sees their own with
// `ssh FARM nixfarm builds`).
func buildsCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixfarm builds", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", defaultStateDir(), "the farm's state directory")
	asJSON := fs.Bool("json", false, "print JSON")
	filter := records.FilterFlags(fs, true)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: nixfarm builds [flags]\n\nLists the farm's builds, newest first, from its state directory (while it runs or not).\nA user sees their own account's with: ssh FARM nixfarm builds [flags]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	now := time.Now()
	f, err := filter(now)
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm builds: %v\n", err)
		return 2
	}
	if st, err := os.Stat(*stateDir); err != nil || !st.IsDir() {
		fmt.Fprintf(stderr, "nixfarm builds: no state directory %s (give the farm's with --state-dir)\n", *stateDir)
		return 1
	}
	ctx := context.Background()
	d, err := db.Open(ctx, filepath.Join(*stateDir, "nixfarm.db"))
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm builds: %v\n", err)
		return 1
	}
	defer d.Close()
	svc := records.New(d, filepath.Join(*stateDir, "logs"), nil)
	list, next, err := svc.List(ctx, records.Viewer{Admin: true}, f)
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm builds: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(records.Page{Builds: list, NextCursor: next})
	} else {
		err = records.WriteTable(stdout, list, now)
		if err == nil && next != "" {
			fmt.Fprintln(stdout, "(more builds: raise --limit, or narrow with --since/--until)")
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm builds: %v\n", err)
		return 1
	}
	return 0
}
