// Package bench compares nixfarm with stock Nix remote builds on one
// machine: it sets up every side on loopback (an OpenSSH sshd serving a
// chroot store, the same with a ControlMaster-tuned client, the client
// building by itself, and `nixfarm serve`), runs each scenario against
// each side with the same stock nix-build, and reports medians and ratios.
// S8 and S9 compare the farm as a binary cache, and as a builder that
// substitutes from one, with Debian's nginx serving the same paths.
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"
)

// Side names.
const (
	Stock      = "stock"
	StockTuned = "stock-tuned"
	Local      = "local"
	Nixfarm    = "nixfarm"
	// Nginx is not a side one picks: it is S8's and S9's static binary
	// cache, Debian's nginx serving a `nix copy --to file://` directory.
	Nginx = "nginx"
)

// AllSides and AllScenarios are the defaults.
var (
	AllSides     = []string{Stock, StockTuned, Local, Nixfarm}
	AllScenarios = []string{"S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9"}
)

// Config configures a benchmark run.
type Config struct {
	// Nixfarm is the nixfarm binary to benchmark.
	Nixfarm   string
	WorkDir   string
	Sides     []string
	Scenarios []string
	// Runs is how many times each scenario runs per side (S1 is ten
	// builds each run); the median is reported.
	Runs int
	// S4MiB is the size of S4's input and output.
	S4MiB int
	// S6Queued is how many builds S6 queues for its memory figure.
	S6Queued int
	// S8Paths small paths (a few KiB each) and one of S8LargeMiB are
	// what S8's caches serve; wrk runs S8Seconds per measurement.
	S8Paths, S8LargeMiB, S8Seconds int
	// S9Paths paths of S9MiB in all are the closure S9 substitutes.
	S9Paths, S9MiB int
	// Progress receives a line per measurement.
	Progress io.Writer
	// FarmLogLevel is nixfarm serve's --log-level (warn).
	FarmLogLevel string
	// FarmCPUProfile, if set, is where nixfarm serve writes a CPU profile.
	FarmCPUProfile string
	// FarmArgs are more arguments for nixfarm serve, to measure a
	// setting's effect (e.g. --sync-delay 0).
	FarmArgs []string
}

// Result is one scenario's medians across the sides.
type Result struct {
	Scenario string
	Protocol string
	Unit     string // "s", "MB/s", "dispatches/s", "MiB"
	// HigherIsBetter is true for throughputs.
	HigherIsBetter bool
	Values         map[string]float64
	// Target describes the goal; Met tells whether the run met it.
	Target string
	Met    *bool
	Note   string
	// Baseline is the side the first ratio column divides by: Stock
	// unless set (S8's is Nginx).
	Baseline string
}

// Report is a whole run.
type Report struct {
	Started  time.Time
	Duration time.Duration
	Machine  string
	Nix      string
	Command  string
	Runs     int
	Results  []Result
}

// Run sets up the sides and runs the scenarios.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Runs < 1 {
		cfg.Runs = 3
	}
	if cfg.S4MiB == 0 {
		cfg.S4MiB = 256
	}
	if cfg.S6Queued == 0 {
		cfg.S6Queued = 100_000
	}
	if cfg.S8Paths == 0 {
		cfg.S8Paths = 1000
	}
	if cfg.S8LargeMiB == 0 {
		cfg.S8LargeMiB = 256
	}
	if cfg.S8Seconds == 0 {
		cfg.S8Seconds = 10
	}
	if cfg.S9Paths == 0 {
		cfg.S9Paths = 300
	}
	if cfg.S9MiB == 0 {
		cfg.S9MiB = 512
	}
	if cfg.FarmLogLevel == "" {
		cfg.FarmLogLevel = "warn"
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	if len(cfg.Sides) == 0 {
		cfg.Sides = AllSides
	}
	if len(cfg.Scenarios) == 0 {
		cfg.Scenarios = AllScenarios
	}
	rep := &Report{Started: time.Now(), Machine: machine(), Nix: nixVersion(), Command: strings.Join(os.Args, " "), Runs: cfg.Runs}
	env, err := setup(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer env.close()
	for _, sc := range cfg.Scenarios {
		run, ok := scenarios[sc]
		if !ok {
			return nil, fmt.Errorf("unknown scenario %q (have %s)", sc, strings.Join(AllScenarios, ", "))
		}
		results, err := run(env, ctx)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", sc, err)
		}
		rep.Results = append(rep.Results, results...)
	}
	rep.Duration = time.Since(rep.Started)
	return rep, nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func machine() string {
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(line, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
				break
			}
		}
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		fmt.Sscanf(strings.SplitN(string(data), "\n", 2)[0], "MemTotal: %d kB", &kb)
		mem = fmt.Sprintf(", %d GiB", (kb+512*1024)/(1024*1024))
	}
	return fmt.Sprintf("%d × %s%s, %s/%s", runtime.NumCPU(), cpu, mem, runtime.GOOS, runtime.GOARCH)
}

func nixVersion() string {
	out, err := exec.Command("nix-build", "--version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// Table renders the report as a Markdown table with ratios.
func (r *Report) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Machine: %s; %s; %d runs per scenario and side, medians; %s on %s (took %s).\n\n",
		r.Machine, r.Nix, r.Runs, r.Command, r.Started.Format("2006-01-02"), r.Duration.Round(time.Second))
	b.WriteString("| scenario | protocol | unit | stock | stock-tuned | local | nginx | nixfarm | nixfarm ÷ stock (S8: ÷ nginx) | nixfarm ÷ stock-tuned | target |\n")
	b.WriteString("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, res := range r.Results {
		cell := func(side string) string {
			v, ok := res.Values[side]
			if !ok {
				return "–"
			}
			return format(v, res.Unit)
		}
		ratio := func(side string) string {
			base, ok1 := res.Values[side]
			v, ok2 := res.Values[Nixfarm]
			if !ok1 || !ok2 || base == 0 {
				return "–"
			}
			return fmt.Sprintf("%.2f", v/base)
		}
		target := res.Target
		if res.Met != nil {
			if *res.Met {
				target += " ✅"
			} else {
				target += " ❌"
			}
		}
		if res.Note != "" {
			target += " (" + res.Note + ")"
		}
		baseline := res.Baseline
		if baseline == "" {
			baseline = Stock
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", res.Scenario, res.Protocol, res.Unit,
			cell(Stock), cell(StockTuned), cell(Local), cell(Nginx), cell(Nixfarm), ratio(baseline), ratio(StockTuned), target)
	}
	return b.String()
}

func format(v float64, unit string) string {
	switch unit {
	case "ms":
		return fmt.Sprintf("%.3f", v)
	case "s":
		if v < 1 {
			return fmt.Sprintf("%.3f", v) // S1's tens of milliseconds
		}
		return fmt.Sprintf("%.2f", v)
	default:
		if v >= 100 {
			return fmt.Sprintf("%.0f", v)
		}
		return fmt.Sprintf("%.1f", v)
	}
}
