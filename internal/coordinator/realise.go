package coordinator

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/buildlog"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Realise makes each derived path valid: opaque paths must be in the farm
// store; derivations, whose .drv closures must be in the farm store, are
// built after their input derivations unless their outputs are valid
// already. Independent derivations build at once, as far as the workers
// allow. A derivation whose input fails is not built: it fails with
// DependencyFailed as soon as that input has failed. It returns one
// result per path. A failed build is a result; an error means the request
// itself could not be served.
//
// Unless opts.KeepGoing, it returns as soon as a build anywhere in the
// closures fails, with the paths not finished by then reported as not
// built; builds already running go on in the farm (unless the coordinator
// cancels builds nobody waits for), but no new one starts. With
// opts.KeepGoing, every build that can still run does, and Realise returns
// once they have all ended.
func (c *Coordinator) Realise(ctx context.Context, paths []build.DerivedPath, opts build.Options, account string, logs build.Logs) ([]*build.Result, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	r := c.newRealiser(ctx, opts, account, logs)
	// No goroutine started for this request outlives it.
	defer r.wg.Wait()
	defer cancel(nil)
	type outcome struct {
		i   int
		res *build.Result
		err error
	}
	outcomes := make(chan outcome, len(paths))
	for i, p := range paths {
		r.goroutine(func() {
			if !p.Built {
				res, err := r.opaque(ctx, p.Path)
				outcomes <- outcome{i, res, err}
				return
			}
			res, err := r.realise(ctx, p.Path)
			if err == nil {
				res, err = wantedOutputs(p, res)
			}
			outcomes <- outcome{i, res, err}
		})
	}
	results := make([]*build.Result, len(paths))
	var failed *build.Result
	for range paths {
		o := <-outcomes
		if o.err != nil {
			return nil, o.err
		}
		results[o.i] = o.res
		// A failure anywhere in a closure reaches the requested path at
		// once, as DependencyFailed, so looking at these suffices.
		if !o.res.Status.Success() && !opts.KeepGoing {
			failed = o.res
			break
		}
	}
	if failed == nil {
		// With keep-going, inputs beside a failed one may still build.
		r.wg.Wait()
		return results, nil
	}
	cancel(errStopped)
	for i, res := range results {
		if res == nil {
			results[i] = &build.Result{Status: build.MiscFailure,
				ErrorMsg: fmt.Sprintf("not waited for: another build failed (%s), and keep-going is off", failed.ErrorMsg)}
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
			return nil, publicerr.New("derivation %s has no output %q", p.Path, name)
		}
	}
	return &wanted, nil
}

