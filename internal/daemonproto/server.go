package daemonproto

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
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
	// Realise makes derived paths valid, building .drv closures from the
	// farm store dependencies first; one result per path.
	Realise(ctx context.Context, paths []build.DerivedPath, opts build.Options, account string, logs build.Logs) ([]*build.Result, error)
	// Missing reports what Realise would build, and what it cannot have.
	Missing(ctx context.Context, account string, paths []build.DerivedPath) (*build.Missing, error)
	// OutputMap lists a stored derivation's outputs and their known paths.
	OutputMap(ctx context.Context, account string, drvPath storepath.Path) (map[string]storepath.Path, error)
	// AddBuildLog keeps a build log a client uploads.
	AddBuildLog(ctx context.Context, drvPath storepath.Path, account string, log []byte) error
}

// Server answers the worker protocol from the farm store.
type Server struct {
	// Store gives each session its account's view of the farm store.
	Store  store.Views
	Builds Builds
	// Upstream, if set, offers and fetches paths from the farm's upstream
	// binary caches (builders-use-substitutes, QuerySubstitutablePathInfos).
	Upstream build.Upstream
	Log      *slog.Logger
	// NixVersion is what the server calls itself in the handshake (1.33
	// and later); clients show it in `nix store ping`.
	NixVersion string
	// TempDir holds uploads that must be spooled ("" = os.TempDir()).
	TempDir string
	// Traffic, if set, is given the bytes each session moves for its
	// build requests (package traffic says which).
	Traffic traffic.Recorder

	onOp func(Op) // for tests: called before each operation
}

// Session is one client connection.
type Session struct {
	// Account is the authenticated account.
	Account string
}

// conn is the state of one connection.
type conn struct {
	s    *Server
	st   store.Store // the account's view
	sess *Session
	r    *wire.Reader
	out  *frameWriter
	ver  uint64
	// clientVersion and clientFeatures are what the client offered in
	// the handshake (features from 1.38 on).
	clientVersion  uint64
	clientFeatures []string
	opts           build.Options
	log            *slog.Logger
	tr             *traffic.Session
	// replied is set once an operation's STDERR_LAST is written: an error
	// after it can no longer be reported.
	replied bool
}

// Serve runs one connection until the client closes it (a nil error), or
// until the client sends something that makes the stream unusable, which
// is reported to it before the error is returned. Errors of a single
// operation are reported to the client and the connection goes on.
func (s *Server) Serve(ctx context.Context, in io.Reader, out io.Writer, sess *Session) error {
	c := &conn{s: s, st: s.Store.For(sess.Account), sess: sess, r: wire.NewReader(in), out: &frameWriter{w: wire.NewWriter(out)}}
	c.log = s.logger().With("account", sess.Account)
	c.tr = traffic.New(s.Traffic, c.log)
	if err := c.handshake(); err != nil {
		if c.ver != 0 {
			c.out.failure(publicerr.Message(ctx, c.log, err, "handshake failed"))
		}
		return err
	}
	c.log = c.log.With("version", versionString(c.ver))
	// Which clients a farm serves is worth knowing at a glance, and a
	// feature nixfarm lacks shows up here first.
	c.log.Info("client connected", "protocol", "daemon", "client_version", versionString(c.clientVersion),
		"client_features", loggable(c.clientFeatures), "features", serverFeatures)
	for {
		if c.r.AtEOF() {
			return nil
		}
		raw, err := c.r.Uint64()
		if err != nil {
			return fmt.Errorf("reading operation: %w", err)
		}
		op := Op(raw)
		if c.s.onOp != nil {
			c.s.onOp(op)
		}
		start := time.Now()
		err = c.dispatch(ctx, op)
		if err != nil {
			var fatal *fatalError
			isFatal := errors.As(err, &fatal)
			// Only a public message reaches the client; anything else is
			// logged under an id the client is given.
			msg := publicerr.Message(ctx, c.log, err, "operation failed", "op", op.String())
			if ferr := c.out.failure(fmt.Sprintf("%s: %s", op, msg)); ferr != nil {
				return ferr
			}
			if isFatal {
				return fmt.Errorf("%s: %w", op, err)
			}
			if publicerr.Is(err) {
				c.log.Info("operation failed", "op", op.String(), "err", err)
			}
		} else {
			c.out.mu.Lock()
			ferr := c.out.flushLocked()
			c.out.mu.Unlock()
			if ferr != nil {
				return fmt.Errorf("%s: writing reply: %w", op, ferr)
			}
		}
		c.log.Debug("daemon operation", "op", op.String(), "duration", time.Since(start))
	}
}

