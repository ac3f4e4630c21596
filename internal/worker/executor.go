package worker

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/refscan"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
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
}

// Executor realises derivations on one machine: it copies the input
// closure the machine lacks from the farm store, builds with the
// machine's Nix, and copies the outputs back with their exact narHash,
// narSize and references. It implements build.Builder; how many builds
// run at once is the scheduler's business.
type Executor struct {
	name      string
	farm      store.Store
	transport Transport
	log       *slog.Logger
}

var _ build.Builder = (*Executor)(nil)

// NewExecutor returns an executor for the machine named name.
func NewExecutor(name string, farm store.Store, t Transport, log *slog.Logger) *Executor {
	if log == nil {
		log = slog.Default()
	}
	return &Executor{name: name, farm: farm, transport: t, log: log.With("worker", name)}
}

// Build implements build.Builder.
func (e *Executor) Build(ctx context.Context, req *build.Request) (*build.Result, error) {
	start := time.Now()
	stream, err := e.transport.Open(ctx, req.Options)
	if err != nil {
		return nil, fmt.Errorf("worker %s: %w", e.name, err)
	}
	stderr := newLineForwarder(req.Log)
	done := make(chan struct{})
	go func() {
		if stream.Stderr != nil {
			stderr.copyFrom(stream.Stderr)
		}
		close(done)
	}()
	s := &session{e: e, stdin: stream.Stdin, start: start}
	res, err := s.run(ctx, stream, req)
	stream.Stdin.Close()
	<-done
	if werr := stream.Wait(); werr != nil && err == nil {
		// The outputs are in the farm store already; only note it.
		e.log.Debug("nix-store --serve ended uncleanly after the build", "drv", req.DrvPath, "err", werr)
	}
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("build abandoned: %w", context.Cause(ctx))
	}
	if err != nil {
		if tail := stderr.tail(); tail != "" {
			err = fmt.Errorf("%w (nix-store said: %s)", err, tail)
		}
		return nil, fmt.Errorf("worker %s: %w", e.name, err)
	}
	// Our clock is finer than Nix's whole seconds, and covers the input
	// and output copies.
	res.StartTime, res.StopTime = start, time.Now()
	res.Worker = e.name
	return res, nil
}

// Check starts nix-store --serve on the machine and completes the
// handshake, which also creates the machine's store if it is new. Nix 2.8
// fails ("database is busy") when two processes create the same store at
// once, as the first builds of a new farm would.
func (e *Executor) Check(ctx context.Context) error {
	stream, err := e.transport.Open(ctx, build.Options{})
	if err != nil {
		return fmt.Errorf("worker %s: %w", e.name, err)
	}
	stderr := newLineForwarder(io.Discard)
	drained := make(chan struct{})
	go func() {
		if stream.Stderr != nil {
			stderr.copyFrom(stream.Stderr)
		}
		close(drained)
	}()
	_, err = serveproto.NewClient(stream.Stdout, stream.Stdin)
	stream.Stdin.Close()
	<-drained
	if werr := stream.Wait(); err == nil {
		err = werr
	}
	if err != nil {
		if tail := stderr.tail(); tail != "" {
			err = fmt.Errorf("%w (nix-store said: %s)", err, tail)
		}
		return fmt.Errorf("worker %s: %w", e.name, err)
	}
	return nil
}

// session is one build over one stream.
type session struct {
	e      *Executor
	stdin  io.WriteCloser
	client *serveproto.Client
	start  time.Time
}

func (s *session) run(ctx context.Context, stream *Stream, req *build.Request) (*build.Result, error) {
	// Closing stdin when the context ends makes the remote Nix stop, and
	// unblocks any read or write here.
	stop := context.AfterFunc(ctx, func() { stream.Stdin.Close() })
	defer stop()
	var err error
	t0 := time.Now()
	if s.client, err = serveproto.NewClient(stream.Stdout, stream.Stdin); err != nil {
		return nil, fmt.Errorf("talking to nix-store --serve: %w", err)
	}
	t1 := time.Now()
	if err := s.sendInputs(ctx, req); err != nil {
		return nil, err
	}
	t2 := time.Now()
	res, err := s.client.BuildDerivation(req.DrvPath, req.Drv, req.Options)
	if err != nil {
		return nil, err
	}
	t3 := time.Now()
	if !res.Status.Success() {
		return res, nil
	}
	outputs := req.Drv.OutputPaths()
	if err := s.fetchOutputs(ctx, req, res, outputs); err != nil {
		return nil, err
	}
	s.e.log.Debug("build phases", "drv", req.DrvPath, "handshake", t1.Sub(t0), "inputs", t2.Sub(t1),
		"build", t3.Sub(t2), "outputs", time.Since(t3))
	res.Outputs = outputs
	return res, nil
}

