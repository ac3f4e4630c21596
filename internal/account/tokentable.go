package account

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// WriteAPITokenTable writes tokens as a table for a terminal, never
// their secrets (the farm has none to show): the operator's
// `nixfarm tokens list` with an ACCOUNT column, a user's over SSH without.
func WriteAPITokenTable(w io.Writer, list []APIToken, now time.Time, withAccount bool) error {
	when := func(t *time.Time, none string) string {
		if t == nil {
			return none
		}
		return t.UTC().Format("2006-01-02 15:04")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if withAccount {
		fmt.Fprint(tw, "ID\tACCOUNT\t")
	} else {
		fmt.Fprint(tw, "ID\t")
	}
	fmt.Fprintln(tw, "SCOPE\tNAME\tSTATE\tCREATED\tEXPIRES\tLAST USED")
	for _, t := range list {
		label := t.Name
		if label == "" {
			label = "-"
		}
		if withAccount {
			fmt.Fprintf(tw, "%d\t%s\t", t.ID, t.Account)
		} else {
			fmt.Fprintf(tw, "%d\t", t.ID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.Scope, label, t.State(now),
			when(&t.Created, ""), when(t.Expires, "never"), when(t.LastUsed, "never"))
	}
	return tw.Flush()
}