func (s *Server) logger() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

// fatalError marks an error after which the stream cannot be trusted: the
// request could not be read in full.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

func fatal(err error) error {
	if err == nil {
		return nil
	}
	var f *fatalError
	if errors.As(err, &f) {
		return err
	}
	return &fatalError{err}
}

func (c *conn) handshake() error {
	magic, err := c.r.Uint64()
	if err != nil {
		return fmt.Errorf("%w: reading handshake: %w", ErrProtocol, err)
	}
	if magic != Magic1 {
		return fmt.Errorf("%w: bad magic number 0x%x (want 0x%x): the client is not speaking the daemon protocol", ErrProtocol, magic, Magic1)
	}
	c.out.w.Uint64(Magic2)
	c.out.w.Uint64(Version)
	if err := c.out.w.Flush(); err != nil {
		return err
	}
	clientVersion, err := c.r.Uint64()
	if err != nil {
		return fmt.Errorf("%w: reading client version: %w", ErrProtocol, err)
	}
	c.clientVersion = clientVersion
	if major(clientVersion) != major(Version) || minor(clientVersion) < 10 {
		// Too old to understand an error frame: just end the connection.
		return fmt.Errorf("%w: client speaks protocol %s; nixfarm needs 1.21 (Nix 2.3) or newer: upgrade this client's Nix (nix --version shows it)", ErrProtocol, versionString(clientVersion))
	}
	c.ver = min(clientVersion, Version)
	c.out.ver = c.ver
	if clientVersion < MinVersion {
		return fmt.Errorf("%w: client speaks protocol %s; nixfarm needs 1.21 (Nix 2.3) or newer: upgrade this client's Nix (nix --version shows it)", ErrProtocol, versionString(clientVersion))
	}
	if minor(c.ver) >= 38 {
		// Both sides name the features they support; the connection uses
		// those both named. The client's go first.
		if c.clientFeatures, err = c.r.Strings(64, 256); err != nil {
			return fmt.Errorf("%w: reading features: %w", ErrProtocol, err)
		}
		c.out.w.Strings(serverFeatures)
		if err := c.out.w.Flush(); err != nil {
			return err
		}
	}
	if minor(c.ver) >= 14 {
		affinity, err := c.r.Uint64()
		if err != nil {
			return fmt.Errorf("%w: reading CPU affinity: %w", ErrProtocol, err)
		}
		if affinity != 0 {
			if _, err := c.r.Uint64(); err != nil {
				return fmt.Errorf("%w: reading CPU affinity: %w", ErrProtocol, err)
			}
		}
	}
	if minor(c.ver) >= 11 {
		if _, err := c.r.Uint64(); err != nil { // reserveSpace, obsolete
			return fmt.Errorf("%w: reading reserveSpace: %w", ErrProtocol, err)
		}
	}
	if minor(c.ver) >= 33 {
		c.out.w.String(c.s.nixVersion())
	}
	if minor(c.ver) >= 35 {
		c.out.w.Uint64(1) // trusted: an SSH key identifies an account that may build
	}
	c.out.last()
	return c.out.w.Flush()
}

