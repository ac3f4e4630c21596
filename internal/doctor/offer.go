package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/nixfarm/nixfarm/internal/clientconfig"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/worker"
)

type workerInfo = scheduler.WorkerInfo

// checkOffer: 6. the farm's workers offer what the builders line says.
func (d *doctor) checkOffer(ctx context.Context) bool {
	c := Check{ID: "offer", Title: "The farm offers what the builders line promises", AsUser: d.builder.Name, ForUser: d.builder.Name}
	out, stderr, err := d.sshFarm(ctx, d.builder, "nixfarm", "workers", "--json")
	var list struct {
		Workers []workerInfo `json:"workers"`
	}
	if err == nil {
		err = json.Unmarshal([]byte(out), &list)
	}
	if err != nil {
		c.Status = Warn
		c.Problem = fmt.Sprintf("the farm did not list its workers: %v %s", err, lastLines(stderr, 2))
		c.Why = "doctor cannot compare the builders line with the farm's workers"
		c.Fix = "upgrade the farm (nixfarm workers over SSH came with nixfarm doctor)"
		return d.add(c)
	}
	d.workers = list.Workers
	p := clientconfig.PoolOf(list.Workers)
	d.pool = &p
	c.Detail = fmt.Sprintf("%s: systems %s; features %s; %d of %d slots free", plural(p.Workers, "worker"), orNone(strings.Join(p.Systems, ",")),
		orNone(strings.Join(p.Features, ",")), p.Free, p.Slots)
	if p.Workers == 0 {
		c.Status = Fail
		c.Problem = "the farm has no worker that takes builds"
		c.Why = "every build sent to it waits, then fails with \"nixfarm has no worker that can build\""
		c.Fix = "ask the farm's operator to start a worker (nixfarm serve's built-in one, or nixfarm worker on another machine)"
		return d.add(c)
	}
	if local := d.daemonCfg.str("system"); local != "" && !slices.Contains(p.Systems, local) {
		c.Detail += fmt.Sprintf("\nthe farm builds none of this machine's own system (%s): only builds for its systems go there", local)
	}
	entries := d.farmEntries()
	if len(entries) == 0 {
		c.Status = OK
		return d.add(c)
	}
	problems, missing := compareOffer(entries, list.Workers)
	for _, m := range entries {
		feats := append(append([]string{}, m.SupportedFeatures...), m.MandatoryFeatures...)
		c.Detail += fmt.Sprintf("\nthe builders line offers %s, features %s, %d jobs at once",
			strings.Join(m.Systems, ","), orNone(strings.Join(feats, ",")), m.MaxJobs)
	}
	if len(problems) > 0 {
		c.Status = Fail
		c.Problem = fmt.Sprintf("the builders line offers %s, which no farm worker has; the farm's workers:\n%s", strings.Join(problems, "; "), describeWorkers(list.Workers))
		c.Why = "Nix sends such builds to the farm, which fails them with \"nixfarm has no worker that can build\" instead of building them elsewhere"
		c.Fix = fmt.Sprintf("list only what the farm's workers offer, one builders entry per kind of worker: %s", d.clientConfigFix())
		return d.add(c)
	}
	c.Status = OK
	if len(missing) > 0 {
		c.Status = Warn
		c.Problem = fmt.Sprintf("the builders line does not offer all that these workers have: %s", strings.Join(missing, "; "))
		c.Why = "Nix builds such derivations locally, or fails, rather than sending them to the farm"
		c.Fix = d.clientConfigFix()
	}
	return d.add(c)
}

// compareOffer compares the builders entries for the farm with its
// workers. problems are what an entry promises that no worker has: each
// entry promises Nix every one of its systems with all of its features.
// missing are workers no entry covers, offered to Nix in vain.
func compareOffer(entries []worker.Machine, workers []workerInfo) (problems, missing []string) {
	var live []workerInfo
	for _, w := range workers {
		if w.State != "quarantined" {
			live = append(live, w)
		}
	}
	for _, m := range entries {
		feats := append(append([]string{}, m.SupportedFeatures...), m.MandatoryFeatures...)
		for _, sys := range m.Systems {
			if !slices.ContainsFunc(live, func(w workerInfo) bool { return offers(w, sys, feats) }) {
				problems = append(problems, fmt.Sprintf("%s with features {%s}", sys, strings.Join(feats, ", ")))
			}
		}
	}
	for _, w := range live {
		caps := w.Capabilities
		feats := append(append([]string{}, caps.SupportedFeatures...), caps.MandatoryFeatures...)
		covered := slices.ContainsFunc(entries, func(m worker.Machine) bool {
			mf := append(append([]string{}, m.SupportedFeatures...), m.MandatoryFeatures...)
			return subset(caps.Systems, m.Systems) && subset(feats, mf)
		})
		if !covered {
			missing = append(missing, fmt.Sprintf("%s (%s)", w.Name, caps))
		}
	}
	return problems, missing
}

// offers reports whether worker w builds system with all of features.
func offers(w workerInfo, system string, features []string) bool {
	caps := w.Capabilities
	all := append(append([]string{}, caps.SupportedFeatures...), caps.MandatoryFeatures...)
	return slices.Contains(caps.Systems, system) && subset(features, all)
}

func subset(xs, of []string) bool {
	for _, x := range xs {
		if !slices.Contains(of, x) {
			return false
		}
	}
	return true
}

