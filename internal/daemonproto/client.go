package daemonproto

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/narinfo"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// Client drives a daemon-protocol server. It can speak any version from
// 1.21 to 1.38, which makes it a stand-in for older and newer Nix clients
// in tests. It must not be used from several goroutines at once.
type Client struct {
	r *wire.Reader
	w *wire.Writer
	// Version is the negotiated version: the lower of the two sides'.
	Version uint64
	// DaemonVersion, NixVersion and Trust are what the server announced
	// (Trust: 0 unknown, 1 trusted, 2 not trusted).
	DaemonVersion uint64
	NixVersion    string
	Trust         uint64
	// OnMessage receives STDERR_NEXT text; OnLogLine receives build log
	// lines. Either may be nil.
	OnMessage func(msg string)
	OnLogLine func(line string)
	// OnActivity hears activities start (stopped false) and stop (typ
	// 0 and text empty); it may be nil.
	OnActivity func(id, typ uint64, text string, stopped bool)
}

// NewClient performs the handshake, announcing version (0 = Version).
func NewClient(r io.Reader, w io.Writer, version uint64) (*Client, error) {
	if version == 0 {
		version = Version
	}
	c := &Client{r: wire.NewReader(r), w: wire.NewWriter(w)}
	c.w.Uint64(Magic1)
	if err := c.w.Flush(); err != nil {
		return nil, fmt.Errorf("daemon handshake: %w", err)
	}
	magic, err := c.r.Uint64()
	if err != nil {
		return nil, fmt.Errorf("daemon handshake: reading magic: %w", err)
	}
	if magic != Magic2 {
		return nil, fmt.Errorf("daemon handshake: bad magic 0x%x", magic)
	}
	if c.DaemonVersion, err = c.r.Uint64(); err != nil {
		return nil, fmt.Errorf("daemon handshake: reading version: %w", err)
	}
	if major(c.DaemonVersion) != major(Version) || minor(c.DaemonVersion) < 10 {
		return nil, fmt.Errorf("daemon handshake: unsupported daemon version %s", versionString(c.DaemonVersion))
	}
	c.Version = min(version, c.DaemonVersion)
	c.w.Uint64(version)
	if minor(c.Version) >= 38 {
		c.w.Strings(nil)
		if err := c.w.Flush(); err != nil {
			return nil, err
		}
		if _, err := c.r.Strings(64, 256); err != nil {
			return nil, fmt.Errorf("daemon handshake: reading features: %w", err)
		}
	}
	if minor(c.Version) >= 14 {
		c.w.Uint64(0) // no CPU affinity
	}
	if minor(c.Version) >= 11 {
		c.w.Uint64(0) // reserveSpace
	}
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	if minor(c.Version) >= 33 {
		if c.NixVersion, err = c.r.String(1024); err != nil {
			return nil, fmt.Errorf("daemon handshake: reading Nix version: %w", err)
		}
	}
	if minor(c.Version) >= 35 {
		if c.Trust, err = c.r.Uint64(); err != nil {
			return nil, fmt.Errorf("daemon handshake: reading trust: %w", err)
		}
	}
	if err := c.processStderr(nil); err != nil {
		return nil, fmt.Errorf("daemon handshake: %w", err)
	}
	return c, nil
}

