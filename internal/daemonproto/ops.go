package daemonproto

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/nixfarm/nixfarm/internal/narinfo"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/wire"
)

type handler func(c *conn, ctx context.Context) error

// ops maps every operation nixfarm knows to its handler. Operations that
// are known but not supported read their arguments and fail cleanly, so
// the connection goes on.
var ops map[Op]handler

func init() {
	ops = map[Op]handler{
		OpIsValidPath:                 (*conn).isValidPath,
		OpHasSubstitutes:              (*conn).hasSubstitutes,
		OpQueryPathHash:               (*conn).queryPathHash,
		OpQueryReferences:             (*conn).queryReferences,
		OpQueryReferrers:              (*conn).queryReferrers,
		OpAddToStore:                  (*conn).addToStore,
		OpAddTextToStore:              (*conn).addTextToStore,
		OpBuildPaths:                  (*conn).buildPaths,
		OpEnsurePath:                  (*conn).ensurePath,
		OpAddTempRoot:                 (*conn).acceptPath,
		OpAddIndirectRoot:             (*conn).addIndirectRoot,
		OpSyncWithGC:                  (*conn).ok,
		OpFindRoots:                   (*conn).findRoots,
		OpExportPath:                  (*conn).exportPath,
		OpQueryDeriver:                (*conn).queryDeriver,
		OpSetOptions:                  (*conn).setOptions,
		OpCollectGarbage:              (*conn).collectGarbage,
		OpQuerySubstitutablePathInfo:  (*conn).querySubstitutablePathInfo,
		OpQueryDerivationOutputs:      (*conn).queryDerivationOutputs,
		OpQueryAllValidPaths:          unsupported,
		OpQueryFailedPaths:            unsupported,
		OpClearFailedPaths:            (*conn).clearFailedPaths,
		OpQueryPathInfo:               (*conn).queryPathInfo,
		OpImportPaths:                 unsupported,
		OpQueryDerivationOutputNames:  (*conn).queryDerivationOutputNames,
		OpQueryPathFromHashPart:       (*conn).queryPathFromHashPart,
		OpQuerySubstitutablePathInfos: (*conn).querySubstitutablePathInfos,
		OpQueryValidPaths:             (*conn).queryValidPaths,
		OpQuerySubstitutablePaths:     (*conn).querySubstitutablePaths,
		OpQueryValidDerivers:          (*conn).queryValidDerivers,
		OpOptimiseStore:               (*conn).ok,
		OpVerifyStore:                 (*conn).verifyStore,
		OpBuildDerivation:             (*conn).buildDerivation,
		OpAddSignatures:               (*conn).addSignatures,
		OpNarFromPath:                 (*conn).narFromPath,
		OpAddToStoreNar:               (*conn).addToStoreNar,
		OpQueryMissing:                (*conn).queryMissing,
		OpQueryDerivationOutputMap:    (*conn).queryDerivationOutputMap,
		OpRegisterDrvOutput:           (*conn).registerDrvOutput,
		OpQueryRealisation:            (*conn).queryRealisation,
		OpAddMultipleToStore:          (*conn).addMultipleToStore,
		OpAddBuildLog:                 (*conn).addBuildLog,
		OpBuildPathsWithResults:       (*conn).buildPathsWithResults,
		OpAddPermRoot:                 (*conn).addPermRoot,
	}
}

// dispatch runs one operation. It returns nil once the reply is written.
func (c *conn) dispatch(ctx context.Context, op Op) error {
	h, ok := ops[op]
	if !ok {
		return fatal(fmt.Errorf("%w: unknown operation %d; nixfarm cannot tell where its arguments end, so it closes the connection", ErrProtocol, uint64(op)))
	}
	c.replied = false
	err := h(c, ctx)
	if err != nil && c.replied {
		// The reply was under way: nothing more can be said.
		return fatal(err)
	}
	return err
}

func unsupported(c *conn, ctx context.Context) error {
	return publicerr.New("this operation is not supported by nixfarm")
}

// done ends the operation with STDERR_LAST and writes the reply.
func (c *conn) done(reply func(w *wire.Writer)) error {
	c.out.mu.Lock()
	defer c.out.mu.Unlock()
	c.replied = true
	c.out.w.Uint64(stderrLast)
	if reply != nil {
		reply(c.out.w)
	}
	return c.out.w.Err()
}

func (c *conn) ok(ctx context.Context) error {
	return c.done(func(w *wire.Writer) { w.Uint64(1) })
}

// acceptPath reads a path and answers 1 (AddTempRoot: the farm store
// never collects garbage under a session).
func (c *conn) acceptPath(ctx context.Context) error {
	if _, err := c.readPath("path"); err != nil {
		return err
	}
	return c.ok(ctx)
}

