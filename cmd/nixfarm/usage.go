package main

import (
	"context"
	"database/sql"
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

// usageCmd is `nixfarm usage`: per account, the builds, CPU hours, peak
// memory and bytes of a period, from a state directory (the operator's
// view; a user sees their own with `ssh FARM nixfarm usage`).
func usageCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixfarm usage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", defaultStateDir(), "the farm's state directory")
	asJSON := fs.Bool("json", false, "print JSON")
	filter := records.UsageFlags(fs, true)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: nixfarm usage [flags]\n\nSums each account's builds over a period, from the farm's state directory: counts by\nstatus, CPU hours, peak memory, bytes, time building and queued.\nA user sees their own account's with: ssh FARM nixfarm usage [--since T] [--json]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	f, err := filter(time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm usage: %v\n", err)
		return 2
	}
	svc, d, err := openRecords(*stateDir)
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm usage: %v\n", err)
		return 1
	}
	defer d.Close()
	u, err := svc.Usage(context.Background(), records.Viewer{Admin: true}, f)
	if err == nil {
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			err = enc.Encode(u)
		} else {
			err = records.WriteUsageTable(stdout, u)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm usage: %v\n", err)
		return 1
	}
	return 0
}

// summaryCmd is `nixfarm summary`: a CI step summary of the builds of a
// period, from a state directory (a user has their own account's with
// `ssh FARM nixfarm summary`).
func summaryCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixfarm summary", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", defaultStateDir(), "the farm's state directory")
	opts := records.SummaryFlags(fs, true)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: nixfarm summary --since T [flags]\n\nWrites a summary of the builds queued since T as Markdown for a GitHub Actions step summary:\n  nixfarm summary --since \"$JOB_START\" --format github >> \"$GITHUB_STEP_SUMMARY\"\nA user has their own account's with: ssh FARM nixfarm summary --since T --format github\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	f, o, err := opts(time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm summary: %v\n", err)
		return 2
	}
	svc, d, err := openRecords(*stateDir)
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm summary: %v\n", err)
		return 1
	}
	defer d.Close()
	list, more, err := svc.ListAll(context.Background(), records.Viewer{Admin: true}, f, records.MaxSummaryBuilds)
	if err == nil {
		o.Truncated = more
		err = records.WriteSummary(stdout, list, o)
	}
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm summary: %v\n", err)
		return 1
	}
	return 0
}

// openRecords opens the build records of a state directory.
func openRecords(stateDir string) (*records.Service, *sql.DB, error) {
	if st, err := os.Stat(stateDir); err != nil || !st.IsDir() {
		return nil, nil, fmt.Errorf("no state directory %s (give the farm's with --state-dir)", stateDir)
	}
	d, err := db.Open(context.Background(), filepath.Join(stateDir, "nixfarm.db"))
	if err != nil {
		return nil, nil, err
	}
	return records.New(d, filepath.Join(stateDir, "logs"), nil), d, nil
}
