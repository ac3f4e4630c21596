package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/nixfarm/nixfarm/internal/credentials"
	"github.com/nixfarm/nixfarm/internal/db"
	"github.com/nixfarm/nixfarm/internal/store"
)

// credentialsCmd runs `nixfarm workers add|revoke|list`. They act on the
// state database directly, beside a running farm (SQLite in WAL mode
// takes a second process): whoever can read the state directory runs
// the farm anyway, while the HTTP API is unauthenticated and must not
// issue secrets. A running farm checks its agents' credentials every few
// seconds, so a revocation disconnects the agent without any call to it.
func credentialsCmd(sub string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixfarm workers "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", defaultStateDir(), "the farm's state directory (as given to nixfarm serve)")
	asJSON := false
	usage := map[string]string{
		"add":    "add NAME [--state-dir DIR]\n\nIssues a credential for the agent NAME and prints it once, on stdout. The farm keeps only its\nSHA-256; the agent presents it with `nixfarm worker --name NAME --credential-file FILE`.\nA name has one live credential at a time; `local` is the built-in worker's.",
		"revoke": "revoke NAME [--state-dir DIR]\n\nWithdraws NAME's credential. A running farm disconnects an agent using it within seconds,\nand its running builds go back to the queue.",
		"list":   "list [--json] [--state-dir DIR]\n\nLists the credentials issued: name, when created, when revoked, when last used to log in.",
	}[sub]
	if sub == "list" {
		fs.BoolVar(&asJSON, "json", false, "print JSON")
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: nixfarm workers %s\n\nFlags:\n", usage)
		fs.PrintDefaults()
	}
	positional, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	want := 1
	if sub == "list" {
		want = 0
	}
	if len(positional) != want {
		fs.Usage()
		return 2
	}
	dbPath := filepath.Join(*stateDir, "nixfarm.db")
	if _, err := os.Stat(dbPath); err != nil {
		fmt.Fprintf(stderr, "nixfarm workers %s: no farm state in %s (%v); pass the --state-dir that nixfarm serve uses\n", sub, *stateDir, err)
		return 1
	}
	ctx := context.Background()
	database, err := db.Open(ctx, dbPath)
	if err != nil {
		fmt.Fprintf(stderr, "nixfarm workers %s: %v\n", sub, err)
		return 1
	}
	defer database.Close()
	creds := credentials.New(database, nil)
	switch sub {
	case "add":
		name := positional[0]
		secret, err := creds.Issue(ctx, name)
		if err != nil {
			fmt.Fprintf(stderr, "nixfarm workers add: %v\n", err)
			return 1
		}
		fmt.Fprintln(stdout, secret)
		fmt.Fprintf(stderr, "Issued a credential for worker %s; it is shown only this once. Copy it to the machine (mode 0600) and run:\n"+
			"  nixfarm worker --name %s --credential-file FILE --coordinator HOST:PORT --coordinator-host-key ...\n", name, name)
	case "revoke":
		name := positional[0]
		if err := creds.Revoke(ctx, name); err != nil {
			fmt.Fprintf(stderr, "nixfarm workers revoke: %v\n", err)
			return 1
		}
		// What it built stays with the accounts it was built for, but is
		// shared with nobody else any more.
		withdrawn, err := store.ForgetWorker(ctx, database, name)
		if err != nil {
			fmt.Fprintf(stderr, "nixfarm workers revoke: %v\n", err)
			return 1
		}
		fmt.Fprintf(stderr, "Revoked the credential of worker %s; a running farm disconnects it within seconds. %d outputs it built are no longer shared between accounts.\n", name, withdrawn)
	case "list":
		list, err := creds.List(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "nixfarm workers list: %v\n", err)
			return 1
		}
		if asJSON {
			type entry struct {
				Name     string     `json:"name"`
				Created  time.Time  `json:"created"`
				Revoked  *time.Time `json:"revoked,omitempty"`
				LastSeen *time.Time `json:"lastSeen,omitempty"`
			}
			out := []entry{}
			for _, c := range list {
				out = append(out, entry{Name: c.Name, Created: c.Created, Revoked: optTime(c.Revoked), LastSeen: optTime(c.LastSeen)})
			}
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			enc.Encode(map[string]any{"credentials": out})
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tCREATED\tREVOKED\tLAST SEEN")
		for _, c := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Name, stamp(c.Created), stamp(c.Revoked), stamp(c.LastSeen))
		}
		tw.Flush()
	}
	return 0
}

func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.DateTime)
}
