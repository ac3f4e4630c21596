package serveproto

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/traffic"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// Builds is what the server needs from the coordinator.
type Builds interface {
	// BuildDerivation builds a BasicDerivation whose inputs are in the
	// farm store.
	BuildDerivation(ctx context.Context, req *build.Request) (*build.Result, error)
	// Realise makes derived paths valid, building derivations whose .drv
	// closures are in the farm store, dependencies first; one result per
	// path.
	Realise(ctx context.Context, paths []build.DerivedPath, opts build.Options, account string, logs build.Logs) ([]*build.Result, error)
}

// Server answers the serve protocol from the farm store.
type Server struct {
	// Store gives each session its account's view of the farm store.
	Store  store.Views
	Builds Builds
	// Upstream, if set, fetches paths from the farm's upstream binary
	// caches when a client asks with builders-use-substitutes.
	Upstream build.Upstream
	Log      *slog.Logger
	// TempDir holds spooled ImportPaths NARs ("" = os.TempDir()).
	TempDir string
	// Traffic, if set, is given the bytes each session moves for its
	// build requests (package traffic says which).
	Traffic traffic.Recorder

	onReply func(cmd uint64) // for tests: called after each command's reply is flushed
}

// Session is one client connection.
type Session struct {
	// Account is the authenticated account.
	Account string
	// Write allows commands that change the store or build
	// (`nix-store --serve --write`).
	Write bool
	// Stderr receives build logs and error messages; for ssh:// clients it
	// becomes the build log.
	Stderr io.Writer
}

// ErrProtocol is wrapped by errors caused by what the client sent.
var ErrProtocol = publicerr.Sentinel("serve protocol error")

// Serve runs one session until the client closes its side (a nil error) or
// something fails. The caller reports a non-nil error to the client (on
// stderr) and ends the session, as `nix-store --serve` does.
func (s *Server) Serve(ctx context.Context, in io.Reader, out io.Writer, sess *Session) error {
	r := wire.NewReader(in)
	w := wire.NewWriter(out)
	magic, err := r.Uint64()
	if err != nil {
		return fmt.Errorf("%w: reading handshake: %w", ErrProtocol, err)
	}
	if magic != Magic1 {
		return fmt.Errorf("%w: bad magic number 0x%x (want 0x%x): the client is not speaking the serve protocol", ErrProtocol, magic, Magic1)
	}
	w.Uint64(Magic2)
	w.Uint64(Version)
	if err := w.Flush(); err != nil {
		return err
	}
	clientVersion, err := r.Uint64()
	if err != nil {
		return fmt.Errorf("%w: reading client version: %w", ErrProtocol, err)
	}
	if major(clientVersion) != major(Version) || clientVersion < MinVersion {
		return fmt.Errorf("%w: client speaks serve protocol %d.%d; nixfarm supports 2.5 to 2.7: upgrade this client's Nix to 2.3 or newer (nix --version shows it)",
			ErrProtocol, clientVersion>>8, minor(clientVersion))
	}
	c := &serveConn{s: s, st: s.Store.For(sess.Account), r: r, w: w, sess: sess, ver: min(clientVersion, Version)}
	log := s.logger().With("account", sess.Account, "version", fmt.Sprintf("2.%d", minor(c.ver)))
	c.tr = traffic.New(s.Traffic, log)
	log.Info("client connected", "protocol", "serve", "client_version", fmt.Sprintf("%d.%d", major(clientVersion)>>8, minor(clientVersion)))
	for {
		if r.AtEOF() {
			return nil // clean end between commands
		}
		cmd, err := r.Uint64()
		if err != nil {
			return fmt.Errorf("reading command: %w", err)
		}
		command, ok := commands[cmd]
		if !ok {
			return fmt.Errorf("%w: unknown serve command %d (0x%x)", ErrProtocol, cmd, cmd)
		}
		if command.write && !sess.Write {
			return publicerr.New("%s is not allowed on a read-only connection (use `nix-store --serve --write`)", command.name)
		}
		start := time.Now()
		if err := command.run(c, ctx); err != nil {
			return fmt.Errorf("%s: %w", command.name, err)
		}
		if err := w.Flush(); err != nil {
			return fmt.Errorf("%s: writing reply: %w", command.name, err)
		}
		if s.onReply != nil {
			s.onReply(cmd)
		}
		log.Debug("serve command", "cmd", command.name, "duration", time.Since(start))
	}
}

func (s *Server) logger() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

type serveConn struct {
	s    *Server
	st   store.Store // the account's view
	r    *wire.Reader
	w    *wire.Writer
	sess *Session
	ver  uint64
	tr   *traffic.Session
}