// processStderr reads log frames up to STDERR_LAST (nil) or STDERR_ERROR
// (a *RemoteError). source answers STDERR_READ requests.
func (c *Client) processStderr(source io.Reader) error {
	if err := c.w.Flush(); err != nil {
		return err
	}
	for {
		msg, err := c.r.Uint64()
		if err != nil {
			return fmt.Errorf("reading log frame: %w", err)
		}
		switch msg {
		case stderrLast:
			return nil
		case stderrError:
			return c.readError()
		case stderrNext:
			s, err := c.r.String(wire.MaxStringLen)
			if err != nil {
				return err
			}
			if c.OnMessage != nil {
				c.OnMessage(s)
			}
		case stderrRead:
			n, err := c.r.Uint64()
			if err != nil {
				return err
			}
			if source == nil {
				return errors.New("the daemon asked for data, but there is none to send")
			}
			buf := make([]byte, min(n, 1<<20))
			k, err := io.ReadFull(source, buf)
			if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
				return err
			}
			c.w.Bytes(buf[:k])
			if err := c.w.Flush(); err != nil {
				return err
			}
		case stderrWrite:
			if err := c.r.Discard(wire.MaxStringLen); err != nil {
				return err
			}
		case stderrStartActivity:
			var head [3]uint64 // id, level, type
			for i := range head {
				if head[i], err = c.r.Uint64(); err != nil {
					return err
				}
			}
			text, err := c.r.String(wire.MaxStringLen)
			if err != nil {
				return err
			}
			if _, err := c.readFields(); err != nil {
				return err
			}
			if _, err := c.r.Uint64(); err != nil { // parent
				return err
			}
			if c.OnActivity != nil {
				c.OnActivity(head[0], head[2], text, false)
			}
		case stderrStopActivity:
			id, err := c.r.Uint64()
			if err != nil {
				return err
			}
			if c.OnActivity != nil {
				c.OnActivity(id, 0, "", true)
			}
		case stderrResult:
			if _, err := c.r.Uint64(); err != nil { // activity
				return err
			}
			typ, err := c.r.Uint64()
			if err != nil {
				return err
			}
			fields, err := c.readFields()
			if err != nil {
				return err
			}
			if typ == resBuildLogLine && len(fields) > 0 && c.OnLogLine != nil {
				c.OnLogLine(fields[0])
			}
		default:
			return fmt.Errorf("%w: unknown log frame 0x%x", ErrProtocol, msg)
		}
	}
}

// readFields reads activity fields, returning the string ones.
func (c *Client) readFields() ([]string, error) {
	n, err := c.r.Uint64()
	if err != nil {
		return nil, err
	}
	if n > 1024 {
		return nil, fmt.Errorf("%w: %d activity fields", ErrProtocol, n)
	}
	var out []string
	for i := uint64(0); i < n; i++ {
		typ, err := c.r.Uint64()
		if err != nil {
			return nil, err
		}
		switch typ {
		case fieldTypeInt:
			if _, err := c.r.Uint64(); err != nil {
				return nil, err
			}
		case fieldTypeString:
			s, err := c.r.String(wire.MaxStringLen)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		default:
			return nil, fmt.Errorf("%w: activity field type %d", ErrProtocol, typ)
		}
	}
	return out, nil
}

func (c *Client) readError() error {
	if minor(c.Version) >= 26 {
		var e RemoteError
		if _, err := c.r.String(64); err != nil { // "Error"
			return err
		}
		if _, err := c.r.Uint64(); err != nil { // level
			return err
		}
		if _, err := c.r.String(1024); err != nil { // name, unused
			return err
		}
		msg, err := c.r.String(wire.MaxStringLen)
		if err != nil {
			return err
		}
		e.Message = msg
		if havePos, err := c.r.Uint64(); err != nil || havePos != 0 {
			return fmt.Errorf("%w: error with a position (%d, %v)", ErrProtocol, havePos, err)
		}
		traces, err := c.r.Uint64()
		if err != nil {
			return err
		}
		for i := uint64(0); i < traces && i < 1024; i++ {
			if havePos, err := c.r.Uint64(); err != nil || havePos != 0 {
				return fmt.Errorf("%w: trace with a position", ErrProtocol)
			}
			t, err := c.r.String(wire.MaxStringLen)
			if err != nil {
				return err
			}
			e.Message += "\n" + t
		}
		return &e
	}
	msg, err := c.r.String(wire.MaxStringLen)
	if err != nil {
		return err
	}
	status, err := c.r.Uint64()
	if err != nil {
		return err
	}
	return &RemoteError{Message: msg, Status: status}
}

