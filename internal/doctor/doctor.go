// Package doctor checks whether a Nix client can build through a nixfarm
// farm, in the order a build meets each step: Nix and its daemon, the
// daemon's settings, trust, the build user's SSH key, the farm's address
// and host key, the login, what the farm offers, and finally real test
// builds. Every failed check says what is wrong, why it stops remote
// builds, and the exact command or edit that fixes it.
//
// The checks that matter most run as the user Nix runs ssh as: root when
// nix-daemon builds, which is the mistake most guides leave out. Run as
// root, doctor checks root's files itself and runs the test builds as the
// user who builds (--user, or the one sudo came from).
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nixfarm/nixfarm/internal/clientconfig"
)

// Status is a check's outcome.
type Status string

const (
	OK   Status = "ok"
	Warn Status = "warn" // works, but something will bite later
	Fail Status = "fail" // remote builds will not work until it is fixed
	Skip Status = "skip" // could not be checked here; Detail says why
)

// Check is one diagnosis.
type Check struct {
	ID    string `json:"id"`
	Title string `json:"title"`
	// AsUser ran the check; ForUser is the user whose settings and files
	// it looked at (root for nix-daemon's builds).
	AsUser  string `json:"asUser"`
	ForUser string `json:"forUser"`
	Status  Status `json:"status"`
	// Detail is what was found.
	Detail string `json:"detail,omitempty"`
	// Problem, Why and Fix explain a Warn or Fail.
	Problem string `json:"problem,omitempty"`
	Why     string `json:"why,omitempty"`
	Fix     string `json:"fix,omitempty"`
	// Millis is how long it took, for timed checks.
	Millis int64 `json:"millis,omitempty"`
}

// Report is every check, in order, and whether remote builds will work.
type Report struct {
	Farm   string  `json:"farm,omitempty"`
	Checks []Check `json:"checks"`
	// OK: no check failed.
	OK bool `json:"ok"`
}

// Options say what to check.
type Options struct {
	// Farm is HOST[:PORT]; empty: the first ssh or ssh-ng builder.
	Farm string
	// User is who builds; empty: the user running doctor, or SUDO_USER
	// when that is root.
	User string
	// Builders is what the user passes to Nix as --builders, if anything.
	Builders string
	// Drv is a derivation to ask about: would the farm take it?
	Drv string
	// NoBuild skips the test builds.
	NoBuild bool
	// Timeout bounds each network step and test build.
	Timeout time.Duration
	// Now is the clock (time.Now if nil).
	Now func() time.Time
}

// Write prints the report for people.
func (r *Report) Write(w io.Writer) {
	if r.Farm != "" {
		fmt.Fprintf(w, "nixfarm doctor: remote builds through %s\n\n", r.Farm)
	}
	marks := map[Status]string{OK: "ok  ", Warn: "WARN", Fail: "FAIL", Skip: "skip"}
	for i, c := range r.Checks {
		who := "as " + c.AsUser
		if c.ForUser != "" && c.ForUser != c.AsUser {
			who += ", for " + c.ForUser
		}
		timing := ""
		if c.Millis > 0 {
			timing = fmt.Sprintf(" (%d ms)", c.Millis)
		}
		fmt.Fprintf(w, "[%s] %d. %s%s  [%s]\n", marks[c.Status], i+1, clientconfig.Printable(c.Title), timing, who)
		indent := func(label, text string) {
			if text == "" {
				return
			}
			lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
			fmt.Fprintf(w, "       %s%s\n", label, lines[0])
			pad := strings.Repeat(" ", len(label))
			for _, l := range lines[1:] {
				fmt.Fprintf(w, "       %s%s\n", pad, l)
			}
		}
		// Much of it comes from the farm or from Nix: no escape
		// sequence reaches the terminal.
		indent("", clientconfig.Printable(c.Detail))
		indent("what: ", clientconfig.Printable(c.Problem))
		indent("why:  ", clientconfig.Printable(c.Why))
		indent("fix:  ", clientconfig.Printable(c.Fix))
	}
	fails, warns := 0, 0
	for _, c := range r.Checks {
		switch c.Status {
		case Fail:
			fails++
		case Warn:
			warns++
		}
	}
	fmt.Fprintln(w)
	switch {
	case fails > 0:
		fmt.Fprintf(w, "Remote builds will not work: %d check(s) failed, %d warning(s). Fix the first failure first: later checks often follow from it.\n", fails, warns)
	case warns > 0:
		fmt.Fprintf(w, "Remote builds work, with %d warning(s).\n", warns)
	default:
		fmt.Fprintln(w, "Remote builds work.")
	}
}

// WriteJSON prints the report for scripts.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// Run runs every check against the machine it runs on.
func Run(ctx context.Context, opts Options) *Report {
	d, err := newDoctor(opts)
	if err != nil {
		return &Report{Checks: []Check{{ID: "user", Title: "The user who builds", Status: Fail,
			Problem: err.Error(), Why: "doctor checks the settings and files of the user who builds",
			Fix: "pass an existing user: nixfarm doctor --user NAME"}}}
	}
	return d.checkAll(ctx)
}

// add records a check and reports whether it passed well enough for the
// checks that depend on it.
func (d *doctor) add(c Check) bool {
	if c.AsUser == "" {
		c.AsUser = d.self.Name
	}
	d.report.Checks = append(d.report.Checks, c)
	return c.Status != Fail
}

func (d *doctor) checkAll(ctx context.Context) *Report {
	d.report = &Report{}
	if !d.checkNix(ctx) {
		return d.finish()
	}
	settingsOK := d.checkDaemonSettings(ctx)
	d.checkTrust(ctx)
	if d.target == nil {
		if settingsOK {
			d.add(Check{ID: "farm", Title: "Which farm", Status: Fail,
				Problem: "no --farm was given and no ssh:// or ssh-ng:// builder is configured",
				Why:     "doctor needs to know which farm to check",
				Fix:     "nixfarm doctor --farm HOST[:PORT], or set up the builder: nixfarm client-config --farm HOST[:PORT] --apply"})
		}
		return d.finish()
	}
	d.report.Farm = d.target.describe()
	keyOK := d.checkKey(ctx)
	reached := d.checkReach(ctx)
	if reached && !d.target.unsure {
		d.checkHostKey(ctx)
		if keyOK && d.checkConnect(ctx) {
			d.checkOffer(ctx)
		}
	}
	if d.opts.Drv != "" {
		d.checkDrv(ctx)
	}
	switch {
	case d.opts.NoBuild:
	case !reached:
		// A build would only wait on the same address.
		d.add(Check{ID: "build-remote", Title: "Test builds", Status: Skip, ForUser: d.user.Name,
			Detail: "not tried: the farm does not answer (see above)"})
	default:
		d.checkRemoteBuild(ctx)
		d.checkStoreBuild(ctx)
	}
	return d.finish()
}

func (d *doctor) finish() *Report {
	d.report.OK = true
	for _, c := range d.report.Checks {
		if c.Status == Fail {
			d.report.OK = false
		}
	}
	return d.report
}