// command is one serve-protocol command as the server runs it.
type command struct {
	name string
	// write marks commands that change the store or build, refused on
	// read-only sessions as stock nix-store --serve refuses them.
	write bool
	run   func(c *serveConn, ctx context.Context) error
}

var commands = map[uint64]command{
	cmdQueryValidPaths: {"QueryValidPaths", false, (*serveConn).queryValidPaths},
	cmdQueryPathInfos:  {"QueryPathInfos", false, (*serveConn).queryPathInfos},
	cmdDumpStorePath:   {"DumpStorePath", false, (*serveConn).dumpStorePath},
	cmdImportPaths:     {"ImportPaths", true, (*serveConn).importPaths},
	cmdExportPaths:     {"ExportPaths", false, (*serveConn).exportPaths},
	cmdBuildPaths:      {"BuildPaths", true, (*serveConn).buildPaths},
	cmdQueryClosure:    {"QueryClosure", false, (*serveConn).queryClosure},
	cmdBuildDerivation: {"BuildDerivation", true, (*serveConn).buildDerivation},
	cmdAddToStoreNar:   {"AddToStoreNar", true, (*serveConn).addToStoreNar},
}

func (c *serveConn) queryValidPaths(ctx context.Context) error {
	if _, err := c.r.Uint64(); err != nil { // lock: the farm store never collects garbage under a session
		return fmt.Errorf("reading lock flag: %w", err)
	}
	substitute, err := c.r.Uint64()
	if err != nil {
		return fmt.Errorf("reading substitute flag: %w", err)
	}
	paths, err := readPaths(c.r, "paths")
	if err != nil {
		return err
	}
	// builders-use-substitutes: the farm fetches from its upstream caches
	// what the client would otherwise upload.
	if substitute != 0 && c.s.Upstream != nil {
		if err := c.s.Upstream.Substitute(ctx, c.sess.Account, paths, &stderrProgress{w: c.sess.Stderr}); err != nil {
			c.s.logger().Warn("substituting paths a client asked for failed; it will upload them", "account", c.sess.Account, "err", err)
		}
	}
	valid, err := c.st.ValidPaths(ctx, paths)
	if err != nil {
		return err
	}
	return c.w.Strings(storepath.Strings(valid))
}

func (c *serveConn) queryPathInfos(ctx context.Context) error {
	paths, err := readPaths(c.r, "paths")
	if err != nil {
		return err
	}
	for _, p := range paths {
		info, err := c.st.QueryPathInfo(ctx, p)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		c.w.String(string(info.Path))
		c.w.String(string(info.Deriver))
		c.w.Strings(storepath.Strings(info.References))
		c.w.Uint64(info.NarSize) // download size: NARs are sent uncompressed
		c.w.Uint64(info.NarSize)
		if minor(c.ver) >= 4 {
			c.w.String(info.NarHash.String())
			c.w.String(info.CA)
			c.w.Strings(info.Sigs)
		}
	}
	return c.w.String("")
}

func (c *serveConn) readPath(what string) (storepath.Path, error) {
	s, err := c.r.String(wire.MaxPathLen)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", what, err)
	}
	p, err := storepath.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrProtocol, what, err)
	}
	return p, nil
}

func (c *serveConn) dumpStorePath(ctx context.Context) error {
	p, err := c.readPath("path")
	if err != nil {
		return err
	}
	return c.writeNar(ctx, p)
}

func (c *serveConn) writeNar(ctx context.Context, p storepath.Path) error {
	rc, _, err := c.st.NarFromPath(ctx, p)
	if err != nil {
		return err
	}
	defer rc.Close()
	n, err := c.w.ReadFrom(rc)
	if err != nil {
		return fmt.Errorf("sending NAR of %s: %w", p, err)
	}
	// Recorded before the reply is flushed: when the client has the
	// whole NAR, the record has its size.
	c.tr.Downloaded(ctx, p, n)
	return nil
}