// call sends an operation whose arguments args writes, and reads the log
// frames up to the reply.
func (c *Client) call(op Op, args func(w *wire.Writer)) error {
	c.w.Uint64(uint64(op))
	if args != nil {
		args(c.w)
	}
	if err := c.processStderr(nil); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// IsValidPath asks whether the daemon holds a path.
func (c *Client) IsValidPath(p storepath.Path) (bool, error) {
	if err := c.call(OpIsValidPath, func(w *wire.Writer) { w.String(string(p)) }); err != nil {
		return false, err
	}
	return c.r.Bool()
}

// QueryValidPaths returns the subset of paths the daemon holds.
func (c *Client) QueryValidPaths(paths []storepath.Path, substitute bool) ([]storepath.Path, error) {
	err := c.call(OpQueryValidPaths, func(w *wire.Writer) {
		w.Strings(storepath.Strings(paths))
		if minor(c.Version) >= 27 {
			w.Bool(substitute)
		}
	})
	if err != nil {
		return nil, err
	}
	return c.readPaths()
}

func (c *Client) readPaths() ([]storepath.Path, error) {
	ss, err := c.r.Strings(wire.MaxListLen, wire.MaxPathLen)
	if err != nil {
		return nil, err
	}
	return storepath.ParseList(ss)
}

// QueryPathInfo returns a path's metadata, or nil if it is not valid.
func (c *Client) QueryPathInfo(p storepath.Path) (*store.PathInfo, error) {
	if err := c.call(OpQueryPathInfo, func(w *wire.Writer) { w.String(string(p)) }); err != nil {
		var re *RemoteError
		if minor(c.Version) < 17 && errors.As(err, &re) && strings.Contains(re.Message, "is not valid") {
			return nil, nil
		}
		return nil, err
	}
	if minor(c.Version) >= 17 {
		valid, err := c.r.Bool()
		if err != nil || !valid {
			return nil, err
		}
	}
	info, err := readPathInfo(c.r, c.Version, p)
	if err != nil {
		return nil, err
	}
	return info, nil
}

// AddToStoreNar uploads a path in the NAR transfer style of the
// negotiated version: framed (1.23+), pulled with STDERR_READ (1.21,
// 1.22) or inline.
func (c *Client) AddToStoreNar(info *store.PathInfo, narSrc io.Reader) error {
	c.w.Uint64(uint64(OpAddToStoreNar))
	c.w.String(string(info.Path))
	writePathInfo(c.w, c.Version, info, false)
	c.w.Bool(false) // repair
	c.w.Bool(true)  // dontCheckSigs
	src := io.LimitReader(narSrc, int64(info.NarSize))
	var err error
	switch {
	case minor(c.Version) >= 23:
		if err = writeFramed(c.w, src); err == nil {
			err = c.processStderr(nil)
		}
	case minor(c.Version) >= 21:
		err = c.processStderr(src)
	default:
		if _, err = c.w.ReadFrom(src); err == nil {
			err = c.processStderr(nil)
		}
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", OpAddToStoreNar, info.Path, err)
	}
	return nil
}

// writeFramed sends src as a framed stream.
func writeFramed(w *wire.Writer, src io.Reader) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			w.Uint64(uint64(n))
			w.Write(buf[:n])
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	return w.Uint64(0)
}

// AddMultipleToStore uploads several paths, dependencies first, in one
// framed stream (1.32 and later).
func (c *Client) AddMultipleToStore(infos []*store.PathInfo, nars []io.Reader) error {
	c.w.Uint64(uint64(OpAddMultipleToStore))
	c.w.Bool(false) // repair
	c.w.Bool(true)  // dontCheckSigs
	pr, pw := io.Pipe()
	go func() {
		bw := bufio.NewWriter(pw)
		w := wire.NewWriter(bw)
		w.Uint64(uint64(len(infos)))
		for i, info := range infos {
			w.String(string(info.Path))
			writePathInfo(w, 16, info, false)
			w.ReadFrom(io.LimitReader(nars[i], int64(info.NarSize)))
		}
		pw.CloseWithError(w.Flush())
	}()
	err := writeFramed(c.w, pr)
	pr.Close()
	if err == nil {
		err = c.processStderr(nil)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", OpAddMultipleToStore, err)
	}
	return nil
}

