package scheduler

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteWorkers prints a worker listing as a table for people: what
// `nixfarm workers` shows, on the coordinator's host or over SSH.
func WriteWorkers(w io.Writer, workers []WorkerInfo, queued int, now time.Time) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tSTATE\tSYSTEMS\tFEATURES\tMANDATORY\tRUNNING\tBUILT\tLAST HEARTBEAT")
	for _, wk := range workers {
		running := fmt.Sprintf("%d/%d", len(wk.Running), wk.Capabilities.MaxJobs)
		heartbeat := "-"
		if wk.Kind == "agent" {
			heartbeat = now.Sub(wk.LastHeartbeat).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", wk.Name, wk.Kind, wk.State,
			dash(wk.Capabilities.Systems), dash(wk.Capabilities.SupportedFeatures), dash(wk.Capabilities.MandatoryFeatures),
			running, wk.Built, heartbeat)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d workers, %d builds queued\n", len(workers), queued)
}

func dash(ss []string) string {
	if len(ss) == 0 {
		return "-"
	}
	return strings.Join(ss, ",")
}

// Anonymous strips the derivations and accounts from a worker listing:
// what anyone may see of what the workers run.
func Anonymous(workers []WorkerInfo) []WorkerInfo {
	out := make([]WorkerInfo, len(workers))
	for i, w := range workers {
		running := make([]RunningBuild, len(w.Running))
		for j, b := range w.Running {
			running[j] = RunningBuild{Attempt: b.Attempt}
		}
		w.Running = running
		out[i] = w
	}
	return out
}
