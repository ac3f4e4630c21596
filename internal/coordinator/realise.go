package coordinator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Realise makes each derived path valid: opaque paths must be in the farm
// store; derivations, whose .drv closures must be in the farm store, are
// built after their input derivations unless their outputs are valid
// already. Independent derivations build at once, as far as the workers
// allow. It returns one result per path. A failed build is a result; an
// error means the request itself could not be served. Unless
// opts.KeepGoing, it returns as soon as a build fails, with the paths not
// finished by then reported as not built (their builds go on in the farm).
func (c *Coordinator) Realise(ctx context.Context, paths []build.DerivedPath, opts build.Options, account string, logs build.Logs) ([]*build.Result, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	r := c.newRealiser(ctx, opts, account, logs)
	type outcome struct {
		i   int
		res *build.Result
		err error
	}
	outcomes := make(chan outcome, len(paths))
	for i, p := range paths {
		go func() {
			if !p.Built {
				outcomes <- outcome{i, c.opaque(ctx, p.Path), nil}
				return
			}
			res, err := r.realise(ctx, p.Path)
			if err == nil {
				res, err = wantedOutputs(p, res)
			}
			outcomes <- outcome{i, res, err}
		}()
	}
	results := make([]*build.Result, len(paths))
	var failed *build.Result
	for range paths {
		o := <-outcomes
		if o.err != nil {
			if failed != nil && errors.Is(o.err, errStopped) {
				continue
			}
			return nil, o.err
		}
		results[o.i] = o.res
		if !o.res.Status.Success() && failed == nil && !opts.KeepGoing {
			failed = o.res
			cancel(errStopped)
			break
		}
	}
	if failed != nil {
		for i, res := range results {
			if res == nil {
				results[i] = &build.Result{Status: build.MiscFailure,
					ErrorMsg: fmt.Sprintf("not waited for: another build failed (%s), and keep-going is off", failed.ErrorMsg)}
			}
		}
	}
	return results, nil
}

// errStopped ends the realisations still under way when one has failed.
var errStopped = errors.New("another build failed")

// wantedOutputs narrows a result to the outputs p asks for.
func wantedOutputs(p build.DerivedPath, res *build.Result) (*build.Result, error) {
	wanted := *res
	if !res.Status.Success() {
		return &wanted, nil
	}
	wanted.Outputs = map[string]storepath.Path{}
	for name, out := range res.Outputs {
		if p.Wants(name) {
			wanted.Outputs[name] = out
		}
	}
	for _, name := range p.Outputs {
		if _, ok := res.Outputs[name]; !ok {
			return nil, fmt.Errorf("derivation %s has no output %q", p.Path, name)
		}
	}
	return &wanted, nil
}

// opaque answers for a plain store path: it is there, or it cannot be had.
func (c *Coordinator) opaque(ctx context.Context, p storepath.Path) *build.Result {
	if _, err := c.store.QueryPathInfo(ctx, p); err != nil {
		return &build.Result{Status: build.NoSubstituters,
			ErrorMsg: fmt.Sprintf("path '%s' is required, but it is not in the farm store and the farm has no substituters", p)}
	}
	return &build.Result{Status: build.AlreadyValid}
}

// Missing reports, for the given paths, the derivations that would be
// built and the paths the farm cannot provide (opaque paths it lacks, and
// derivations whose .drv it lacks), as Nix's queryMissing does.
func (c *Coordinator) Missing(ctx context.Context, paths []build.DerivedPath) (willBuild, unknown []storepath.Path, err error) {
	seen := map[storepath.Path]bool{}
	var visit func(p storepath.Path, built bool) error
	visit = func(p storepath.Path, built bool) error {
		if seen[p] {
			return nil
		}
		seen[p] = true
		if !built {
			if _, err := c.store.QueryPathInfo(ctx, p); errors.Is(err, store.ErrNotFound) {
				unknown = append(unknown, p)
			} else if err != nil {
				return err
			}
			return nil
		}
		drv, err := store.ReadDerivation(ctx, c.store, p)
		if errors.Is(err, store.ErrNotFound) {
			unknown = append(unknown, p)
			return nil
		}
		if err != nil {
			return err
		}
		done, err := c.allValid(ctx, drv.Basic(derivationName(p), nil).OutputPaths())
		if err != nil || done {
			return err
		}
		willBuild = append(willBuild, p)
		for _, in := range slices.Sorted(maps.Keys(drv.InputDrvs)) {
			if err := visit(storepath.Path(in), true); err != nil {
				return err
			}
		}
		for _, src := range drv.InputSrcs {
			if err := visit(storepath.Path(src), false); err != nil {
				return err
			}
		}
		return nil
	}
	for _, p := range paths {
		if err := visit(p.Path, p.Built); err != nil {
			return nil, nil, err
		}
	}
	return willBuild, unknown, nil
}

// OutputMap returns the outputs of a derivation in the farm store, with
// the paths that are known.
func (c *Coordinator) OutputMap(ctx context.Context, drvPath storepath.Path) (map[string]storepath.Path, error) {
	drv, err := store.ReadDerivation(ctx, c.store, drvPath)
	if err != nil {
		return nil, err
	}
	known := drv.Basic(derivationName(drvPath), nil).OutputPaths()
	out := make(map[string]storepath.Path, len(drv.Outputs))
	for name := range drv.Outputs {
		out[name] = known[name]
	}
	return out, nil
}