// AddTextToStore adds a text file (a .drv, say) and returns its path, with
// the method of the negotiated version.
func (c *Client) AddTextToStore(name, text string, refs []storepath.Path) (storepath.Path, error) {
	if minor(c.Version) < 25 {
		err := c.call(OpAddTextToStore, func(w *wire.Writer) {
			w.String(name)
			w.String(text)
			w.Strings(storepath.Strings(refs))
		})
		if err != nil {
			return "", err
		}
		s, err := c.r.String(wire.MaxPathLen)
		if err != nil {
			return "", err
		}
		return storepath.Parse(s)
	}
	c.w.Uint64(uint64(OpAddToStore))
	c.w.String(name)
	c.w.String("text:sha256")
	c.w.Strings(storepath.Strings(refs))
	c.w.Bool(false) // repair
	if err := writeFramed(c.w, strings.NewReader(text)); err != nil {
		return "", err
	}
	if err := c.processStderr(nil); err != nil {
		return "", fmt.Errorf("%s: %w", OpAddToStore, err)
	}
	s, err := c.r.String(wire.MaxPathLen)
	if err != nil {
		return "", err
	}
	p, err := storepath.Parse(s)
	if err != nil {
		return "", err
	}
	if _, err := readPathInfo(c.r, c.Version, p); err != nil {
		return "", err
	}
	return p, nil
}

// NarFromPath copies a path's NAR to dst.
func (c *Client) NarFromPath(p storepath.Path, dst io.Writer) (int64, error) {
	if err := c.call(OpNarFromPath, func(w *wire.Writer) { w.String(string(p)) }); err != nil {
		return 0, err
	}
	return nar.Copy(dst, c.r)
}

// BuildDerivation builds a BasicDerivation on the daemon.
func (c *Client) BuildDerivation(drvPath storepath.Path, drv *derivation.Basic) (*build.Result, error) {
	c.w.Uint64(uint64(OpBuildDerivation))
	c.w.String(string(drvPath))
	if err := drv.Write(c.w); err != nil {
		return nil, err
	}
	c.w.Uint64(0) // normal build
	if err := c.processStderr(nil); err != nil {
		return nil, fmt.Errorf("%s: %w", OpBuildDerivation, err)
	}
	return readBuildResult(c.r, c.Version)
}

func (c *Client) writeDerivedPaths(w *wire.Writer, paths []build.DerivedPath) error {
	ss := make([]string, len(paths))
	for i, p := range paths {
		if minor(c.Version) >= 30 {
			ss[i] = p.String()
		} else {
			s, err := p.LegacyString()
			if err != nil {
				return err
			}
			ss[i] = s
		}
	}
	return w.Strings(ss)
}

// BuildPaths makes derived paths valid; a failed build is an error.
func (c *Client) BuildPaths(paths []build.DerivedPath) error {
	c.w.Uint64(uint64(OpBuildPaths))
	if err := c.writeDerivedPaths(c.w, paths); err != nil {
		return err
	}
	if minor(c.Version) >= 15 {
		c.w.Uint64(0)
	}
	if err := c.processStderr(nil); err != nil {
		return fmt.Errorf("%s: %w", OpBuildPaths, err)
	}
	_, err := c.r.Uint64()
	return err
}

// BuildPathsWithResults makes derived paths valid and returns a result per
// path (1.34 and later).
func (c *Client) BuildPathsWithResults(paths []build.DerivedPath) ([]*build.Result, error) {
	c.w.Uint64(uint64(OpBuildPathsWithResults))
	if err := c.writeDerivedPaths(c.w, paths); err != nil {
		return nil, err
	}
	c.w.Uint64(0)
	if err := c.processStderr(nil); err != nil {
		return nil, fmt.Errorf("%s: %w", OpBuildPathsWithResults, err)
	}
	n, err := c.r.Uint64()
	if err != nil {
		return nil, err
	}
	if n > wire.MaxListLen {
		return nil, fmt.Errorf("%w: %d build results", ErrProtocol, n)
	}
	results := make([]*build.Result, 0, n)
	for i := uint64(0); i < n; i++ {
		if err := c.r.Discard(wire.MaxPathLen); err != nil { // the derived path
			return nil, err
		}
		res, err := readBuildResult(c.r, c.Version)
		if err != nil {
			return nil, err
		}
		results = append(results, res)
	}
	return results, nil
}