func (c *conn) addIndirectRoot(ctx context.Context) error {
	if _, err := c.readString("root", wire.MaxPathLen); err != nil {
		return err
	}
	return c.ok(ctx)
}

func (c *conn) addPermRoot(ctx context.Context) error {
	if _, err := c.readPath("path"); err != nil {
		return err
	}
	root, err := c.readString("root", wire.MaxPathLen)
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { w.String(root) })
}

func (c *conn) findRoots(ctx context.Context) error {
	return c.done(func(w *wire.Writer) { w.Uint64(0) })
}

func (c *conn) collectGarbage(ctx context.Context) error {
	for _, what := range []string{"action"} {
		if _, err := c.readUint(what); err != nil {
			return err
		}
	}
	if _, err := c.readPaths("paths to delete"); err != nil {
		return err
	}
	for _, what := range []string{"ignoreLiveness", "maxFreed", "obsolete", "obsolete", "obsolete"} {
		if _, err := c.readUint(what); err != nil {
			return err
		}
	}
	return publicerr.New("the farm store is not garbage-collected by clients")
}

func (c *conn) clearFailedPaths(ctx context.Context) error {
	if _, err := c.readPaths("paths"); err != nil {
		return err
	}
	return publicerr.New("this operation is not supported by nixfarm")
}

func (c *conn) verifyStore(ctx context.Context) error {
	if _, err := c.readUint("checkContents"); err != nil {
		return err
	}
	if _, err := c.readUint("repair"); err != nil {
		return err
	}
	return publicerr.New("verifying the farm store is for its operator, not for clients")
}

func (c *conn) exportPath(ctx context.Context) error {
	if _, err := c.readPath("path"); err != nil {
		return err
	}
	if _, err := c.readUint("sign"); err != nil {
		return err
	}
	return publicerr.New("ExportPath is obsolete; use NarFromPath (Nix 2.0 and later do)")
}

func (c *conn) setOptions(ctx context.Context) error {
	var v [12]uint64
	names := [12]string{"keepFailed", "keepGoing", "tryFallback", "verbosity", "maxBuildJobs", "maxSilentTime",
		"useBuildHook", "verboseBuild", "logType", "printBuildTrace", "buildCores", "useSubstitutes"}
	for i := range v {
		var err error
		if v[i], err = c.readUint(names[i]); err != nil {
			return err
		}
	}
	overrides := map[string]string{}
	if minor(c.ver) >= 12 {
		var err error
		if overrides, err = c.r.StringMap(4096, 64<<10); err != nil {
			return fatal(fmt.Errorf("reading overrides: %w", err))
		}
	}
	c.opts.KeepFailed = v[0] != 0
	c.opts.KeepGoing = v[1] != 0
	c.opts.MaxSilentTime = seconds(v[5])
	c.opts.Cores = int(min(v[10], 1<<16))
	for name, value := range overrides {
		if name == "keep-going" {
			c.opts.KeepGoing = value == "true"
			continue
		}
		var n uint64
		if _, err := fmt.Sscan(value, &n); err != nil {
			continue
		}
		switch name {
		case "max-silent-time":
			c.opts.MaxSilentTime = seconds(n)
		case "timeout", "build-timeout":
			c.opts.Timeout = seconds(n)
		case "max-log-size":
			c.opts.MaxLogSize = n
		case "cores", "build-cores":
			c.opts.Cores = int(min(n, 1<<16))
		}
	}
	return c.done(nil)
}

func seconds(s uint64) time.Duration {
	const maxSeconds = uint64(1<<63-1) / uint64(time.Second)
	return time.Duration(min(s, maxSeconds)) * time.Second
}

func (c *conn) isValidPath(ctx context.Context) error {
	p, err := c.readPath("path")
	if err != nil {
		return err
	}
	valid, err := c.st.ValidPaths(ctx, []storepath.Path{p})
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { w.Bool(len(valid) == 1) })
}

func (c *conn) hasSubstitutes(ctx context.Context) error {
	p, err := c.readPath("path")
	if err != nil {
		return err
	}
	found, err := c.substitutable(ctx, []storepath.Path{p})
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { w.Bool(len(found) == 1) })
}

// substitutable returns which of paths the account could have from the
// farm's upstream caches.
func (c *conn) substitutable(ctx context.Context, paths []storepath.Path) (map[storepath.Path]*narinfo.NarInfo, error) {
	if c.s.Upstream == nil {
		return nil, nil
	}
	return c.s.Upstream.Substitutable(ctx, c.sess.Account, paths)
}

