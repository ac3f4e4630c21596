package bench

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// expressions are written to the work directory. Each takes a nonce, so
// every run's derivations are new, and busybox's store path.
var expressions = map[string]string{
	"s1.nix": `mk "s1-${nonce}" "echo ${nonce} > $out"`,
	"s2.nix": `builtins.foldl' (prev: i: mk "s2-${nonce}-${toString i}" "echo ${toString i} ${prev} > $out") "" (builtins.genList (i: i) 20)`,
	"s3.nix": `builtins.genList (i: mk "s3-${nonce}-${toString i}" "sleep 0.2; echo ${toString i} > $out") 32`,
	"s4.nix": `mk "s4-${nonce}" "cat ${builtins.storePath inputPath} > $out"`,
	"s5.nix": `builtins.genList (i: mk "s5-${nonce}-${toString i}" "echo ${toString i} > $out") 16`,
}

const prelude = `{ nonce, bbPath, inputPath ? "" }:
let
  bb = builtins.storePath bbPath;
  mk = name: script: derivation {
    inherit name;
    system = "x86_64-linux";
    builder = "${bb}/bin/sh";
    PATH = "${bb}/bin";
    args = [ "-c" script ];
  };
in `

func (e *env) exprFile(name string) (string, error) {
	p := filepath.Join(e.dir, name)
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return p, os.WriteFile(p, []byte(prelude+expressions[name]+"\n"), 0o644)
}

// build runs a stock nix-build of expr on side, over proto for remote
// sides (--max-jobs 0 and the side's builders line) or locally (-j 8),
// and returns how long it took.
func (e *env) build(ctx context.Context, s *side, proto, expr, nonce string, extra ...string) (time.Duration, error) {
	return e.buildIn(ctx, s, s.client, s.bb, proto, expr, nonce, extra...)
}

