package serveproto

import (
	"fmt"
	"io"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// Client drives a serve-protocol server such as `nix-store --serve --write`.
// The protocol is strictly request/response: a Client must not be used
// from several goroutines at once.
type Client struct {
	r *wire.Reader
	w *wire.Writer
	// ServerVersion is the version the server announced.
	ServerVersion uint64
	ver           uint64
}

// NewClient performs the handshake over an established stream.
func NewClient(r io.Reader, w io.Writer) (*Client, error) {
	c := &Client{r: wire.NewReader(r), w: wire.NewWriter(w)}
	c.w.Uint64(Magic1)
	c.w.Uint64(Version)
	if err := c.w.Flush(); err != nil {
		return nil, fmt.Errorf("serve handshake: %w", err)
	}
	magic, err := c.r.Uint64()
	if err != nil {
		return nil, fmt.Errorf("serve handshake: reading server magic: %w", err)
	}
	if magic != Magic2 {
		return nil, fmt.Errorf("serve handshake: bad server magic 0x%x (want 0x%x)", magic, Magic2)
	}
	if c.ServerVersion, err = c.r.Uint64(); err != nil {
		return nil, fmt.Errorf("serve handshake: reading server version: %w", err)
	}
	if major(c.ServerVersion) != major(Version) || c.ServerVersion < MinVersion {
		return nil, fmt.Errorf("serve handshake: server speaks unsupported version 0x%x", c.ServerVersion)
	}
	c.ver = min(c.ServerVersion, Version)
	return c, nil
}

// QueryValidPaths returns the subset of paths the server holds.
func (c *Client) QueryValidPaths(paths []storepath.Path, lock, substitute bool) ([]storepath.Path, error) {
	c.w.Uint64(cmdQueryValidPaths)
	c.w.Bool(lock)
	c.w.Bool(substitute)
	c.w.Strings(storepath.Strings(paths))
	if err := c.w.Flush(); err != nil {
		return nil, fmt.Errorf("QueryValidPaths: %w", err)
	}
	valid, err := readPaths(c.r, "valid paths")
	if err != nil {
		return nil, fmt.Errorf("QueryValidPaths: %w", err)
	}
	return valid, nil
}

// QueryPathInfos returns metadata for the paths the server holds; unknown
// paths are left out.
func (c *Client) QueryPathInfos(paths []storepath.Path) ([]*store.PathInfo, error) {
	c.w.Uint64(cmdQueryPathInfos)
	c.w.Strings(storepath.Strings(paths))
	if err := c.w.Flush(); err != nil {
		return nil, fmt.Errorf("QueryPathInfos: %w", err)
	}
	var infos []*store.PathInfo
	for {
		s, err := c.r.String(wire.MaxPathLen)
		if err != nil {
			return nil, fmt.Errorf("QueryPathInfos: reading path: %w", err)
		}
		if s == "" {
			return infos, nil
		}
		info, err := c.readPathInfo(s)
		if err != nil {
			return nil, fmt.Errorf("QueryPathInfos: %s: %w", s, err)
		}
		infos = append(infos, info)
	}
}

func (c *Client) readPathInfo(path string) (*store.PathInfo, error) {
	p, err := storepath.Parse(path)
	if err != nil {
		return nil, err
	}
	info := &store.PathInfo{Path: p}
	if info.Deriver, err = readOptionalPath(c.r, "deriver"); err != nil {
		return nil, err
	}
	if info.References, err = readPaths(c.r, "references"); err != nil {
		return nil, err
	}
	if _, err := c.r.Uint64(); err != nil { // download size
		return nil, fmt.Errorf("reading downloadSize: %w", err)
	}
	if info.NarSize, err = c.r.Uint64(); err != nil {
		return nil, fmt.Errorf("reading narSize: %w", err)
	}
	if minor(c.ver) < 4 {
		return nil, fmt.Errorf("server version 0x%x sends no NAR hash", c.ServerVersion)
	}
	hs, err := c.r.String(256)
	if err != nil {
		return nil, fmt.Errorf("reading narHash: %w", err)
	}
	if info.NarHash, err = nixhash.Parse(hs); err != nil {
		return nil, fmt.Errorf("narHash: %w", err)
	}
	if info.CA, err = c.r.String(1024); err != nil {
		return nil, fmt.Errorf("reading ca: %w", err)
	}
	if info.Sigs, err = c.r.Strings(1024, 1024); err != nil {
		return nil, fmt.Errorf("reading sigs: %w", err)
	}
	return info, nil
}

// AddToStoreNar uploads one path; nar must yield exactly info.NarSize bytes.
func (c *Client) AddToStoreNar(info *store.PathInfo, narSrc io.Reader) error {
	if minor(c.ver) < 5 {
		return fmt.Errorf("AddToStoreNar: server version 0x%x is older than 2.5", c.ServerVersion)
	}
	c.w.Uint64(cmdAddToStoreNar)
	c.w.String(string(info.Path))
	c.w.String(string(info.Deriver))
	c.w.String(info.NarHash.Hex())
	c.w.Strings(storepath.Strings(info.References))
	c.w.Uint64(uint64(info.RegistrationTime.Unix()))
	c.w.Uint64(info.NarSize)
	c.w.Bool(info.Ultimate)
	c.w.Strings(info.Sigs)
	c.w.String(info.CA)
	n, err := c.w.ReadFrom(io.LimitReader(narSrc, int64(info.NarSize)))
	if err != nil {
		return fmt.Errorf("AddToStoreNar %s: sending NAR: %w", info.Path, err)
	}
	if uint64(n) != info.NarSize {
		return fmt.Errorf("AddToStoreNar %s: NAR has %d bytes, declared %d", info.Path, n, info.NarSize)
	}
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("AddToStoreNar %s: %w", info.Path, err)
	}
	ok, err := c.r.Uint64()
	if err != nil {
		return fmt.Errorf("AddToStoreNar %s: reading reply: %w", info.Path, err)
	}
	if ok != 1 {
		return fmt.Errorf("AddToStoreNar %s: server replied %d", info.Path, ok)
	}
	return nil
}

