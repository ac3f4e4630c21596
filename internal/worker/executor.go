package worker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/refscan"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/usage"
)

// Transport starts `nix-store --serve --write` on a machine.
type Transport interface {
	// Open starts the process, with the build options that must be set
	// on its command line (such as cores), and returns its streams.
	Open(ctx context.Context, opts build.Options) (*Stream, error)
}

// Stream is a running `nix-store --serve --write`.
type Stream struct {
	Stdin  io.WriteCloser
	Stdout io.Reader
	// Stderr carries the build log; it may be nil.
	Stderr io.Reader
	// Wait waits for the process to end once Stdin is closed.
	Wait func() error
	// Usage, if not nil, measures the process and what it forks (the
	// builder): the executor resets it when a build starts, samples it
	// after Wait, then closes it.
	Usage usage.Probe
}

// Executor realises derivations on one machine: it copies the input
// closure the machine lacks from the farm store, builds with the
// machine's Nix, and copies the outputs back with their exact narHash,
// narSize and references. It implements build.Builder; how many builds
// run at once is the scheduler's business.
//
// What the machine says about an output is a claim, checked before the
// output is registered: the NAR's hash and size are recomputed by the
// farm store, and its references are found by scanning the NAR for the
// build's candidates (the input closure and the outputs, as Nix does).
// Any difference fails the attempt (ErrWrongOutput), which the scheduler
// counts against the worker and retries elsewhere.
type Executor struct {
	// Warm is how many sessions to keep started ahead of need (see
	// conn.go); set it before use.
	Warm int
	// AnnounceAfterVerify withholds req.OnOutputs until the outputs are
	// verified and registered, for workers anyone with a credential can
	// run: a wrong output then fails only the attempt, not the clients
	// that would have been answered from it. Set it before use.
	AnnounceAfterVerify bool

	name      string
	farm      store.Views
	transport Transport
	log       *slog.Logger

	claimMu sync.Mutex
	claims  map[storepath.Path]*claim // paths the builds running here use

	warmMu  sync.Mutex
	warm    []*conn
	warming int // warm sessions being started
	closed  bool
}

var _ build.Builder = (*Executor)(nil)

// NewExecutor returns an executor for the machine named name.
func NewExecutor(name string, farm store.Views, t Transport, log *slog.Logger) *Executor {
	if log == nil {
		log = slog.Default()
	}
	return &Executor{name: name, farm: farm, transport: t, log: log.With("worker", name),
		claims: map[storepath.Path]*claim{}}
}

// Deleter is a Transport that can remove paths from the machine's store.
type Deleter interface {
	// Delete removes paths, and every path that refers to them.
	Delete(ctx context.Context, paths []storepath.Path) error
}

// Build implements build.Builder.
func (e *Executor) Build(ctx context.Context, req *build.Request) (*build.Result, error) {
	start := time.Now()
	cores := req.Options.Cores
	c := e.takeWarm(cores)
	e.warmUp(cores)
	if c != nil {
		res, err := e.buildOn(ctx, c, req, start, 0)
		var early *beforeBuildError
		if !errors.As(err, &early) || ctx.Err() != nil {
			return e.result(ctx, res, err)
		}
		e.log.Debug("a warm session failed before the build; starting another", "drv", req.DrvPath, "err", err)
	}
	for fresh := 0; ; fresh++ {
		t0 := time.Now()
		c, err := e.dial(ctx, cores)
		if err != nil {
			return e.result(ctx, nil, err)
		}
		res, err := e.buildOn(ctx, c, req, start, time.Since(t0))
		if errors.Is(err, errRemoved) {
			if fresh == 0 && ctx.Err() == nil {
				continue
			}
			// Removed twice: the machine keeps them, or keeps getting
			// them back.
			err = fmt.Errorf("%w: its store still holds other contents after they were removed", build.ErrWorkerConflict)
		}
		return e.result(ctx, res, err)
	}
}

// result wraps a build's error with the worker's name.
func (e *Executor) result(ctx context.Context, res *build.Result, err error) (*build.Result, error) {
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("build abandoned: %w", context.Cause(ctx))
	}
	if err != nil {
		return nil, fmt.Errorf("worker %s: %w", e.name, err)
	}
	return res, nil
}