func (e *env) buildIn(ctx context.Context, s *side, client, bb, proto, expr, nonce string, extra ...string) (time.Duration, error) {
	file, err := e.exprFile(expr)
	if err != nil {
		return 0, err
	}
	args := []string{"--store", client, "--no-out-link", file, "--argstr", "nonce", nonce, "--argstr", "bbPath", bb}
	if s.name == Local {
		args = append(args, "--max-jobs", fmt.Sprint(jobs))
	} else {
		args = append(args, "--max-jobs", "0", "--builders", s.builders[proto])
	}
	args = append(args, extra...)
	// Every measurement starts with nothing dirty in the page cache, so
	// none pays for the writeback of the one before.
	syscall.Sync()
	start := time.Now()
	if _, err := e.nix(ctx, "nix-build", args...); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// scenario runs one scenario over every side and returns its results.
type scenario func(e *env, ctx context.Context) ([]Result, error)

var scenarios = map[string]scenario{
	"S1": (*env).s1,
	"S2": (*env).s2,
	"S3": (*env).s3,
	"S4": (*env).s4,
	"S5": (*env).s5,
	"S6": (*env).s6,
	"S7": (*env).s7,
	"S8": (*env).s8,
	"S9": (*env).s9,
}

func (e *env) progress(format string, args ...any) {
	fmt.Fprintf(e.cfg.Progress, format+"\n", args...)
}

// timeBuilds measures n builds of expr per run on every side for each
// protocol, returning the median per side and protocol. Runs take the
// sides in turn, so that slow drifts of the machine (page cache,
// writeback) fall on every side alike.
func (e *env) timeBuilds(ctx context.Context, name, expr string, protos []string, perRun int) (map[string]map[string]float64, error) {
	samples := map[string]map[string][]float64{}
	for _, proto := range protos {
		samples[proto] = map[string][]float64{}
	}
	for run := 0; run < e.cfg.Runs*perRun; run++ {
		for _, sideName := range e.cfg.Sides {
			s := e.sides[sideName]
			for _, proto := range protos {
				if s.name == Local && proto != protos[0] {
					continue // one local measurement serves every row
				}
				d, err := e.build(ctx, s, proto, expr, e.next(name))
				if err != nil {
					return nil, fmt.Errorf("%s on %s over %s: %w", name, s.name, proto, err)
				}
				samples[proto][s.name] = append(samples[proto][s.name], d.Seconds())
			}
		}
	}
	out := map[string]map[string]float64{}
	for _, proto := range protos {
		out[proto] = map[string]float64{}
	}
	for _, sideName := range e.cfg.Sides {
		for _, proto := range protos {
			got := samples[proto][sideName]
			if sideName == Local {
				got = samples[protos[0]][Local]
			}
			out[proto][sideName] = median(got)
			e.progress("%s %-11s %-6s median %ss of %d (%s)", name, sideName, proto, format(out[proto][sideName], "s"), len(got), formatSamples(got, "%.3f"))
		}
	}
	return out, nil
}

func ratioMet(values map[string]float64, base string, max float64) *bool {
	b, ok1 := values[base]
	v, ok2 := values[Nixfarm]
	if !ok1 || !ok2 || b == 0 {
		return nil
	}
	met := v/b <= max
	return &met
}

func both(a, b *bool) *bool {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	v := *a && *b
	return &v
}

func (e *env) s1(ctx context.Context) ([]Result, error) {
	m, err := e.timeBuilds(ctx, "S1", "s1.nix", []string{"ssh-ng", "ssh"}, 10)
	if err != nil {
		return nil, err
	}
	var out []Result
	for _, proto := range []string{"ssh-ng", "ssh"} {
		out = append(out, Result{Scenario: "S1 latency: one trivial build", Protocol: proto, Unit: "s", Values: m[proto],
			Target: "≤ 0.5 × stock", Met: ratioMet(m[proto], Stock, 0.5)})
	}
	return out, nil
}

func (e *env) s2(ctx context.Context) ([]Result, error) {
	m, err := e.timeBuilds(ctx, "S2", "s2.nix", []string{"ssh-ng", "ssh"}, 1)
	if err != nil {
		return nil, err
	}
	var out []Result
	for _, proto := range []string{"ssh-ng", "ssh"} {
		out = append(out, Result{Scenario: "S2 chain of 20", Protocol: proto, Unit: "s", Values: m[proto],
			Target: "≤ 0.5 × stock", Met: ratioMet(m[proto], Stock, 0.5)})
	}
	return out, nil
}

func (e *env) s3(ctx context.Context) ([]Result, error) {
	m, err := e.timeBuilds(ctx, "S3", "s3.nix", []string{"ssh-ng", "ssh"}, 1)
	if err != nil {
		return nil, err
	}
	var out []Result
	for _, proto := range []string{"ssh-ng", "ssh"} {
		out = append(out, Result{Scenario: "S3 fan-out: 32 × sleep 0.2", Protocol: proto, Unit: "s", Values: m[proto],
			Target: "≤ 0.25 × stock, ≤ 0.4 × tuned", Met: both(ratioMet(m[proto], Stock, 0.25), ratioMet(m[proto], StockTuned, 0.4))})
	}
	return out, nil
}

// s4 moves S4MiB in (an uploaded input) and S4MiB out (the output).
func (e *env) s4(ctx context.Context) ([]Result, error) {
	size := int64(e.cfg.S4MiB) << 20
	samples := map[string][]float64{}
	for run := 0; run < e.cfg.Runs; run++ {
		for _, sideName := range e.cfg.Sides {
			s := e.sides[sideName]
			nonce := e.next("S4")
			input, err := e.makeInput(ctx, s.client, nonce, size)
			if err != nil {
				return nil, err
			}
			if err := e.evenMemory(filepath.Join(s.client, input)); err != nil {
				return nil, err
			}
			d, err := e.build(ctx, s, "ssh-ng", "s4.nix", nonce, "--argstr", "inputPath", input)
			if err != nil {
				return nil, fmt.Errorf("S4 on %s: %w", s.name, err)
			}
			samples[s.name] = append(samples[s.name], float64(2*size)/1e6/d.Seconds())
		}
	}
	values := map[string]float64{}
	for _, sideName := range e.cfg.Sides {
		values[sideName] = median(samples[sideName])
		e.progress("S4 %-11s ssh-ng median %.0f MB/s of %d (%s)", sideName, values[sideName], len(samples[sideName]), formatSamples(samples[sideName], "%.0f"))
	}
	var met *bool
	if b, ok := values[Stock]; ok && values[Nixfarm] > 0 {
		v := values[Nixfarm]/b >= 0.8
		met = &v
	}
	return []Result{{Scenario: fmt.Sprintf("S4 bytes: %d MiB in, %d MiB out", e.cfg.S4MiB, e.cfg.S4MiB), Protocol: "ssh-ng", Unit: "MB/s",
		HigherIsBetter: true, Values: values, Target: "≥ 0.8 × stock", Met: met}}, nil
}

// evenMemory puts every S4 and S9 measurement in the same memory state:
// the page cache emptied (what the runs before wrote would otherwise fill
// memory, and every side's writes would pay for reclaiming it, on this VM
// about five times the cost of a write to free memory), then warm's files
// (a file, or every file under a directory) read back in, as a client
// that just produced them, or a cache server that serves them, would
// have them.
func (e *env) evenMemory(warm string) error {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		if !e.warnedCaches {
			e.warnedCaches = true
			e.progress("cannot drop the page cache (%v); S4 and S9 figures will vary more", err)
		}
		return nil
	}
	return filepath.WalkDir(warm, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(io.Discard, f)
		return err
	})
}