func (c *serveConn) addToStoreNar(ctx context.Context) error {
	p, err := c.readPath("path")
	if err != nil {
		return err
	}
	info := &store.PathInfo{Path: p, Account: c.sess.Account}
	if info.Deriver, err = readOptionalPath(c.r, "deriver"); err != nil {
		return err
	}
	hashStr, err := c.r.String(256)
	if err != nil {
		return fmt.Errorf("reading narHash: %w", err)
	}
	if info.NarHash, err = nixhash.ParseAs(nixhash.SHA256, hashStr); err != nil {
		return fmt.Errorf("%w: narHash of %s: %w", ErrProtocol, p, err)
	}
	if info.References, err = readPaths(c.r, "references"); err != nil {
		return err
	}
	regTime, err := c.r.Uint64()
	if err != nil {
		return fmt.Errorf("reading registrationTime: %w", err)
	}
	_ = regTime // the farm records when it registered the path
	if info.NarSize, err = c.r.Uint64(); err != nil {
		return fmt.Errorf("reading narSize: %w", err)
	}
	if _, err = c.r.Uint64(); err != nil {
		return fmt.Errorf("reading ultimate: %w", err)
	}
	if info.Sigs, err = c.r.Strings(1024, 1024); err != nil {
		return fmt.Errorf("reading sigs: %w", err)
	}
	if info.CA, err = c.r.String(1024); err != nil {
		return fmt.Errorf("reading ca: %w", err)
	}
	if info.NarSize == 0 {
		return fmt.Errorf("%w: AddToStoreNar of %s has narSize 0", ErrProtocol, p)
	}
	src := &io.LimitedReader{R: c.r, N: int64(info.NarSize)}
	err = c.st.AddToStore(ctx, info, src)
	c.tr.Uploaded(int64(info.NarSize) - src.N)
	if err != nil {
		return fmt.Errorf("rejected %s: %w", p, err)
	}
	if src.N != 0 {
		return fmt.Errorf("%w: NAR of %s ended %d bytes before its declared narSize", ErrProtocol, p, src.N)
	}
	return c.w.Uint64(1)
}

func (c *serveConn) importPaths(ctx context.Context) error {
	for {
		n, err := c.r.Uint64()
		if err != nil {
			return fmt.Errorf("reading export stream: %w", err)
		}
		if n == 0 {
			break
		}
		if n != 1 {
			return fmt.Errorf("%w: input does not look like `nix-store --export` output (marker %d)", ErrProtocol, n)
		}
		if err := c.importOne(ctx); err != nil {
			return err
		}
	}
	return c.w.Uint64(1)
}