// QueryMissing asks what the daemon would build for paths.
func (c *Client) QueryMissing(paths []build.DerivedPath) (willBuild, unknown []storepath.Path, err error) {
	m, err := c.QueryMissingAll(paths)
	if err != nil {
		return nil, nil, err
	}
	return m.WillBuild, m.Unknown, nil
}

// QueryMissingAll is QueryMissing with what would be substituted and
// its sizes.
func (c *Client) QueryMissingAll(paths []build.DerivedPath) (*build.Missing, error) {
	c.w.Uint64(uint64(OpQueryMissing))
	if err := c.writeDerivedPaths(c.w, paths); err != nil {
		return nil, err
	}
	if err := c.processStderr(nil); err != nil {
		return nil, fmt.Errorf("%s: %w", OpQueryMissing, err)
	}
	m := &build.Missing{}
	var err error
	if m.WillBuild, err = c.readPaths(); err != nil {
		return nil, err
	}
	if m.WillSubstitute, err = c.readPaths(); err != nil {
		return nil, err
	}
	if m.Unknown, err = c.readPaths(); err != nil {
		return nil, err
	}
	if m.DownloadSize, err = c.r.Uint64(); err != nil {
		return nil, err
	}
	m.NarSize, err = c.r.Uint64()
	return m, err
}

// QuerySubstitutablePathInfos asks what the daemon's substituters say of
// paths: for each one they have, its deriver, references and sizes (as
// narinfo.NarInfo's fields; protocol 1.22 and later).
func (c *Client) QuerySubstitutablePathInfos(paths []storepath.Path) (map[storepath.Path]*narinfo.NarInfo, error) {
	// A map of path to content address (none here), sorted as Nix sends
	// it.
	sorted := storepath.Sorted(slices.Clone(paths))
	sorted = slices.Compact(sorted)
	err := c.call(OpQuerySubstitutablePathInfos, func(w *wire.Writer) {
		w.Uint64(uint64(len(sorted)))
		for _, p := range sorted {
			w.String(string(p))
			w.String("")
		}
	})
	if err != nil {
		return nil, err
	}
	n, err := c.r.Uint64()
	if err != nil {
		return nil, err
	}
	if n > uint64(len(paths)) {
		return nil, fmt.Errorf("%w: %d substitutable infos for %d paths", ErrProtocol, n, len(paths))
	}
	out := make(map[storepath.Path]*narinfo.NarInfo, n)
	for range n {
		var fields [2]string
		for i := range fields {
			if fields[i], err = c.r.String(wire.MaxPathLen); err != nil {
				return nil, err
			}
		}
		p, err := storepath.Parse(fields[0])
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		ni := &narinfo.NarInfo{StorePath: p, Deriver: storepath.Path(fields[1])}
		if ni.References, err = c.readPaths(); err != nil {
			return nil, err
		}
		if ni.FileSize, err = c.r.Uint64(); err != nil {
			return nil, err
		}
		if ni.NarSize, err = c.r.Uint64(); err != nil {
			return nil, err
		}
		out[p] = ni
	}
	return out, nil
}

// QueryDerivationOutputMap lists a derivation's outputs and known paths.
func (c *Client) QueryDerivationOutputMap(drvPath storepath.Path) (map[string]storepath.Path, error) {
	if err := c.call(OpQueryDerivationOutputMap, func(w *wire.Writer) { w.String(string(drvPath)) }); err != nil {
		return nil, err
	}
	m, err := c.r.StringMap(1024, wire.MaxPathLen)
	if err != nil {
		return nil, err
	}
	out := make(map[string]storepath.Path, len(m))
	for k, v := range m {
		out[k] = storepath.Path(v)
	}
	return out, nil
}

