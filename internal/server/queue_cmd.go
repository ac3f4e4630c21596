package server

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/sshd"
)

// `ssh farm nixfarm queue [--json] [--watch]`: the session's account's
// queued and running builds, each queued one with its position, the
// reason it waits and its estimated start, and only counts of other
// accounts' builds.

const sshQueueUsage = `Usage: nixfarm queue [--json] [--watch]

Lists your account's running and queued builds: each queued build's position
in the line of its class (system and required features), why it waits and
when it may start; other accounts' builds only as counts.

--watch looks again every 2 s until your builds are all done or you stop it
(Ctrl-C): it prints the list each time it changes, under the time. The farm
cannot tell whether ssh writes to a terminal; send it TERM
(ssh -o SetEnv=TERM=$TERM ...) to have the screen cleared and redrawn instead.
With --json, --watch prints a line of JSON for each change.

Flags:
`

// accountQueue is the session's account's view of the queue.
func (h *execHandler) accountQueue(account string) scheduler.QueueView {
	list := h.sched.Queue
	if h.queueList != nil {
		list = h.queueList.get
	}
	return scheduler.NewQueueView(list(), h.sched.Workers(), account)
}

func (h *execHandler) queue(ctx context.Context, s *sshd.Session, args []string) error {
	if h.sched == nil {
		return errors.New("this farm has no scheduler")
	}
	fs := flag.NewFlagSet("nixfarm queue", flag.ContinueOnError)
	fs.SetOutput(s.Stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	watch := fs.Bool("watch", false, "look again every 2 s until your builds are done")
	fs.Usage = func() { fmt.Fprint(s.Stderr, sshQueueUsage); fs.PrintDefaults() }
	if done, err := parseSSHFlags(fs, args); done {
		return err
	}
	fetch := func(context.Context) (scheduler.QueueView, error) { return h.accountQueue(s.Account), nil }
	if *watch {
		err := scheduler.Watch(ctx, s.Stdout, fetch, h.watchEvery(), s.Env["TERM"] != "" && s.Env["TERM"] != "dumb", *asJSON)
		if ctx.Err() != nil {
			return nil // the session closed: nobody to tell
		}
		return err
	}
	v := h.accountQueue(s.Account)
	if *asJSON {
		enc := json.NewEncoder(s.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	return v.WriteText(s.Stdout)
}

// watchEvery is how often --watch looks again.
func (h *execHandler) watchEvery() time.Duration {
	if h.watchInterval > 0 {
		return h.watchInterval
	}
	return scheduler.WatchEvery
}
