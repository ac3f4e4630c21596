package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// QueueView is the farm's queued and running builds as one viewer sees
// them (`nixfarm queue`): an account sees its own builds and only counts
// of the others'; the operator every build.
type QueueView struct {
	// Account is whose builds Builds lists; "" for every account's.
	Account string `json:"account,omitempty"`
	// Builds lists the viewer's running builds, then their queued ones
	// by class and position.
	Builds []ViewedBuild `json:"builds"`
	// Running and Queued count every account's builds.
	Running int `json:"running"`
	Queued  int `json:"queued"`
	// OthersRunning and OthersQueued count the builds of accounts other
	// than Account (0 for the operator's view).
	OthersRunning int `json:"othersRunning"`
	OthersQueued  int `json:"othersQueued"`
}

// ViewedBuild is one build in a QueueView.
type ViewedBuild struct {
	State   string         `json:"state"` // queued or running
	DrvPath storepath.Path `json:"drvPath"`
	Account string         `json:"account"`
	// Class is a queued build's system and required features.
	Class string `json:"class,omitempty"`
	// Position is a queued build's place in its class's line of
	// InClass builds (0 for a running build).
	Position int    `json:"position,omitempty"`
	InClass  int    `json:"inClass,omitempty"`
	Reason   string `json:"reason,omitempty"`
	// EstimatedStartSeconds is null when unknown (and for running builds).
	EstimatedStartSeconds *float64 `json:"estimatedStartSeconds,omitempty"`
	WaitedSeconds         float64  `json:"waitedSeconds,omitempty"`
	// Worker runs a running build.
	Worker  string `json:"worker,omitempty"`
	Attempt int    `json:"attempt,omitempty"`
}

// NewQueueView makes account's view ("" for the operator's) of a queue
// listing and the workers' running builds, both with every derivation
// and account in them (Queue and Workers). Another account's builds are
// only counted: neither their derivations nor their accounts reach the
// view.
func NewQueueView(classes []ClassQueue, workers []WorkerInfo, account string) QueueView {
	v := QueueView{Account: account, Builds: []ViewedBuild{}}
	mine := func(a string) bool { return account == "" || a == account }
	for _, w := range workers {
		for _, r := range w.Running {
			v.Running++
			if !mine(r.Account) {
				v.OthersRunning++
				continue
			}
			v.Builds = append(v.Builds, ViewedBuild{State: "running", DrvPath: r.DrvPath, Account: r.Account,
				Reason: "building on worker " + w.Name, Worker: w.Name, Attempt: r.Attempt})
		}
	}
	for _, c := range classes {
		for _, b := range c.Builds {
			v.Queued++
			if !mine(b.Account) {
				v.OthersQueued++
				continue
			}
			v.Builds = append(v.Builds, ViewedBuild{State: "queued", DrvPath: b.DrvPath, Account: b.Account, Class: c.Class,
				Position: b.Position, InClass: len(c.Builds), Reason: b.Reason, EstimatedStartSeconds: b.EstimatedStartSeconds,
				WaitedSeconds: b.WaitedSeconds, Attempt: b.Attempts})
		}
	}
	return v
}

// Key is what of v a watcher reports a change of: each build's state,
// position and reason, and the counts; not the clock's progress
// (waiting times, estimates).
func (v QueueView) Key() string {
	k := v
	k.Builds = make([]ViewedBuild, len(v.Builds))
	for i, b := range v.Builds {
		b.EstimatedStartSeconds, b.WaitedSeconds = nil, 0
		// Countdowns in reasons tick with the clock too.
		b.Reason, _, _ = strings.Cut(b.Reason, "; waiting ")
		if r, ok := strings.CutPrefix(b.Reason, "retrying after a failed attempt in "); ok && r != "" {
			b.Reason = "retrying after a failed attempt"
		}
		k.Builds[i] = b
	}
	out, _ := json.Marshal(k)
	return string(out)
}

// WriteText writes v as a table for people.
func (v QueueView) WriteText(w io.Writer) error {
	whose := "every account's builds"
	if v.Account != "" {
		whose = "account " + v.Account + "'s builds"
	}
	running, queued := v.Running-v.OthersRunning, v.Queued-v.OthersQueued
	if len(v.Builds) == 0 {
		if v.Account != "" {
			fmt.Fprintf(w, "No builds of account %s are queued or running.\n", v.Account)
		} else {
			fmt.Fprintln(w, "No builds are queued or running.")
		}
	} else {
		fmt.Fprintf(w, "%s: %d running, %d queued\n", upperFirst(whose), running, queued)
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		head := "STATE\tPOSITION\t"
		if v.Account == "" {
			head += "ACCOUNT\t"
		}
		fmt.Fprintln(tw, head+"DERIVATION\tREASON\tSTART IN\tWAITED")
		for _, b := range v.Builds {
			pos, start, waited := "-", "-", "-"
			if b.State == "queued" {
				pos = fmt.Sprintf("%d of %d", b.Position, b.InClass)
				start = "unknown"
				if b.EstimatedStartSeconds != nil {
					start = "~" + build.Seconds(time.Duration(*b.EstimatedStartSeconds*float64(time.Second)))
				}
				waited = build.Seconds(time.Duration(b.WaitedSeconds * float64(time.Second)))
			}
			row := b.State + "\t" + pos + "\t"
			if v.Account == "" {
				row += b.Account + "\t"
			}
			fmt.Fprintf(tw, "%s%s\t%s\t%s\t%s\n", row, drvName(b.DrvPath), printable(b.Reason), start, waited)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if v.Account != "" {
		fmt.Fprintf(w, "Other accounts: %d running, %d queued.\n", v.OthersRunning, v.OthersQueued)
	} else if len(v.Builds) == 0 {
		fmt.Fprintf(w, "The farm: %d running, %d queued.\n", v.Running, v.Queued)
	}
	return nil
}

// drvName is a derivation's name without its store directory and hash,
// or the path as it is if it is not a store path.
func drvName(p storepath.Path) string {
	if _, err := storepath.Parse(string(p)); err != nil {
		return string(p)
	}
	return p.Name()
}

// printable is s with what is not printable (terminal escapes, tabs,
// line ends) as '?': reasons name classes, whose system and features
// are the client's to choose.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, s)
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// WatchEvery is how often a watched queue is looked at again.
const WatchEvery = 2 * time.Second

// Watch writes the view fetch returns every `every` until ctx ends or
// the view lists no builds (the viewer's builds are all done). On a
// terminal it clears the screen and redraws; elsewhere it writes a view
// only when it changed (Key), after a line with the time, or, as JSON, a
// line of JSON.
func Watch(ctx context.Context, w io.Writer, fetch func(context.Context) (QueueView, error), every time.Duration, terminal, asJSON bool) error {
	t := time.NewTicker(every)
	defer t.Stop()
	last := ""
	for {
		v, err := fetch(ctx)
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		switch key := v.Key(); {
		case asJSON:
			if key != last {
				json.NewEncoder(&buf).Encode(v)
			}
			last = key
		case terminal:
			buf.WriteString("\x1b[H\x1b[2J")
			fmt.Fprintf(&buf, "%s, every %s (Ctrl-C to stop)\n\n", time.Now().Format("15:04:05"), build.Seconds(every))
			v.WriteText(&buf)
		case key != last:
			fmt.Fprintf(&buf, "--- %s\n", time.Now().Format("15:04:05"))
			v.WriteText(&buf)
			last = key
		}
		if _, err := w.Write(buf.Bytes()); err != nil {
			return err
		}
		if len(v.Builds) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