func derivationName(drvPath storepath.Path) string {
	return strings.TrimSuffix(drvPath.Name(), ".drv")
}

// realiser builds .drv closures in dependency order, once each per
// request, independent derivations at once.
type realiser struct {
	c       *Coordinator
	opts    build.Options
	account string
	logs    build.Logs
	hasher  *derivation.Hasher

	mu   sync.Mutex
	done map[storepath.Path]*realisation
}

// realisation is one derivation's realisation within a request.
type realisation struct {
	ready chan struct{}
	res   *build.Result
	err   error
}

func (c *Coordinator) newRealiser(ctx context.Context, opts build.Options, account string, logs build.Logs) *realiser {
	resolve := func(p string) (*derivation.Derivation, error) {
		return store.ReadDerivation(ctx, c.store, storepath.Path(p))
	}
	if logs == nil {
		logs = build.LogWriter{}
	}
	return &realiser{c: c, opts: opts, account: account, logs: logs,
		hasher: derivation.NewHasher(resolve), done: map[storepath.Path]*realisation{}}
}

// realise builds one .drv from the farm store after its input
// derivations, or waits for the same realisation under way.
func (r *realiser) realise(ctx context.Context, drvPath storepath.Path) (*build.Result, error) {
	r.mu.Lock()
	z, ok := r.done[drvPath]
	if !ok {
		z = &realisation{ready: make(chan struct{})}
		r.done[drvPath] = z
	}
	r.mu.Unlock()
	if !ok {
		z.res, z.err = r.realiseOnce(ctx, drvPath)
		close(z.ready)
	}
	select {
	case <-z.ready:
		return z.res, z.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// realiseInputs realises the input derivations of drv at once and
// returns their results in the order of names.
func (r *realiser) realiseInputs(ctx context.Context, names []string) ([]*build.Result, error) {
	results := make([]*build.Result, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, in := range names {
		inPath, err := storepath.Parse(in)
		if err != nil {
			return nil, fmt.Errorf("input derivation: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = r.realise(ctx, inPath)
		}()
	}
	wg.Wait()
	return results, errors.Join(errs...)
}

func (r *realiser) realiseOnce(ctx context.Context, drvPath storepath.Path) (*build.Result, error) {
	drv, err := store.ReadDerivation(ctx, r.c.store, drvPath)
	if err != nil {
		return nil, err
	}
	name := derivationName(drvPath)
	if err := checkKind(drvPath, drv.Kind()); err != nil {
		return nil, err
	}
	hash, err := r.hasher.HashModulo(drv)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", drvPath, err)
	}
	// Outputs that are valid already need neither a build nor inputs.
	outputs := drv.Basic(name, nil).OutputPaths()
	if done, err := r.c.allValid(ctx, outputs); err != nil {
		return nil, err
	} else if done {
		return &build.Result{Status: build.AlreadyValid, Outputs: outputs, HashModulo: hash}, nil
	}
	inputs, err := storepath.ParseList(drv.InputSrcs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", drvPath, err)
	}
	inputDrvs := slices.Sorted(maps.Keys(drv.InputDrvs))
	inputResults, err := r.realiseInputs(ctx, inputDrvs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", drvPath, err)
	}
	for i, in := range inputDrvs {
		res := inputResults[i]
		if !res.Status.Success() {
			return &build.Result{
				Status:   build.DependencyFailed,
				ErrorMsg: fmt.Sprintf("dependency %s of %s failed: %s", in, drvPath, res.ErrorMsg),
			}, nil
		}
		for _, name := range drv.InputDrvs[in] {
			out, ok := res.Outputs[name]
			if !ok {
				return nil, fmt.Errorf("%s: input derivation %s has no output %q", drvPath, in, name)
			}
			inputs = append(inputs, out)
		}
	}
	closure, err := r.c.store.Closure(ctx, inputs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", drvPath, err)
	}
	req := &build.Request{
		DrvPath: drvPath,
		Drv:     drv.Basic(name, storepath.Strings(closure)),
		Options: r.opts,
		Account: r.account,
	}
	if log := r.logs.BuildLog(drvPath); log != nil {
		req.Log = log
		defer log.Close()
	}
	// Dependent builds need the outputs registered, not just fetchable.
	res, err := r.c.buildDerivation(ctx, req, false)
	if err != nil {
		return nil, err
	}
	if res.Status.Success() {
		res.HashModulo = hash // the full derivation's, not the BasicDerivation's
	}
	return res, nil
}

// AddBuildLog keeps a build log that a client uploads (nix store
// copy-log) under logs/uploaded/<drv base name>.
func (c *Coordinator) AddBuildLog(ctx context.Context, drvPath storepath.Path, account string, log []byte) error {
	dir := filepath.Join(c.logDir, "uploaded")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, drvPath.Base()), log, 0o644); err != nil {
		return fmt.Errorf("saving build log of %s: %w", drvPath, err)
	}
	c.log.Info("build log uploaded", "drv", drvPath, "account", account, "bytes", len(log))
	return nil
}