// opaque answers for a plain store path: it is there, it is fetched from
// an upstream cache, or it cannot be had.
func (r *realiser) opaque(ctx context.Context, p storepath.Path) (*build.Result, error) {
	if _, err := r.st.QueryPathInfo(ctx, p); err == nil {
		return &build.Result{Status: build.AlreadyValid}, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	start := r.c.now()
	ok, err := r.c.fromUpstream(ctx, r.account, []storepath.Path{p}, r.progress, false)
	if ok {
		return &build.Result{Status: build.Substituted, StartTime: start, StopTime: r.c.now()}, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	msg := fmt.Sprintf("path '%s' is required, but it is not in the farm store and no upstream cache has it", p)
	if r.c.opts.Substituter == nil {
		msg = fmt.Sprintf("path '%s' is required, but it is not in the farm store and the farm has no substituters", p)
	} else if err != nil {
		msg = fmt.Sprintf("path '%s' is required, but it is not in the farm store and fetching it from an upstream cache failed: %s", p, publicerr.Message(ctx, r.c.log, err, "substituting a path failed", "path", p, "account", r.account))
	}
	return &build.Result{Status: build.NoSubstituters, ErrorMsg: msg}, nil
}

// Missing reports, for the given paths, the derivations that would be
// built, the paths that would be fetched from upstream caches, and the
// paths the farm cannot provide (opaque paths it lacks and no cache has,
// and derivations whose .drv it lacks), as Nix's queryMissing does. A
// derivation whose outputs a cache has is not built, and neither are its
// inputs.
func (c *Coordinator) Missing(ctx context.Context, account string, paths []build.DerivedPath) (*build.Missing, error) {
	st := c.store.For(account)
	m := &build.Missing{}
	seen := map[storepath.Path]bool{}
	// substitutable reports whether all of ps can be had from upstream,
	// and counts them in if so.
	substitutable := func(ps []storepath.Path) (bool, error) {
		found, err := c.Substitutable(ctx, account, ps)
		if err != nil || len(found) < len(ps) {
			return false, err
		}
		for _, p := range ps {
			m.WillSubstitute = append(m.WillSubstitute, p)
			m.DownloadSize += found[p].FileSize
			m.NarSize += found[p].NarSize
		}
		return true, nil
	}
	var visit func(p storepath.Path, built bool) error
	visit = func(p storepath.Path, built bool) error {
		if seen[p] {
			return nil
		}
		seen[p] = true
		if !built {
			if _, err := st.QueryPathInfo(ctx, p); errors.Is(err, store.ErrNotFound) {
				if ok, err := substitutable([]storepath.Path{p}); err != nil || ok {
					return err
				}
				m.Unknown = append(m.Unknown, p)
			} else if err != nil {
				return err
			}
			return nil
		}
		drv, err := store.ReadDerivation(ctx, st, p)
		if errors.Is(err, store.ErrNotFound) {
			m.Unknown = append(m.Unknown, p)
			return nil
		}
		if err != nil {
			return err
		}
		outputs := drv.Basic(derivationName(p), nil).OutputPaths()
		missing, err := c.lacking(ctx, account, slices.Collect(maps.Values(outputs)))
		if err != nil || len(missing) == 0 {
			return err
		}
		if !slices.Contains(missing, "") {
			if ok, err := substitutable(missing); err != nil || ok {
				return err
			}
		}
		m.WillBuild = append(m.WillBuild, p)
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
			return nil, err
		}
	}
	return m, nil
}

// OutputMap returns the outputs of a derivation in the farm store, with
// the paths that are known.
func (c *Coordinator) OutputMap(ctx context.Context, account string, drvPath storepath.Path) (map[string]storepath.Path, error) {
	drv, err := store.ReadDerivation(ctx, c.store.For(account), drvPath)
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
	st      store.Store // the account's view
	opts    build.Options
	account string
	logs    build.Logs
	// progress hears what is fetched from upstream caches (nil: nobody).
	progress build.Progress
	hasher   *derivation.Hasher
	// sem bounds the .drv reads and store queries under way at once, so
	// that a large closure does not start them all together.
	sem chan struct{}
	wg  sync.WaitGroup // every goroutine of the request

	mu   sync.Mutex
	done map[storepath.Path]*realisation
}

// maxQueries is how many derivations of one request may read their .drv
// and query the store at once.
const maxQueries = 8

// realisation is one derivation's realisation within a request.
type realisation struct {
	ready chan struct{}
	res   *build.Result
	err   error
}

func (c *Coordinator) newRealiser(ctx context.Context, opts build.Options, account string, logs build.Logs) *realiser {
	st := c.store.For(account)
	resolve := func(p string) (*derivation.Derivation, error) {
		return store.ReadDerivation(ctx, st, storepath.Path(p))
	}
	if logs == nil {
		logs = build.LogWriter{}
	}
	progress, _ := logs.(build.Progress)
	return &realiser{c: c, st: st, opts: opts, account: account, logs: logs, progress: progress,
		hasher: derivation.NewHasher(resolve), sem: make(chan struct{}, maxQueries),
		done: map[storepath.Path]*realisation{}}
}

// goroutine runs f on a goroutine of its own that Realise waits for.
func (r *realiser) goroutine(f func()) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		f()
	}()
}