func (c *conn) queryValidPaths(ctx context.Context) error {
	paths, err := c.readPaths("paths")
	if err != nil {
		return err
	}
	substitute := uint64(0)
	if minor(c.ver) >= 27 {
		if substitute, err = c.readUint("substitute"); err != nil {
			return err
		}
	}
	// builders-use-substitutes: the farm fetches from its upstream caches
	// what the client would otherwise upload.
	if substitute != 0 && c.s.Upstream != nil {
		if err := c.s.Upstream.Substitute(ctx, c.sess.Account, paths, c); err != nil {
			c.log.Warn("substituting paths a client asked for failed; it will upload them", "account", c.sess.Account, "err", err)
		}
	}
	valid, err := c.st.ValidPaths(ctx, paths)
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { w.Strings(storepath.Strings(storepath.Sorted(valid))) })
}

func (c *conn) querySubstitutablePaths(ctx context.Context) error {
	paths, err := c.readPaths("paths")
	if err != nil {
		return err
	}
	found, err := c.substitutable(ctx, paths)
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { w.Strings(storepath.Strings(storepath.Sorted(slices.Collect(maps.Keys(found))))) })
}

func (c *conn) querySubstitutablePathInfo(ctx context.Context) error {
	p, err := c.readPath("path")
	if err != nil {
		return err
	}
	found, err := c.substitutable(ctx, []storepath.Path{p})
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) {
		ni, ok := found[p]
		w.Bool(ok)
		if ok {
			writeSubstitutable(w, ni)
		}
	})
}

func (c *conn) querySubstitutablePathInfos(ctx context.Context) error {
	var paths []storepath.Path
	if minor(c.ver) < 22 {
		ps, err := c.readPaths("paths")
		if err != nil {
			return err
		}
		paths = ps
	} else {
		// Path to content address; the farm's caches are asked by path.
		m, err := c.r.StringMap(wire.MaxListLen, wire.MaxPathLen)
		if err != nil {
			return fatal(fmt.Errorf("reading paths: %w", err))
		}
		for s := range m {
			p, err := storepath.Parse(s)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrProtocol, err)
			}
			paths = append(paths, p)
		}
	}
	found, err := c.substitutable(ctx, paths)
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) {
		w.Uint64(uint64(len(found)))
		for _, p := range storepath.Sorted(slices.Collect(maps.Keys(found))) {
			w.String(string(p))
			writeSubstitutable(w, found[p])
		}
	})
}

// writeSubstitutable writes what a cache says of a path as Nix's
// SubstitutablePathInfo: deriver, references, download and NAR sizes.
func writeSubstitutable(w *wire.Writer, ni *narinfo.NarInfo) {
	w.String(string(ni.Deriver))
	w.Strings(storepath.Strings(ni.References))
	w.Uint64(ni.FileSize)
	w.Uint64(ni.NarSize)
}

// queryInfo reads a path argument and looks it up.
func (c *conn) queryInfo(ctx context.Context) (*store.PathInfo, error) {
	p, err := c.readPath("path")
	if err != nil {
		return nil, err
	}
	info, err := c.st.QueryPathInfo(ctx, p)
	if errors.Is(err, store.ErrNotFound) {
		return nil, publicerr.New("path '%s' is not valid", p)
	}
	return info, err
}

func (c *conn) queryPathInfo(ctx context.Context) error {
	p, err := c.readPath("path")
	if err != nil {
		return err
	}
	info, err := c.st.QueryPathInfo(ctx, p)
	if errors.Is(err, store.ErrNotFound) {
		if minor(c.ver) < 17 {
			return publicerr.New("path '%s' is not valid", p)
		}
		return c.done(func(w *wire.Writer) { w.Uint64(0) })
	}
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) {
		if minor(c.ver) >= 17 {
			w.Uint64(1)
		}
		writePathInfo(w, c.ver, info, false)
	})
}

func (c *conn) queryPathHash(ctx context.Context) error {
	info, err := c.queryInfo(ctx)
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { w.String(info.NarHash.Hex()) })
}

func (c *conn) queryReferences(ctx context.Context) error {
	info, err := c.queryInfo(ctx)
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { w.Strings(storepath.Strings(info.References)) })
}

func (c *conn) queryDeriver(ctx context.Context) error {
	info, err := c.queryInfo(ctx)
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { w.String(string(info.Deriver)) })
}

func (c *conn) queryValidDerivers(ctx context.Context) error {
	info, err := c.queryInfo(ctx)
	if err != nil {
		return err
	}
	var derivers []storepath.Path
	if info.Deriver != "" {
		if derivers, err = c.st.ValidPaths(ctx, []storepath.Path{info.Deriver}); err != nil {
			return err
		}
	}
	return c.done(func(w *wire.Writer) { w.Strings(storepath.Strings(derivers)) })
}