// sendInputs copies the part of the input closure that the machine lacks.
func (s *session) sendInputs(ctx context.Context, req *build.Request) error {
	farm := s.e.farm
	inputs, err := storepath.ParseList(req.Drv.InputSrcs)
	if err != nil {
		return err
	}
	closure, err := farm.Closure(ctx, inputs)
	if err != nil {
		return fmt.Errorf("input closure: %w", err)
	}
	valid, err := s.client.QueryValidPaths(closure, false, false)
	if err != nil {
		return err
	}
	have := make(map[storepath.Path]bool, len(valid))
	for _, p := range valid {
		have[p] = true
	}
	var missing []*store.PathInfo
	for _, p := range closure {
		if have[p] {
			continue
		}
		info, err := farm.QueryPathInfo(ctx, p)
		if err != nil {
			return err
		}
		missing = append(missing, info)
	}
	sorted, err := store.TopoSort(missing)
	if err != nil {
		return err
	}
	for _, info := range sorted {
		if err := s.sendOne(ctx, info); err != nil {
			return err
		}
	}
	return nil
}

func (s *session) sendOne(ctx context.Context, info *store.PathInfo) error {
	rc, _, err := s.e.farm.NarFromPath(ctx, info.Path)
	if err != nil {
		return err
	}
	defer rc.Close()
	return s.client.AddToStoreNar(info, rc)
}

// fetchOutputs copies the outputs the farm store lacks from the machine,
// checking the references Nix reports against the farm's own scan. If the
// farm store can serve outputs while they are copied in, req.OnOutputs
// hears of the build's success before the copy starts.
func (s *session) fetchOutputs(ctx context.Context, req *build.Request, res *build.Result, outputs map[string]storepath.Path) error {
	farm := s.e.farm
	var want []storepath.Path
	for _, p := range outputs {
		want = append(want, p)
	}
	valid, err := farm.ValidPaths(ctx, want)
	if err != nil {
		return err
	}
	missing := slices.DeleteFunc(want, func(p storepath.Path) bool { return slices.Contains(valid, p) })
	if len(missing) == 0 {
		return nil
	}
	infos, err := s.client.QueryPathInfos(missing)
	if err != nil {
		return err
	}
	if len(infos) != len(missing) {
		return fmt.Errorf("the build reported success but %d of its %d outputs are missing on the worker", len(missing)-len(infos), len(missing))
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
		info.Ultimate = true
		info.Account = req.Account
		info.RegistrationTime = now
	}
	if ex, ok := farm.(store.Expecter); ok && req.OnOutputs != nil {
		done := ex.Expect(sorted)
		defer done()
		early := *res
		early.Outputs = outputs
		early.StartTime, early.StopTime = s.start, now
		early.Worker = s.e.name
		req.OnOutputs(&early)
	}
	for _, info := range sorted {
		if err := s.fetchOne(ctx, req, info, hashes); err != nil {
			return err
		}
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
	closure, err := s.e.farm.Closure(ctx, inputs)
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

func (s *session) fetchOne(ctx context.Context, req *build.Request, info *store.PathInfo, hashes []string) error {
	narSrc, err := s.client.NarFromPath(info.Path)
	if err != nil {
		return err
	}
	scan := refscan.New(hashes)
	if err := s.e.farm.AddToStore(ctx, info, io.TeeReader(narSrc, scan)); err != nil {
		return fmt.Errorf("importing output %s: %w", info.Path, err)
	}
	var reported []string
	for _, r := range info.References {
		reported = append(reported, r.HashPart())
	}
	slices.Sort(reported)
	if found := scan.Found(); !slices.Equal(found, reported) {
		s.e.log.Warn("reference scan disagrees with Nix", "path", info.Path, "nix", reported, "nixfarm", found)
	}
	return nil
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
		f.mu.Unlock()
		if f.dst != nil {
			f.dst.Write([]byte(line + "\n"))
		}
	}
	io.Copy(io.Discard, r)
}

func (f *lineForwarder) tail() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.last, "; ")
}