// DumpStorePath asks for a path's NAR and copies exactly that NAR to dst.
func (c *Client) DumpStorePath(p storepath.Path, dst io.Writer) (int64, error) {
	c.w.Uint64(cmdDumpStorePath)
	c.w.String(string(p))
	if err := c.w.Flush(); err != nil {
		return 0, fmt.Errorf("DumpStorePath %s: %w", p, err)
	}
	n, err := nar.Copy(dst, c.r)
	if err != nil {
		return n, fmt.Errorf("DumpStorePath %s: %w", p, err)
	}
	return n, nil
}

// NarFromPath returns a reader of exactly one NAR, the NAR of p. It must be
// read to its end before the Client is used again.
func (c *Client) NarFromPath(p storepath.Path) (io.Reader, error) {
	c.w.Uint64(cmdDumpStorePath)
	c.w.String(string(p))
	if err := c.w.Flush(); err != nil {
		return nil, fmt.Errorf("DumpStorePath %s: %w", p, err)
	}
	return c.r, nil
}

// BuildDerivation builds drv on the server.
func (c *Client) BuildDerivation(drvPath storepath.Path, drv *derivation.Basic, opts build.Options) (*build.Result, error) {
	c.w.Uint64(cmdBuildDerivation)
	c.w.String(string(drvPath))
	if err := drv.Write(c.w); err != nil {
		return nil, fmt.Errorf("BuildDerivation: %w", err)
	}
	writeOptions(c.w, c.ver, opts)
	if err := c.w.Flush(); err != nil {
		return nil, fmt.Errorf("BuildDerivation: %w", err)
	}
	res, err := c.readResult()
	if err != nil {
		return nil, fmt.Errorf("BuildDerivation %s: %w", drvPath, err)
	}
	return res, nil
}

func (c *Client) readResult() (*build.Result, error) {
	st, err := c.r.Uint64()
	if err != nil {
		return nil, fmt.Errorf("reading status: %w", err)
	}
	res := &build.Result{Status: build.Status(st)}
	if res.ErrorMsg, err = c.r.String(wire.MaxStringLen); err != nil {
		return nil, fmt.Errorf("reading errorMsg: %w", err)
	}
	if minor(c.ver) >= 3 {
		var start, stop uint64
		if res.TimesBuilt, err = c.r.Uint64(); err != nil {
			return nil, fmt.Errorf("reading timesBuilt: %w", err)
		}
		if _, err = c.r.Uint64(); err != nil {
			return nil, fmt.Errorf("reading isNonDeterministic: %w", err)
		}
		if start, err = c.r.Uint64(); err != nil {
			return nil, fmt.Errorf("reading startTime: %w", err)
		}
		if stop, err = c.r.Uint64(); err != nil {
			return nil, fmt.Errorf("reading stopTime: %w", err)
		}
		res.StartTime, res.StopTime = time.Unix(int64(start), 0), time.Unix(int64(stop), 0)
	}
	if minor(c.ver) >= 6 {
		n, err := c.r.Uint64()
		if err != nil {
			return nil, fmt.Errorf("reading builtOutputs: %w", err)
		}
		if n > wire.MaxListLen {
			return nil, fmt.Errorf("builtOutputs: %d entries", n)
		}
		for i := uint64(0); i < n; i++ {
			if err := c.r.Discard(wire.MaxPathLen); err != nil {
				return nil, fmt.Errorf("reading builtOutputs id: %w", err)
			}
			if err := c.r.Discard(wire.MaxStringLen); err != nil {
				return nil, fmt.Errorf("reading builtOutputs realisation: %w", err)
			}
		}
	}
	return res, nil
}

// BuildPaths builds derivations already present on the server.
func (c *Client) BuildPaths(paths []build.DerivedPath, opts build.Options) (*build.Result, error) {
	ss := make([]string, len(paths))
	for i, p := range paths {
		s, err := p.LegacyString()
		if err != nil {
			return nil, fmt.Errorf("BuildPaths: %w", err)
		}
		ss[i] = s
	}
	c.w.Uint64(cmdBuildPaths)
	c.w.Strings(ss)
	writeOptions(c.w, c.ver, opts)
	if err := c.w.Flush(); err != nil {
		return nil, fmt.Errorf("BuildPaths: %w", err)
	}
	st, err := c.r.Uint64()
	if err != nil {
		return nil, fmt.Errorf("BuildPaths: reading status: %w", err)
	}
	if st == 0 {
		return &build.Result{Status: build.Built}, nil
	}
	// Stock servers send an exit status here, not a BuildResult status.
	res := &build.Result{Status: build.MiscFailure}
	if res.ErrorMsg, err = c.r.String(wire.MaxStringLen); err != nil {
		return nil, fmt.Errorf("BuildPaths: reading error: %w", err)
	}
	return res, nil
}

// QueryClosure returns the closure of paths on the server.
func (c *Client) QueryClosure(paths []storepath.Path, includeOutputs bool) ([]storepath.Path, error) {
	c.w.Uint64(cmdQueryClosure)
	c.w.Bool(includeOutputs)
	c.w.Strings(storepath.Strings(paths))
	if err := c.w.Flush(); err != nil {
		return nil, fmt.Errorf("QueryClosure: %w", err)
	}
	out, err := readPaths(c.r, "closure")
	if err != nil {
		return nil, fmt.Errorf("QueryClosure: %w", err)
	}
	return out, nil
}