// loggable bounds what a client's feature list puts in the log: the
// protocol allows 64 names of 256 bytes, more than a log line should hold.
func loggable(features []string) []string {
	const maxNames, maxLen = 8, 64
	out := make([]string, 0, min(len(features), maxNames+1))
	for i, f := range features {
		if i == maxNames {
			out = append(out, fmt.Sprintf("(and %d more)", len(features)-maxNames))
			break
		}
		if len(f) > maxLen {
			f = f[:maxLen] + "..."
		}
		out = append(out, f)
	}
	return out
}

func (s *Server) nixVersion() string {
	if s.NixVersion != "" {
		return s.NixVersion
	}
	return "nixfarm"
}

// readPath reads a store path argument.
func (c *conn) readPath(what string) (storepath.Path, error) {
	s, err := c.r.String(wire.MaxPathLen)
	if err != nil {
		return "", fatal(fmt.Errorf("reading %s: %w", what, err))
	}
	p, err := storepath.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err) // the stream is intact
	}
	return p, nil
}

// readPaths reads a list of store paths.
func (c *conn) readPaths(what string) ([]storepath.Path, error) {
	ss, err := c.r.Strings(wire.MaxListLen, wire.MaxPathLen)
	if err != nil {
		return nil, fatal(fmt.Errorf("reading %s: %w", what, err))
	}
	ps, err := storepath.ParseList(ss)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return ps, nil
}

func (c *conn) readUint(what string) (uint64, error) {
	v, err := c.r.Uint64()
	if err != nil {
		return 0, fatal(fmt.Errorf("reading %s: %w", what, err))
	}
	return v, nil
}

func (c *conn) readString(what string, max uint64) (string, error) {
	s, err := c.r.String(max)
	if err != nil {
		return "", fatal(fmt.Errorf("reading %s: %w", what, err))
	}
	return s, nil
}

// readDerivedPaths reads a list of derived paths in the form of the
// client's version.
func (c *conn) readDerivedPaths() ([]build.DerivedPath, error) {
	ss, err := c.r.Strings(wire.MaxListLen, wire.MaxPathLen)
	if err != nil {
		return nil, fatal(fmt.Errorf("reading derived paths: %w", err))
	}
	parse := build.ParseDerivedPath
	if minor(c.ver) < 30 {
		parse = build.ParseLegacyDerivedPath
	}
	out := make([]build.DerivedPath, 0, len(ss))
	var bad error
	for _, s := range ss {
		d, err := parse(s)
		if err != nil && bad == nil {
			bad = err
		}
		out = append(out, d)
	}
	return out, bad
}

// writePathInfo writes a path's metadata (Nix's ValidPathInfo), with the
// path first if keyed.
func writePathInfo(w *wire.Writer, ver uint64, info *store.PathInfo, keyed bool) {
	if keyed {
		w.String(string(info.Path))
	}
	w.String(string(info.Deriver))
	w.String(info.NarHash.Hex())
	w.Strings(storepath.Strings(info.References))
	w.Uint64(unixTime(info.RegistrationTime))
	w.Uint64(info.NarSize)
	if minor(ver) >= 16 {
		w.Bool(info.Ultimate)
		w.Strings(info.Sigs)
		w.String(info.CA)
	}
}

// writeBuildResult writes a BuildResult, gated on the version.
func writeBuildResult(w *wire.Writer, ver uint64, res *build.Result) {
	w.Uint64(uint64(res.Status))
	w.String(res.ErrorMsg)
	if minor(ver) >= 29 {
		w.Uint64(res.TimesBuilt)
		w.Bool(false) // isNonDeterministic
		w.Uint64(unixTime(res.StartTime))
		w.Uint64(unixTime(res.StopTime))
	}
	if minor(ver) >= 37 {
		w.Uint64(0) // cpuUser: unknown
		w.Uint64(0) // cpuSystem: unknown
	}
	if minor(ver) >= 28 {
		outs := res.BuiltOutputs()
		w.Uint64(uint64(len(outs)))
		for _, r := range outs {
			w.String(r.ID)
			w.Bytes(r.JSON())
		}
	}
}

func unixTime(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(t.Unix())
}