// makeInput writes size pseudo-random bytes, seeded by nonce, and adds
// them to the client store.
func (e *env) makeInput(ctx context.Context, store, nonce string, size int64) (string, error) {
	p := filepath.Join(e.dir, "input-"+nonce)
	f, err := os.Create(p)
	if err != nil {
		return "", err
	}
	defer os.Remove(p)
	var seed [32]byte
	copy(seed[:], nonce)
	rng := rand.NewChaCha8(seed)
	buf := make([]byte, 1<<20)
	for written := int64(0); written < size; written += int64(len(buf)) {
		rng.Read(buf)
		if _, err := f.Write(buf[:min(int64(len(buf)), size-written)]); err != nil {
			f.Close()
			return "", err
		}
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	out, err := e.nix(ctx, "nix-store", "--store", store, "--add", p)
	return strings.TrimSpace(out), err
}

// s5: a second client with an empty store asks for outputs already built.
func (e *env) s5(ctx context.Context) ([]Result, error) {
	samples := map[string][]float64{}
	for run := 0; run < e.cfg.Runs; run++ {
		for _, sideName := range e.cfg.Sides {
			s := e.sides[sideName]
			if s.name == Local {
				continue // no remote to have built anything
			}
			nonce := e.next("S5")
			if _, err := e.build(ctx, s, "ssh-ng", "s5.nix", nonce); err != nil {
				return nil, fmt.Errorf("S5 priming %s: %w", s.name, err)
			}
			client := filepath.Join(e.dir, fmt.Sprintf("client-%s-s5-%d", s.name, run))
			bb, err := e.addBusybox(ctx, client)
			if err != nil {
				return nil, err
			}
			d, err := e.buildIn(ctx, s, client, bb, "ssh-ng", "s5.nix", nonce)
			if err != nil {
				return nil, fmt.Errorf("S5 on %s: %w", s.name, err)
			}
			samples[s.name] = append(samples[s.name], d.Seconds())
		}
	}
	values := map[string]float64{}
	for name, got := range samples {
		values[name] = median(got)
		e.progress("S5 %-11s ssh-ng median %ss of %d (%s)", name, format(values[name], "s"), len(got), formatSamples(got, "%.3f"))
	}
	return []Result{{Scenario: "S5 cache hit: 16 outputs built before", Protocol: "ssh-ng", Unit: "s", Values: values,
		Target: "≤ 0.3 × stock", Met: ratioMet(values, Stock, 0.3)}}, nil
}

// s7: remote-store mode, `nix build --store ssh-ng://… --eval-store`, of
// the S3 fan-out; the local side builds it itself.
func (e *env) s7(ctx context.Context) ([]Result, error) {
	file, err := e.exprFile("s3.nix")
	if err != nil {
		return nil, err
	}
	samples := map[string][]float64{}
	for run := 0; run < e.cfg.Runs; run++ {
		for _, sideName := range e.cfg.Sides {
			s := e.sides[sideName]
			args := []string{"build", "--no-link", "-f", file, "--argstr", "nonce", e.next("S7"), "--argstr", "bbPath", s.bb}
			if s.name == Local {
				args = append(args, "--store", s.client, "--max-jobs", fmt.Sprint(jobs))
			} else {
				args = append(args, "--store", s.storeURI, "--eval-store", s.client)
			}
			syscall.Sync()
			start := time.Now()
			if _, err := e.nix(ctx, "nix", args...); err != nil {
				return nil, fmt.Errorf("S7 on %s: %w", s.name, err)
			}
			samples[s.name] = append(samples[s.name], time.Since(start).Seconds())
		}
	}
	values := map[string]float64{}
	for _, sideName := range e.cfg.Sides {
		values[sideName] = median(samples[sideName])
		e.progress("S7 %-11s ssh-ng median %ss of %d (%s)", sideName, format(values[sideName], "s"), len(samples[sideName]), formatSamples(samples[sideName], "%.3f"))
	}
	var met *bool
	if l, ok := values[Local]; ok && values[Nixfarm] > 0 {
		v := values[Nixfarm] <= 2*l
		met = &v
	}
	return []Result{{Scenario: "S7 remote-store mode: S3's fan-out", Protocol: "ssh-ng", Unit: "s", Values: values,
		Target: "≤ 2 × local", Met: met}}, nil
}

func formatSamples(xs []float64, format string) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf(format, x)
	}
	return strings.Join(parts, ", ")
}