// beforeBuildError is a session's failure before the build was sent: the
// build can be tried again on another session.
type beforeBuildError struct{ err error }

func (e *beforeBuildError) Error() string { return e.err.Error() }
func (e *beforeBuildError) Unwrap() error { return e.err }

// buildOn runs one build on c and closes it. handshake is how long
// starting c took, for the debug log.
func (e *Executor) buildOn(ctx context.Context, c *conn, req *build.Request, start time.Time, handshake time.Duration) (*build.Result, error) {
	c.stderr.setDst(req.Log)
	// Ending the context stops the remote Nix and unblocks any read or
	// write here.
	stop := context.AfterFunc(ctx, c.kill)
	s := &session{e: e, farm: e.farm.For(req.Account), client: c.client, start: start, handshake: handshake, usage: c.stream.Usage}
	res, err := s.run(ctx, req)
	stop()
	if err != nil {
		// The process may be in the middle of a reply nobody will read
		// (the rest of a NAR refused early): stop it rather than wait.
		c.kill()
	}
	if werr := c.close(); werr != nil && err == nil {
		// The outputs are in the farm store already; only note it.
		e.log.Debug("nix-store --serve ended uncleanly after the build", "drv", req.DrvPath, "err", werr)
	}
	if err != nil {
		if tail := c.stderr.tail(); tail != "" {
			err = fmt.Errorf("%w (nix-store said: %s)", err, tail)
		}
		if !s.sent {
			err = &beforeBuildError{err}
		}
		return nil, err
	}
	// Our clock is finer than Nix's whole seconds, and covers the input
	// and output copies.
	res.StartTime, res.StopTime = start, time.Now()
	res.Worker = e.name
	if s.reset && c.usage.Measured {
		res.CPUTime, res.PeakMemory, res.UsageMeasured = c.usage.CPU, c.usage.PeakMemory, true
	}
	return res, nil
}

// session is one build over one conn.
type session struct {
	e         *Executor
	farm      store.Store // the view of the account the build is for
	client    *serveproto.Client
	start     time.Time
	handshake time.Duration
	sent      bool // the build command has been sent
	usage     usage.Probe
	reset     bool // usage was reset as the build started
}

func (s *session) run(ctx context.Context, req *build.Request) (*build.Result, error) {
	t1 := time.Now()
	inputs, err := storepath.ParseList(req.Drv.InputSrcs)
	if err != nil {
		return nil, err
	}
	closure, err := s.farm.ClosureInfos(ctx, inputs)
	if err != nil {
		return nil, fmt.Errorf("input closure: %w", err)
	}
	release, err := s.e.claim(req, closure)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := s.sendInputs(ctx, req, closure); err != nil {
		return nil, err
	}
	t2 := time.Now()
	if s.usage != nil {
		// The build's usage starts here, not with the input copies.
		if err := s.usage.Reset(); err != nil {
			s.e.log.Warn("could not start measuring a build's CPU time and memory", "drv", req.DrvPath, "err", err)
		} else {
			s.reset = true
		}
	}
	s.sent = true
	res, err := s.client.BuildDerivation(req.DrvPath, req.Drv, req.Options)
	if err != nil {
		return nil, err
	}
	if res.Status == build.Built && res.TimesBuilt == 0 {
		// Nix 2.34's nix-store --serve answers a build it has just done
		// with timesBuilt 0 (and no times): its result keeps only the
		// status and outputs. The farm reports what happened.
		res.TimesBuilt = 1
	}
	t3 := time.Now()
	if !res.Status.Success() {
		return res, nil
	}
	outputs := req.Drv.OutputPaths()
	if err := s.fetchOutputs(ctx, req, res, outputs); err != nil {
		return nil, err
	}
	s.e.log.Debug("build phases", "drv", req.DrvPath, "handshake", s.handshake, "inputs", t2.Sub(t1),
		"build", t3.Sub(t2), "outputs", time.Since(t3))
	res.Outputs = outputs
	return res, nil
}

