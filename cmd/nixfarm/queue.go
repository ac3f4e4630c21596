package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nixfarm/nixfarm/internal/scheduler"
)

const queueHelp = `Usage: nixfarm queue [--json] [--watch] [--url URL] [--state-dir DIR]

Lists every account's running and queued builds on a running farm: each
queued build's position in the line of its class (system and required
features), why it waits and when it may start. It asks the farm's HTTP API
(serve --http-listen) with the farm's own token, STATE-DIR/api-token, so it
runs where that file can be read. A user sees their own builds with:
ssh FARM nixfarm queue [--watch]

--watch looks again every 2 s until no build is queued or running, or Ctrl-C:
on a terminal it clears the screen and redraws, elsewhere it prints the list
each time it changes (--json: a line of JSON for each change).

Flags:
`

// queueCmd is `nixfarm queue`: the operator's view of the live queue.
func queueCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nixfarm queue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://127.0.0.1:2280", "the coordinator's HTTP API (its --http-listen)")
	stateDir := fs.String("state-dir", defaultStateDir(), "the farm's state directory, for its api-token")
	asJSON := fs.Bool("json", false, "print JSON")
	watch := fs.Bool("watch", false, "look again every 2 s until no build is queued or running")
	fs.Usage = func() { fmt.Fprint(stderr, queueHelp); fs.PrintDefaults() }
	if code, ok := parseFlags(fs, args, stderr); !ok {
		return code
	}
	tokenFile := filepath.Join(*stateDir, "api-token")
	raw, err := os.ReadFile(tokenFile)
	token := strings.TrimSpace(string(raw))
	if err != nil || token == "" {
		fmt.Fprintf(stderr, "nixfarm queue: cannot read the farm's API token %s: %v\n(run it as the farm's user or give --state-dir; a user sees their own builds with ssh FARM nixfarm queue)\n", tokenFile, err)
		return 1
	}
	api := &queueAPI{url: strings.TrimSuffix(*url, "/"), token: token, client: &http.Client{Timeout: 10 * time.Second}}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *watch {
		err = scheduler.Watch(ctx, stdout, api.view, scheduler.WatchEvery, isTerminal(stdout), *asJSON)
	} else {
		var v scheduler.QueueView
		if v, err = api.view(ctx); err == nil {
			if *asJSON {
				err = writeJSON(stdout, v)
			} else {
				err = v.WriteText(stdout)
			}
		}
	}
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(stderr, "nixfarm queue: %v\n", err)
		return 1
	}
	return 0
}

// queueAPI reads the queue and the running builds from a farm's API.
type queueAPI struct {
	url, token string
	client     *http.Client
}

func (a *queueAPI) view(ctx context.Context) (scheduler.QueueView, error) {
	var q struct {
		Classes []scheduler.ClassQueue `json:"classes"`
	}
	var w struct {
		Workers []scheduler.WorkerInfo `json:"workers"`
	}
	if err := a.get(ctx, "/api/v1/queue", &q); err != nil {
		return scheduler.QueueView{}, err
	}
	if err := a.get(ctx, "/api/v1/workers", &w); err != nil {
		return scheduler.QueueView{}, err
	}
	return scheduler.NewQueueView(q.Classes, w.Workers, ""), nil
}

func (a *queueAPI) get(ctx context.Context, path string, into any) error {
	req, err := http.NewRequestWithContext(ctx, "GET", a.url+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("%w\n(is `nixfarm serve` running with --http-listen at %s?)", err, a.url)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s%s answered %s: %s", a.url, path, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(into); err != nil {
		return fmt.Errorf("%s%s: %w", a.url, path, err)
	}
	return nil
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