// limited runs f once fewer than maxQueries others run.
func (r *realiser) limited(ctx context.Context, f func() error) error {
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	defer func() { <-r.sem }()
	return f()
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
		return z.res, z.err
	}
	select {
	case <-z.ready:
		return z.res, z.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// realiseInputs realises the input derivations of drvPath at once and
// returns their results in the order of names. As soon as one fails, it
// returns instead the result of drvPath, DependencyFailed, without
// waiting for the others, which go on.
func (r *realiser) realiseInputs(ctx context.Context, drvPath storepath.Path, names []string) ([]*build.Result, *build.Result, error) {
	paths := make([]storepath.Path, len(names))
	for i, in := range names {
		p, err := storepath.Parse(in)
		if err != nil {
			return nil, nil, fmt.Errorf("input derivation: %w", err)
		}
		paths[i] = p
	}
	type outcome struct {
		i   int
		res *build.Result
		err error
	}
	outcomes := make(chan outcome, len(paths))
	for i, p := range paths {
		r.goroutine(func() {
			res, err := r.realise(ctx, p)
			outcomes <- outcome{i, res, err}
		})
	}
	results := make([]*build.Result, len(paths))
	for range paths {
		o := <-outcomes
		if o.err != nil {
			return nil, nil, o.err
		}
		if !o.res.Status.Success() {
			return nil, &build.Result{
				Status:   build.DependencyFailed,
				ErrorMsg: fmt.Sprintf("dependency %s of %s failed: %s", paths[o.i], drvPath, o.res.ErrorMsg),
			}, nil
		}
		results[o.i] = o.res
	}
	return results, nil, nil
}

func (r *realiser) realiseOnce(ctx context.Context, drvPath storepath.Path) (*build.Result, error) {
	name := derivationName(drvPath)
	var (
		drv     *derivation.Derivation
		hash    nixhash.Hash
		outputs map[string]storepath.Path
		valid   bool
	)
	err := r.limited(ctx, func() error {
		var err error
		if drv, err = store.ReadDerivation(ctx, r.st, drvPath); err != nil {
			return err
		}
		if err := checkKind(drvPath, drv.Kind()); err != nil {
			return err
		}
		// The .drv's bytes match its path (the store checks that when
		// it is added); its output paths must be the ones Nix derives
		// from it and its inputs, or it could name anyone's outputs.
		if err := r.hasher.Verify(name, drv); err != nil {
			return fmt.Errorf("refusing %s: %w", drvPath, err)
		}
		if hash, err = r.hasher.HashModulo(drv); err != nil {
			return fmt.Errorf("%s: %w", drvPath, err)
		}
		outputs = drv.Basic(name, nil).OutputPaths()
		valid, err = allValid(ctx, r.st, outputs)
		return err
	})
	if err != nil {
		return nil, err
	}
	// Outputs that are valid already need neither a build nor inputs,
	// and nor do outputs an upstream cache has.
	if valid {
		return &build.Result{Status: build.AlreadyValid, Outputs: outputs, HashModulo: hash}, nil
	}
	if start := r.c.now(); r.c.substituteOutputs(ctx, r.account, outputs, r.progress, r.c.log.With("drv", drvPath, "account", r.account)) {
		req := &build.Request{DrvPath: drvPath, Drv: drv.Basic(name, nil), Account: r.account}
		res, err := r.c.substituted(ctx, req, outputs, start)
		if err == nil {
			res.HashModulo = hash
		}
		return res, err
	}
	inputs, err := storepath.ParseList(drv.InputSrcs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", drvPath, err)
	}
	inputDrvs := slices.Sorted(maps.Keys(drv.InputDrvs))
	inputResults, failed, err := r.realiseInputs(ctx, drvPath, inputDrvs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", drvPath, err)
	}
	if failed != nil {
		return failed, nil
	}
	for i, in := range inputDrvs {
		for _, name := range drv.InputDrvs[in] {
			out, ok := inputResults[i].Outputs[name]
			if !ok {
				return nil, publicerr.New("%s: input derivation %s has no output %q", drvPath, in, name)
			}
			inputs = append(inputs, out)
		}
	}
	var closure []storepath.Path
	err = r.limited(ctx, func() error {
		closure, err = r.st.Closure(ctx, inputs)
		if errors.Is(err, store.ErrNotFound) && r.c.opts.Substituter != nil {
			// Sources the farm lacks may be had from upstream caches.
			_, upErr := r.c.fromUpstream(ctx, r.account, inputs, r.progress, false)
			if closure, err = r.st.Closure(ctx, inputs); errors.Is(err, store.ErrNotFound) {
				return missingInputs(err, upErr)
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", drvPath, err)
	}
	// Once the request has stopped (another build failed), no build starts.
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	req := &build.Request{
		DrvPath: drvPath,
		Drv:     drv.Basic(name, storepath.Strings(closure)),
		Options: r.opts,
		Account: r.account,
		// Verified when read (hasher.Verify).
		OutputsVerified: true,
	}
	if log := r.logs.BuildLog(drvPath); log != nil {
		req.Log = log
		defer log.Close()
		if q, ok := log.(build.QueueWatcher); ok {
			req.OnQueue = q.Queue
		}
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

// openBuiltLog opens the log of the latest build of drvPath the farm ran
// for account that logged anything, or returns store.ErrNotFound. The
// text is decompressed (package buildlog); logs of older versions are
// plain.
func (c *Coordinator) openBuiltLog(ctx context.Context, account string, drvPath storepath.Path) (io.ReadCloser, error) {
	var id int64
	err := c.db.QueryRowContext(ctx, `SELECT id FROM builds WHERE drv_path = ? AND account = ? AND log_bytes > 0
		ORDER BY id DESC LIMIT 1`, string(drvPath), account).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: no build log of %s", store.ErrNotFound, drvPath)
	}
	if err != nil {
		return nil, fmt.Errorf("looking up the build log of %s: %w", drvPath, err)
	}
	f, err := buildlog.Open(c.logPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: no build log of %s", store.ErrNotFound, drvPath)
	}
	return f, err
}