// sendInputs copies the part of the input closure that the machine lacks.
func (s *session) sendInputs(ctx context.Context, req *build.Request, closure []*store.PathInfo) error {
	have, err := s.checkMachine(ctx, req, closure)
	if err != nil {
		return err
	}
	var missing []*store.PathInfo
	for _, info := range closure {
		if !have[info.Path] {
			missing = append(missing, info)
		}
	}
	sorted, err := store.TopoSort(missing)
	if err != nil {
		return err
	}
	return s.sendAll(ctx, sorted)
}

// sendOne adds one path to the machine over client.
func (s *session) sendOne(ctx context.Context, client *serveproto.Client, info *store.PathInfo) error {
	rc, _, err := s.farm.NarFromPath(ctx, info.Path)
	if err != nil {
		return err
	}
	defer rc.Close()
	return client.AddToStoreNar(info, rc)
}

// ErrWrongOutput is wrapped when what a worker says of an output does not
// match the output: the attempt fails and the worker is to blame.
var ErrWrongOutput = errors.New("the worker returned a wrong output")

// fetchOutputs copies the outputs the farm store lacks from the machine,
// checking what the machine declares of each against its NAR. If the
// farm store can serve outputs while they are copied in, and the worker
// is not AnnounceAfterVerify, req.OnOutputs hears of the build's success
// before the copy starts.
func (s *session) fetchOutputs(ctx context.Context, req *build.Request, res *build.Result, outputs map[string]storepath.Path) error {
	farm := s.farm
	// Every output is copied in, even one the account holds already (it
	// uploaded its own bytes under the path meanwhile): what the build
	// produced is recorded for sharing, and only bytes the farm has
	// received and verified may be.
	var missing []storepath.Path
	for _, p := range outputs {
		missing = append(missing, p)
	}
	infos, err := s.client.QueryPathInfos(missing)
	if err != nil {
		return err
	}
	if len(infos) != len(missing) {
		return fmt.Errorf("the build reported success but %d of its %d outputs are missing on the worker", len(missing)-len(infos), len(missing))
	}
	if err := checkClaims(infos, missing); err != nil {
		return err
	}
	sorted, err := store.TopoSort(infos)
	if err != nil {
		return err
	}
	hashes, err := s.candidates(ctx, req, outputs)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, info := range sorted {
		info.Worker = s.e.name
		info.Ultimate = true
		// The farm vouches for outputs whose paths it derived, and for
		// content-addressed ones (the store checks their contents give
		// their path); a client's BasicDerivation could name any path.
		info.Sign = req.OutputsVerified || info.CA != ""
		info.Account = req.Account
		info.RegistrationTime = now
		info.Deriver = req.DrvPath
		info.Sigs = nil // the worker's signatures are its own claims
	}
	// A view that checks additions against the account's limits refuses
	// an oversize output here, before the client hears of it.
	if c, ok := farm.(interface {
		CheckAdd(context.Context, *store.PathInfo) error
	}); ok {
		for _, info := range sorted {
			if err := c.CheckAdd(ctx, info); err != nil {
				return err
			}
		}
	}
	if ex, ok := farm.(store.Expecter); ok && req.OnOutputs != nil && !s.e.AnnounceAfterVerify {
		done := ex.Expect(sorted)
		defer done()
		early := *res
		early.Outputs = outputs
		early.StartTime, early.StopTime = s.start, now
		early.Worker = s.e.name
		req.OnOutputs(&early)
	}
	for _, info := range sorted {
		if err := s.fetchOne(ctx, info, hashes); err != nil {
			return err
		}
	}
	res.Produced = make(map[string]build.Contents, len(outputs))
	for name, p := range outputs {
		for _, info := range sorted {
			if info.Path == p {
				res.Produced[name] = build.Contents{NarHash: info.NarHash, NarSize: info.NarSize, References: info.References}
			}
		}
	}
	return nil
}

// checkClaims checks that a worker described exactly the outputs asked
// for, each once, with a SHA-256 NAR hash and a size the farm store will
// hold the NAR to.
func checkClaims(infos []*store.PathInfo, asked []storepath.Path) error {
	seen := map[storepath.Path]bool{}
	for _, info := range infos {
		switch {
		case !slices.Contains(asked, info.Path):
			return fmt.Errorf("%w: it described %s, which is not an output asked for", ErrWrongOutput, info.Path)
		case seen[info.Path]:
			return fmt.Errorf("%w: it described %s twice", ErrWrongOutput, info.Path)
		case info.NarHash.IsZero() || info.NarHash.Algo != nixhash.SHA256:
			return fmt.Errorf("%w: %s has no SHA-256 NAR hash (%q)", ErrWrongOutput, info.Path, info.NarHash)
		case info.NarSize == 0:
			return fmt.Errorf("%w: %s has a NAR size of 0", ErrWrongOutput, info.Path)
		}
		seen[info.Path] = true
	}
	return nil
}