// farmEntries are the builders entries that lead to the farm: the
// target's, and any other with the same host.
func (d *doctor) farmEntries() []worker.Machine {
	if d.target == nil || d.target.machine == nil {
		return nil
	}
	var out []worker.Machine
	for _, m := range d.machines {
		if m.Host == d.target.machine.Host {
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		out = append(out, *d.target.machine)
	}
	return out
}

func describeWorkers(ws []workerInfo) string {
	var lines []string
	for _, w := range ws {
		feats := append(append([]string{}, w.Capabilities.SupportedFeatures...), w.Capabilities.MandatoryFeatures...)
		lines = append(lines, fmt.Sprintf("  %s: %s, features %s (%s)", w.Name, strings.Join(w.Capabilities.Systems, ","), orNone(strings.Join(feats, ",")), w.State))
	}
	return strings.Join(lines, "\n")
}

// takes reports whether a machine with these capabilities builds a
// derivation for system with features, as Nix and the scheduler decide.
func takes(systems, supported, mandatory []string, system string, features []string) bool {
	if !slices.Contains(systems, system) {
		return false
	}
	for _, f := range features {
		if !slices.Contains(supported, f) && !slices.Contains(mandatory, f) {
			return false
		}
	}
	for _, f := range mandatory {
		if !slices.Contains(features, f) {
			return false
		}
	}
	return true
}

// checkDrv: 6b. would the farm accept this derivation, and which workers
// could run it; would Nix send it there.
func (d *doctor) checkDrv(ctx context.Context) {
	c := Check{ID: "drv", Title: "The farm would build " + d.opts.Drv, ForUser: d.builder.Name}
	data, err := os.ReadFile(d.opts.Drv)
	var drv *derivation.Derivation
	if err == nil {
		drv, err = derivation.Parse(data)
	}
	if err != nil {
		c.Status, c.Problem = Fail, fmt.Sprintf("cannot read the derivation: %v", err)
		c.Why = "doctor needs the .drv file to check it"
		c.Fix = "pass a .drv path from nix-instantiate (nixfarm doctor --drv $(nix-instantiate FILE))"
		d.add(c)
		return
	}
	system := drv.Platform
	features := strings.Fields(drv.Env["requiredSystemFeatures"])
	wants := fmt.Sprintf("a %s machine with features {%s}", system, strings.Join(features, ", "))
	var problems, whys, fixes []string
	if d.workers != nil {
		var can []string
		for _, w := range d.workers {
			caps := w.Capabilities
			if w.State != "quarantined" && takes(caps.Systems, caps.SupportedFeatures, caps.MandatoryFeatures, system, features) {
				can = append(can, w.Name)
			}
		}
		if len(can) == 0 {
			problems = append(problems, fmt.Sprintf("no farm worker can build it: it needs %s; the farm's workers:\n%s", wants, describeWorkers(d.workers)))
			whys = append(whys, "the farm would refuse it: \"nixfarm has no worker that can build\"")
			fixes = append(fixes, fmt.Sprintf("build it on a machine that is %s, or ask the farm's operator for such a worker", wants))
		} else {
			c.Detail = fmt.Sprintf("the farm takes it: %s can run it (%s)", strings.Join(can, ", "), wants)
		}
	}
	if entries := d.farmEntries(); len(entries) > 0 && !slices.ContainsFunc(entries, func(m worker.Machine) bool {
		return takes(m.Systems, m.SupportedFeatures, m.MandatoryFeatures, system, features)
	}) {
		m := entries[0]
		problems = append(problems, fmt.Sprintf("the builders line (systems %s, features %s, mandatory %s) does not match it: Nix will not send it to the farm",
			strings.Join(m.Systems, ","), orNone(strings.Join(m.SupportedFeatures, ",")), orNone(strings.Join(m.MandatoryFeatures, ","))))
		whys = append(whys, "Nix builds it locally or fails with \"unable to start any build\"")
		fixes = append(fixes, "if the farm offers it, add the system and features to the builders line: "+d.clientConfigFix())
	}
	local := d.daemonCfg.str("system")
	localOK := system == local || slices.Contains(d.daemonCfg.list("extra-platforms"), system) || system == "builtin"
	for _, f := range features {
		if !slices.Contains(d.daemonCfg.list("system-features"), f) {
			localOK = false
		}
	}
	if jobs, _ := strconv.Atoi(d.daemonCfg.str("max-jobs")); !localOK && jobs > 0 {
		problems = append(problems, fmt.Sprintf("max-jobs is %d, but this machine (%s, features {%s}) cannot build it", jobs, local, strings.Join(d.daemonCfg.list("system-features"), ", ")))
		whys = append(whys, fmt.Sprintf("with local jobs allowed, Nix may start it here when the farm is busy, unreachable or not matched, and then fails with \"a '%s' with features {%s} is required to build '%s', but I am a '%s'\" instead of waiting for the farm; on macOS Nix does so even when the builder is fine (NixOS/nix#10451)",
			system, strings.Join(features, ", "), d.opts.Drv, local))
		fixes = append(fixes, "build it with --max-jobs 0 (nix-build --max-jobs 0 ...), or set max-jobs = 0 in nix.conf"+d.restartHint()+" if this machine should build nothing itself")
	}
	if len(problems) > 0 {
		c.Status = Fail
		c.Problem = strings.Join(problems, "\n")
		c.Why = strings.Join(whys, "\n")
		c.Fix = strings.Join(fixes, "\n")
	} else {
		c.Status = OK
		if c.Detail == "" {
			c.Detail = "the builders line matches it (" + wants + ")"
		}
	}
	d.add(c)
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
