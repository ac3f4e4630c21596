package daemonproto

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/nixfarm/nixfarm/internal/nar"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/publicerr"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/traffic"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// readPathInfo reads a path's metadata as clients send it with
// AddToStoreNar and in AddMultipleToStore (format 16 there).
func readPathInfo(r *wire.Reader, ver uint64, p storepath.Path) (*store.PathInfo, error) {
	info := &store.PathInfo{Path: p}
	deriver, err := r.String(wire.MaxPathLen)
	if err != nil {
		return nil, fatal(fmt.Errorf("reading deriver: %w", err))
	}
	hash, err := r.String(256)
	if err != nil {
		return nil, fatal(fmt.Errorf("reading narHash: %w", err))
	}
	refs, err := r.Strings(wire.MaxListLen, wire.MaxPathLen)
	if err != nil {
		return nil, fatal(fmt.Errorf("reading references: %w", err))
	}
	if _, err := r.Uint64(); err != nil { // registrationTime: the farm records its own
		return nil, fatal(fmt.Errorf("reading registrationTime: %w", err))
	}
	if info.NarSize, err = r.Uint64(); err != nil {
		return nil, fatal(fmt.Errorf("reading narSize: %w", err))
	}
	if minor(ver) >= 16 {
		if _, err = r.Uint64(); err != nil { // ultimate: not the client's to claim
			return nil, fatal(fmt.Errorf("reading ultimate: %w", err))
		}
		if info.Sigs, err = r.Strings(1024, 1024); err != nil {
			return nil, fatal(fmt.Errorf("reading sigs: %w", err))
		}
		if info.CA, err = r.String(1024); err != nil {
			return nil, fatal(fmt.Errorf("reading ca: %w", err))
		}
	}
	// The stream is intact from here on: bad values are ordinary errors.
	if deriver != "" {
		if info.Deriver, err = storepath.Parse(deriver); err != nil {
			return info, fmt.Errorf("deriver of %s: %w", p, err)
		}
	}
	if info.NarHash, err = nixhash.ParseAs(nixhash.SHA256, hash); err != nil {
		return info, fmt.Errorf("narHash of %s: %w", p, err)
	}
	if info.References, err = storepath.ParseList(refs); err != nil {
		return info, fmt.Errorf("references of %s: %w", p, err)
	}
	return info, nil
}

// addFramed stores the NAR a framed stream carries, then drains the stream
// whatever happened, so the connection stays in step.
func (c *conn) addFramed(ctx context.Context, add func(src io.Reader) error) error {
	fr := newFramedReader(c.r)
	err := add(fr)
	left, derr := fr.drain()
	if derr != nil {
		return fatal(derr)
	}
	if err == nil && left > 0 {
		err = publicerr.New("%d bytes of unexpected data after the NAR", left)
	}
	return err
}

func (c *conn) addToStoreNar(ctx context.Context) error {
	p, err := c.readPath("path")
	if err != nil {
		return err
	}
	info, infoErr := readPathInfo(c.r, c.ver, p)
	if fe := (*fatalError)(nil); errors.As(infoErr, &fe) {
		return infoErr
	}
	if _, err := c.readUint("repair"); err != nil {
		return err
	}
	if _, err := c.readUint("dontCheckSigs"); err != nil {
		return err
	}
	info.Account = c.sess.Account
	add := func(src io.Reader) error {
		if infoErr != nil {
			return infoErr
		}
		if info.NarSize == 0 {
			return publicerr.New("AddToStoreNar of %s has narSize 0", p)
		}
		counted := &traffic.Counter{R: src}
		defer func() { c.tr.Uploaded(counted.N) }()
		return c.st.AddToStore(ctx, info, counted)
	}
	switch {
	case minor(c.ver) >= 23:
		err = c.addFramed(ctx, add)
	case minor(c.ver) >= 21:
		err = add(&readRequester{c: c, left: info.NarSize})
	default:
		err = add(c.r)
		if err != nil && !consumedWhole(err) {
			err = fatal(err)
		}
	}
	if err != nil {
		return err
	}
	return c.done(nil)
}

// consumedWhole reports whether an upload failed only after its whole NAR
// was read, so that the stream is still in step.
func consumedWhole(err error) bool {
	return errors.Is(err, store.ErrHashMismatch) || errors.Is(err, store.ErrSizeMismatch) ||
		errors.Is(err, store.ErrContentAddress) || errors.Is(err, store.ErrInvalidReference)
}

func (c *conn) addMultipleToStore(ctx context.Context) error {
	if _, err := c.readUint("repair"); err != nil {
		return err
	}
	if _, err := c.readUint("dontCheckSigs"); err != nil {
		return err
	}
	err := c.addFramed(ctx, func(src io.Reader) error {
		r := wire.NewReader(src)
		count, err := r.Uint64()
		if err != nil {
			return fmt.Errorf("reading path count: %w", err)
		}
		for i := uint64(0); i < count; i++ {
			s, err := r.String(wire.MaxPathLen)
			if err != nil {
				return fmt.Errorf("reading path %d: %w", i, err)
			}
			p, err := storepath.Parse(s)
			if err != nil {
				return err
			}
			info, err := readPathInfo(r, 16, p)
			if err != nil {
				return err
			}
			info.Account = c.sess.Account
			counted := &traffic.Counter{R: r}
			err = c.st.AddToStore(ctx, info, counted)
			c.tr.Uploaded(counted.N)
			if err != nil {
				return err
			}
		}
		if !r.AtEOF() {
			return publicerr.New("unexpected data after the last path")
		}
		return nil
	})
	if err != nil {
		return err
	}
	return c.done(nil)
}