// candidates are the hash parts outputs may refer to: the input closure
// and the outputs.
func (s *session) candidates(ctx context.Context, req *build.Request, outputs map[string]storepath.Path) ([]string, error) {
	inputs, err := storepath.ParseList(req.Drv.InputSrcs)
	if err != nil {
		return nil, err
	}
	closure, err := s.farm.Closure(ctx, inputs)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var hashes []string
	for _, p := range closure {
		seen[p.HashPart()] = true
	}
	for _, p := range outputs {
		seen[p.HashPart()] = true
	}
	for h := range seen {
		hashes = append(hashes, h)
	}
	return hashes, nil
}

// fetchOne copies one output into the farm store, which checks its NAR
// hash and size against the declared ones; the references found in the
// NAR are checked against the declared ones before its last byte reaches
// the store, so a mismatch leaves nothing registered.
func (s *session) fetchOne(ctx context.Context, info *store.PathInfo, hashes []string) error {
	narSrc, err := s.client.NarFromPath(info.Path)
	if err != nil {
		return err
	}
	var declared []string
	for _, r := range info.References {
		declared = append(declared, r.HashPart())
	}
	slices.Sort(declared)
	declared = slices.Compact(declared)
	v := &verifiedNar{r: narSrc, left: int64(info.NarSize), scan: refscan.New(hashes)}
	v.check = func() error {
		if found := v.scan.Found(); !slices.Equal(found, declared) {
			s.e.log.Warn("the worker declared references its output does not have", "path", info.Path,
				"declared", declared, "found", found)
			return fmt.Errorf("%w: %s declares references to %v, but its NAR refers to %v", ErrWrongOutput, info.Path, declared, found)
		}
		return nil
	}
	if err := s.farm.AddToStore(ctx, info, v); err != nil {
		if errors.Is(err, store.ErrHashMismatch) || errors.Is(err, store.ErrSizeMismatch) {
			err = fmt.Errorf("%w: %w", ErrWrongOutput, err)
		}
		return fmt.Errorf("importing output %s: %w", info.Path, err)
	}
	return nil
}

// verifiedNar passes on exactly a NAR's declared size and holds back the
// last read until check accepts what the scan found: the farm store
// cannot finish the NAR, let alone register it, before then.
type verifiedNar struct {
	r     io.Reader
	left  int64
	scan  *refscan.Scanner
	check func() error
	err   error
}

func (v *verifiedNar) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if v.left == 0 {
		return 0, io.EOF // longer than declared: the store says so
	}
	if int64(len(p)) > v.left {
		p = p[:v.left]
	}
	n, err := v.r.Read(p)
	v.scan.Write(p[:n])
	v.left -= int64(n)
	if v.left == 0 {
		if cerr := v.check(); cerr != nil {
			v.err = cerr
			return 0, cerr
		}
	}
	return n, err
}

// lineForwarder copies a process's stderr to a log writer line by line and
// keeps the last lines for error messages.
type lineForwarder struct {
	mu   sync.Mutex
	dst  io.Writer
	last []string
}

func newLineForwarder(dst io.Writer) *lineForwarder { return &lineForwarder{dst: dst} }

func (f *lineForwarder) copyFrom(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f.mu.Lock()
		f.last = append(f.last, line)
		if len(f.last) > 10 {
			f.last = f.last[1:]
		}
		dst := f.dst
		f.mu.Unlock()
		if dst != nil {
			dst.Write([]byte(line + "\n"))
		}
	}
	io.Copy(io.Discard, r)
}

// setDst sends the lines from now on to dst.
func (f *lineForwarder) setDst(dst io.Writer) {
	f.mu.Lock()
	f.dst = dst
	f.mu.Unlock()
}

func (f *lineForwarder) tail() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.last, "; ")
}