// SetOptions sends the build settings the daemon should use.
func (c *Client) SetOptions(opts build.Options, overrides map[string]string) error {
	return c.call(OpSetOptions, func(w *wire.Writer) {
		w.Bool(opts.KeepFailed)
		w.Uint64(0) // keepGoing
		w.Uint64(0) // tryFallback
		w.Uint64(0) // verbosity
		w.Uint64(1) // maxBuildJobs
		w.Uint64(uint64(opts.MaxSilentTime.Seconds()))
		w.Uint64(1) // useBuildHook, obsolete
		w.Uint64(0) // verboseBuild
		w.Uint64(0) // logType, obsolete
		w.Uint64(0) // printBuildTrace, obsolete
		w.Uint64(uint64(opts.Cores))
		w.Uint64(0) // useSubstitutes
		if minor(c.Version) >= 12 {
			w.Uint64(uint64(len(overrides)))
			for k, v := range overrides {
				w.String(k)
				w.String(v)
			}
		}
	})
}

// readBuildResult reads a BuildResult as gated by the version.
func readBuildResult(r *wire.Reader, ver uint64) (*build.Result, error) {
	st, err := r.Uint64()
	if err != nil {
		return nil, fmt.Errorf("reading status: %w", err)
	}
	res := &build.Result{Status: build.Status(st)}
	if res.ErrorMsg, err = r.String(wire.MaxStringLen); err != nil {
		return nil, fmt.Errorf("reading errorMsg: %w", err)
	}
	if minor(ver) >= 29 {
		var v [4]uint64
		for i := range v {
			if v[i], err = r.Uint64(); err != nil {
				return nil, fmt.Errorf("reading build times: %w", err)
			}
		}
		res.TimesBuilt = v[0]
		res.StartTime, res.StopTime = time.Unix(int64(v[2]), 0), time.Unix(int64(v[3]), 0)
	}
	if minor(ver) >= 37 {
		for _, what := range []string{"cpuUser", "cpuSystem"} {
			tag, err := r.Uint64()
			if err != nil {
				return nil, fmt.Errorf("reading %s: %w", what, err)
			}
			if tag == 1 {
				if _, err := r.Uint64(); err != nil {
					return nil, fmt.Errorf("reading %s: %w", what, err)
				}
			} else if tag != 0 {
				return nil, fmt.Errorf("%w: %s has tag %d", ErrProtocol, what, tag)
			}
		}
	}
	if minor(ver) >= 28 {
		n, err := r.Uint64()
		if err != nil {
			return nil, fmt.Errorf("reading builtOutputs: %w", err)
		}
		if n > 1024 {
			return nil, fmt.Errorf("%w: %d built outputs", ErrProtocol, n)
		}
		res.Outputs = map[string]storepath.Path{}
		for i := uint64(0); i < n; i++ {
			id, err := r.String(wire.MaxPathLen)
			if err != nil {
				return nil, err
			}
			js, err := r.Bytes(1 << 20)
			if err != nil {
				return nil, err
			}
			hash, name, ok := strings.Cut(id, "!")
			if !ok {
				return nil, fmt.Errorf("%w: realisation id %q", ErrProtocol, id)
			}
			var real struct {
				OutPath string `json:"outPath"`
			}
			if err := json.Unmarshal(js, &real); err != nil {
				return nil, fmt.Errorf("%w: realisation of %s: %w", ErrProtocol, id, err)
			}
			p, err := storepath.FromBase(real.OutPath)
			if err != nil {
				return nil, err
			}
			res.Outputs[name] = p
			if h, err := nixhash.Parse(hash); err == nil {
				res.HashModulo = h
			}
		}
	}
	return res, nil
}

// CallRaw sends an operation with raw arguments and reads up to its reply,
// for tests that send what a well-behaved client would not.
func CallRaw(c *Client, op Op, args func(w *wire.Writer)) error { return c.call(op, args) }

// ClientReader exposes the client's reader, for tests that read replies
// of operations sent with CallRaw.
func ClientReader(c *Client) *wire.Reader { return c.r }