// parseMethod parses a content-addressing method as AddToStore sends it:
// "text:sha256", "fixed:<algo>" or "fixed:r:<algo>".
func parseMethod(s string) (storepath.CAMethod, nixhash.Algo, error) {
	kind, rest, _ := strings.Cut(s, ":")
	method := storepath.Flat
	switch kind {
	case "text":
		method = storepath.Text
	case "fixed":
		if r, ok := strings.CutPrefix(rest, "r:"); ok {
			method, rest = storepath.Recursive, r
		} else if strings.HasPrefix(rest, "git:") {
			return 0, 0, publicerr.New("content-addressing method %q (git) is not supported by nixfarm", s)
		}
	default:
		return 0, 0, publicerr.New("unknown content-addressing method %q", s)
	}
	algo, err := nixhash.ParseAlgo(rest)
	return method, algo, err
}

func (c *conn) addToStore(ctx context.Context) error {
	if minor(c.ver) < 25 {
		return c.addToStoreOld(ctx)
	}
	name, err := c.readString("name", storepath.MaxNameLen+1)
	if err != nil {
		return err
	}
	camStr, err := c.readString("method", 64)
	if err != nil {
		return err
	}
	refs, refsErr := c.readPaths("references")
	if fe := (*fatalError)(nil); errors.As(refsErr, &fe) {
		return refsErr
	}
	if _, err := c.readUint("repair"); err != nil {
		return err
	}
	var info *store.PathInfo
	err = c.addFramed(ctx, func(src io.Reader) error {
		if refsErr != nil {
			return refsErr
		}
		method, algo, err := parseMethod(camStr)
		if err != nil {
			return err
		}
		data := &traffic.Counter{R: src}
		info, err = store.AddContent(ctx, c.st, c.s.TempDir, store.Content{
			Name: name, Method: method, Algo: algo, References: refs, Data: data, Account: c.sess.Account,
		})
		c.tr.Uploaded(data.N)
		return err
	})
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { writePathInfo(w, c.ver, info, true) })
}

// addToStoreOld is AddToStore before 1.25: the data is a NAR, even for
// flat files, sent unframed after the arguments.
func (c *conn) addToStoreOld(ctx context.Context) error {
	name, err := c.readString("name", storepath.MaxNameLen+1)
	if err != nil {
		return err
	}
	fixed, err := c.readUint("fixed")
	if err != nil {
		return err
	}
	recursive, err := c.readUint("recursive")
	if err != nil {
		return err
	}
	algoName, err := c.readString("hash algorithm", 16)
	if err != nil {
		return err
	}
	method := storepath.Flat
	if recursive == 1 {
		method = storepath.Recursive
	}
	if fixed == 0 { // Nix's compatibility rule: unfixed means sha256 of the NAR
		method, algoName = storepath.Recursive, "sha256"
	}
	algo, algoErr := nixhash.ParseAlgo(algoName)
	spool, err := os.CreateTemp(c.s.TempDir, "add-*.nar")
	if err != nil {
		return fatal(err)
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	n, err := nar.Copy(spool, c.r)
	c.tr.Uploaded(n)
	if err != nil {
		return fatal(fmt.Errorf("reading NAR of %s: %w", name, err))
	}
	if algoErr != nil {
		return algoErr
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return err
	}
	data := io.Reader(spool)
	if method == storepath.Flat {
		nr := nar.NewReader(spool)
		if h, err := nr.Next(); err != nil {
			return err
		} else if h.Type != nar.TypeRegular {
			return publicerr.New("flat content %s must be a single file, not a %s", name, h.Type)
		}
		data = nr
	}
	info, err := store.AddContent(ctx, c.st, c.s.TempDir, store.Content{
		Name: name, Method: method, Algo: algo, Data: data, Account: c.sess.Account,
	})
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { w.String(string(info.Path)) })
}

func (c *conn) addTextToStore(ctx context.Context) error {
	name, err := c.readString("name", storepath.MaxNameLen+1)
	if err != nil {
		return err
	}
	text, err := c.readString("contents", maxInlineContent)
	if err != nil {
		return err
	}
	c.tr.Uploaded(int64(len(text)))
	refs, err := c.readPaths("references")
	if err != nil {
		return err
	}
	info, err := store.AddContent(ctx, c.st, c.s.TempDir, store.Content{
		Name: name, Method: storepath.Text, Algo: nixhash.SHA256, References: refs,
		Data: strings.NewReader(text), Account: c.sess.Account,
	})
	if err != nil {
		return err
	}
	return c.done(func(w *wire.Writer) { w.String(string(info.Path)) })
}

func (c *conn) addBuildLog(ctx context.Context) error {
	s, err := c.readString("derivation", wire.MaxPathLen)
	if err != nil {
		return err
	}
	var log []byte
	err = c.addFramed(ctx, func(src io.Reader) error {
		var err error
		log, err = io.ReadAll(io.LimitReader(src, maxInlineContent))
		return err
	})
	if err != nil {
		return err
	}
	// Clients send the derivation's base name here.
	p, err := storepath.FromBase(strings.TrimPrefix(s, storepath.Dir+"/"))
	if err != nil {
		return err
	}
	if err := c.s.Builds.AddBuildLog(ctx, p, c.sess.Account, log); err != nil {
		return err
	}
	return c.ok(ctx)
}