func (c *conn) queryReferrers(ctx context.Context) error {
	p, err := c.readPath("path")
	if err != nil {
		return err
	}
	refs, err := c.st.Referrers(ctx, p)
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { w.Strings(storepath.Strings(refs)) })
}

func (c *conn) queryPathFromHashPart(ctx context.Context) error {
	hashPart, err := c.readString("hash part", 64)
	if err != nil {
		return err
	}
	p, err := c.st.QueryPathFromHashPart(ctx, hashPart)
	if errors.Is(err, store.ErrNotFound) {
		p, err = "", nil
	}
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { w.String(string(p)) })
}

func (c *conn) ensurePath(ctx context.Context) error {
	if _, err := c.queryInfo(ctx); err != nil {
		return err
	}
	return c.ok(ctx)
}

func (c *conn) addSignatures(ctx context.Context) error {
	p, err := c.readPath("path")
	if err != nil {
		return err
	}
	sigs, err := c.r.Strings(1024, 1024)
	if err != nil {
		return fatal(fmt.Errorf("reading signatures: %w", err))
	}
	if err := c.st.AddSignatures(ctx, p, sigs); err != nil {
		return err
	}
	return c.ok(ctx)
}

func (c *conn) narFromPath(ctx context.Context) error {
	p, err := c.readPath("path")
	if err != nil {
		return err
	}
	rc, _, err := c.st.NarFromPath(ctx, p)
	if errors.Is(err, store.ErrNotFound) {
		return publicerr.New("path '%s' is not valid", p)
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	c.out.mu.Lock()
	defer c.out.mu.Unlock()
	c.replied = true
	c.out.w.Uint64(stderrLast)
	n, err := c.out.w.ReadFrom(rc)
	if err != nil {
		return fmt.Errorf("sending NAR of %s: %w", p, err)
	}
	// Recorded before the last of the NAR is flushed, so that a client
	// that has it all finds its size in the record.
	c.tr.Downloaded(ctx, p, n)
	return nil
}

// derivationOutputs loads a stored derivation's outputs.
func (c *conn) derivationOutputs(ctx context.Context) (map[string]storepath.Path, error) {
	p, err := c.readPath("derivation")
	if err != nil {
		return nil, err
	}
	outputs, err := c.s.Builds.OutputMap(ctx, c.sess.Account, p)
	if errors.Is(err, store.ErrNotFound) {
		return nil, publicerr.New("derivation '%s' is not in the farm store", p)
	}
	return outputs, err
}

func (c *conn) queryDerivationOutputMap(ctx context.Context) error {
	outputs, err := c.derivationOutputs(ctx)
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) {
		names := sortedNames(outputs)
		w.Uint64(uint64(len(names)))
		for _, n := range names {
			w.String(n)
			w.String(string(outputs[n]))
		}
	})
}

func (c *conn) queryDerivationOutputs(ctx context.Context) error {
	outputs, err := c.derivationOutputs(ctx)
	if err != nil {
		return err
	}
	var paths []string
	for _, n := range sortedNames(outputs) {
		if outputs[n] != "" {
			paths = append(paths, string(outputs[n]))
		}
	}
	slices.Sort(paths)
	return c.done(func(w *wire.Writer) { w.Strings(paths) })
}

func (c *conn) queryDerivationOutputNames(ctx context.Context) error {
	outputs, err := c.derivationOutputs(ctx)
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { w.Strings(sortedNames(outputs)) })
}

func sortedNames(m map[string]storepath.Path) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func (c *conn) registerDrvOutput(ctx context.Context) error {
	if minor(c.ver) < 31 {
		if _, err := c.readString("output id", wire.MaxPathLen); err != nil {
			return err
		}
		if _, err := c.readString("output path", wire.MaxPathLen); err != nil {
			return err
		}
	} else if _, err := c.readString("realisation", 1<<20); err != nil {
		return err
	}
	// Realisations matter for floating content-addressed derivations,
	// which the farm does not build yet; input-addressed outputs need none.
	return c.done(nil)
}

func (c *conn) queryRealisation(ctx context.Context) error {
	if _, err := c.readString("output id", wire.MaxPathLen); err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { w.Uint64(0) }) // an empty set, in either form
}

func (c *conn) queryMissing(ctx context.Context) error {
	paths, err := c.readDerivedPaths()
	if err != nil {
		return err
	}
	m, err := c.s.Builds.Missing(ctx, c.sess.Account, paths)
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) {
		w.Strings(storepath.Strings(storepath.Sorted(m.WillBuild)))
		w.Strings(storepath.Strings(storepath.Sorted(m.WillSubstitute)))
		w.Strings(storepath.Strings(storepath.Sorted(m.Unknown)))
		w.Uint64(m.DownloadSize)
		w.Uint64(m.NarSize)
	})
}