// importOne reads one exported path. The NAR comes before the path's
// metadata, so it is spooled to a temporary file first.
func (c *serveConn) importOne(ctx context.Context) error {
	spool, err := os.CreateTemp(c.s.TempDir, "import-*.nar")
	if err != nil {
		return err
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	n, err := nar.Copy(spool, c.r)
	c.tr.Uploaded(n)
	if err != nil {
		return fmt.Errorf("%w: reading exported NAR: %w", ErrProtocol, err)
	}
	magic, err := c.r.Uint64()
	if err != nil {
		return fmt.Errorf("reading export trailer: %w", err)
	}
	if magic != exportMagic {
		return fmt.Errorf("%w: export trailer magic 0x%x (want 0x%x)", ErrProtocol, magic, exportMagic)
	}
	p, err := c.readPath("path")
	if err != nil {
		return err
	}
	info := &store.PathInfo{Path: p, Account: c.sess.Account}
	if info.References, err = readPaths(c.r, "references"); err != nil {
		return err
	}
	if info.Deriver, err = readOptionalPath(c.r, "deriver"); err != nil {
		return err
	}
	hasSig, err := c.r.Uint64()
	if err != nil {
		return fmt.Errorf("reading legacy signature flag: %w", err)
	}
	if hasSig == 1 {
		if err := c.r.Discard(4096); err != nil {
			return fmt.Errorf("reading legacy signature: %w", err)
		}
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := c.st.AddToStore(ctx, info, spool); err != nil {
		return fmt.Errorf("rejected %s: %w", p, err)
	}
	return nil
}

func (c *serveConn) exportPaths(ctx context.Context) error {
	if _, err := c.r.Uint64(); err != nil {
		return fmt.Errorf("reading sign flag: %w", err)
	}
	paths, err := readPaths(c.r, "paths")
	if err != nil {
		return err
	}
	infos := make([]*store.PathInfo, 0, len(paths))
	for _, p := range paths {
		info, err := c.st.QueryPathInfo(ctx, p)
		if err != nil {
			return err
		}
		infos = append(infos, info)
	}
	sorted, err := store.TopoSort(infos)
	if err != nil {
		return err
	}
	for _, info := range sorted {
		c.w.Uint64(1)
		if err := c.writeNar(ctx, info.Path); err != nil {
			return err
		}
		c.w.Uint64(exportMagic)
		c.w.String(string(info.Path))
		c.w.Strings(storepath.Strings(info.References))
		c.w.String(string(info.Deriver))
		c.w.Uint64(0)
	}
	return c.w.Uint64(0)
}

func (c *serveConn) queryClosure(ctx context.Context) error {
	includeOutputs, err := c.r.Bool()
	if err != nil {
		return fmt.Errorf("reading includeOutputs: %w", err)
	}
	paths, err := readPaths(c.r, "paths")
	if err != nil {
		return err
	}
	closure, err := c.st.Closure(ctx, paths)
	if err != nil {
		return err
	}
	if includeOutputs {
		if closure, err = c.withOutputs(ctx, closure); err != nil {
			return err
		}
	}
	return c.w.Strings(storepath.Strings(closure))
}

// withOutputs adds to a closure the valid outputs of the derivations in it,
// and their closures.
func (c *serveConn) withOutputs(ctx context.Context, closure []storepath.Path) ([]storepath.Path, error) {
	var outs []storepath.Path
	for _, p := range closure {
		if !p.IsDerivation() {
			continue
		}
		drv, err := store.ReadDerivation(ctx, c.st, p)
		if err != nil {
			return nil, err
		}
		for _, o := range drv.Outputs {
			if op, err := storepath.Parse(o.Path); err == nil {
				outs = append(outs, op)
			}
		}
	}
	valid, err := c.st.ValidPaths(ctx, outs)
	if err != nil || len(valid) == 0 {
		return closure, err
	}
	return c.st.Closure(ctx, append(closure, valid...))
}

func (c *serveConn) buildPaths(ctx context.Context) error {
	ss, err := c.r.Strings(wire.MaxListLen, wire.MaxPathLen)
	if err != nil {
		return fmt.Errorf("reading paths: %w", err)
	}
	paths := make([]build.DerivedPath, 0, len(ss))
	for _, s := range ss {
		p, err := build.ParseLegacyDerivedPath(s)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		paths = append(paths, p)
	}
	opts, err := readOptions(c.r, c.ver)
	if err != nil {
		return err
	}
	results, err := c.s.Builds.Realise(ctx, paths, opts, c.sess.Account, build.LogWriter{W: c.sess.Stderr})
	if err != nil {
		results = []*build.Result{{Status: build.MiscFailure, ErrorMsg: publicerr.Message(ctx, c.s.logger(), err, "build could not run", "account", c.sess.Account)}}
	}
	c.tr.Requested(ctx, results...)
	for _, res := range results {
		if !res.Status.Success() {
			// Any status but 0 means failure here, and the client reads
			// a message after it.
			c.w.Uint64(uint64(res.Status))
			return c.w.String(res.ErrorMsg)
		}
	}
	return c.w.Uint64(0)
}

func (c *serveConn) buildDerivation(ctx context.Context) error {
	drvPath, err := c.readPath("drvPath")
	if err != nil {
		return err
	}
	if !drvPath.IsDerivation() {
		return fmt.Errorf("%w: drvPath %s does not end in .drv", ErrProtocol, drvPath)
	}
	drv, err := derivation.ReadBasic(c.r, drvPath.Name()[:len(drvPath.Name())-len(".drv")])
	if err != nil {
		return fmt.Errorf("%w: derivation %s: %w", ErrProtocol, drvPath, err)
	}
	opts, err := readOptions(c.r, c.ver)
	if err != nil {
		return err
	}
	res, err := c.s.Builds.BuildDerivation(ctx, &build.Request{
		DrvPath: drvPath, Drv: drv, Options: opts, Account: c.sess.Account, Log: c.sess.Stderr, OnQueue: c.queueLine,
	})
	if err != nil {
		// The build could not run at all. Report it as a build failure
		// with the reason, so the client prints it, and keep serving.
		res = &build.Result{Status: build.MiscFailure, ErrorMsg: fmt.Sprintf("nixfarm could not build %s: %s", drvPath,
			publicerr.Message(ctx, c.s.logger(), err, "build could not run", "account", c.sess.Account, "drv", drvPath))}
	}
	c.tr.Requested(ctx, res)
	return c.writeResult(res)
}

func (c *serveConn) writeResult(res *build.Result) error {
	c.w.Uint64(uint64(res.Status))
	c.w.String(res.ErrorMsg)
	if minor(c.ver) >= 3 {
		c.w.Uint64(res.TimesBuilt)
		c.w.Bool(false) // isNonDeterministic
		c.w.Uint64(unixTime(res.StartTime))
		c.w.Uint64(unixTime(res.StopTime))
	}
	if minor(c.ver) >= 6 {
		return writeBuiltOutputs(c.w, res)
	}
	return c.w.Err()
}

func unixTime(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(t.Unix())
}

func seconds(s uint64) time.Duration {
	const maxSeconds = uint64(1<<63-1) / uint64(time.Second)
	if s > maxSeconds {
		s = maxSeconds
	}
	return time.Duration(s) * time.Second
}

// stderrProgress tells an ssh:// client what the farm fetches from
// upstream caches, in the lines a stock nix-store --serve prints.
type stderrProgress struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *stderrProgress) Copying(path storepath.Path, from string) func(error) {
	p.line(fmt.Sprintf("copying path '%s' from '%s'...", path, from))
	return func(error) {}
}

func (p *stderrProgress) Warning(msg string) { p.line("warning: " + msg) }

func (p *stderrProgress) line(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.w != nil {
		io.WriteString(p.w, s+"\n")
	}
}
