package records

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

// WriteTable writes records as a table for people: id, status, account,
// system, derivation name, worker, time queued and building, the
// builder's CPU time and peak memory ("-" when unknown), and the outputs'
// size. now times the builds still under way.
func WriteTable(w io.Writer, recs []Record, now time.Time) error {
	if len(recs) == 0 {
		_, err := fmt.Fprintln(w, "no builds")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tACCOUNT\tSYSTEM\tDERIVATION\tWORKER\tQUEUED AT\tWAITED\tBUILT IN\tCPU\tMEMORY\tOUTPUTS")
	for i := range recs {
		r := &recs[i]
		worker := r.Worker
		if worker == "" {
			worker = "-"
		}
		if r.Attempts > 1 {
			worker = fmt.Sprintf("%s (%d attempts)", worker, r.Attempts)
		}
		mem := "-"
		if r.PeakMemory > 0 {
			mem = byteSize(uint64(r.PeakMemory))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Status, r.Account, printable(r.System), r.DrvName(), worker,
			r.QueuedAt.Local().Format("2006-01-02 15:04:05"), duration(r.QueueTime(now)), duration(r.BuildTime(now)),
			duration(time.Duration(r.CPUSeconds*float64(time.Second))), mem, size(r))
	}
	return tw.Flush()
}

// printable is s with what is not printable (terminal escapes, tabs,
// line ends) as '?': a derivation's system is the client's to choose.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, s)
}

func duration(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func size(r *Record) string {
	if len(r.Outputs) == 0 || r.OutputBytes() == 0 {
		return "-"
	}
	return byteSize(r.OutputBytes())
}

func byteSize(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
