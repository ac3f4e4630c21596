// Package localworker is the built-in worker: it realises derivations with
// the machine's own Nix, in a Nix store of the operator's choice, by
// driving a `nix-store --serve --write --store URI` process with the serve
// protocol client. The same client can drive a remote machine over SSH.
package localworker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/refscan"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Config configures the local worker.
type Config struct {
	// Name identifies the worker in build records ("local" by default).
	Name string
	// StoreURI is the Nix store builds happen in ("" = the machine's
	// default store).
	StoreURI string
	// Jobs is the number of builds run at once; the rest wait.
	Jobs int
	// NixStore is the nix-store binary ("nix-store" by default).
	NixStore string
	Log      *slog.Logger
}

// Worker is the built-in local worker. It implements build.Builder.
type Worker struct {
	cfg   Config
	farm  store.Store
	slots chan struct{}
	log   *slog.Logger
}

var _ build.Builder = (*Worker)(nil)

// New returns a local worker that takes inputs from and returns outputs
// to the farm store.
func New(farm store.Store, cfg Config) *Worker {
	if cfg.Name == "" {
		cfg.Name = "local"
	}
	if cfg.Jobs < 1 {
		cfg.Jobs = 1
	}
	if cfg.NixStore == "" {
		cfg.NixStore = "nix-store"
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Worker{cfg: cfg, farm: farm, slots: make(chan struct{}, cfg.Jobs), log: log.With("worker", cfg.Name)}
}

// Name returns the worker's name.
func (w *Worker) Name() string { return w.cfg.Name }

// Build implements build.Builder. It waits for a free slot, so at most
// Jobs builds run at once.
func (w *Worker) Build(ctx context.Context, req *build.Request) (*build.Result, error) {
	select {
	case w.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-w.slots }()
	start := time.Now()

	sess, err := w.start(ctx, req.Log, req.Options)
	if err != nil {
		return nil, err
	}
	res, err := sess.build(ctx, w, req)
	if cerr := sess.close(); cerr != nil && err == nil {
		// The outputs are in the farm store already; only note it.
		w.log.Debug("nix-store --serve ended uncleanly after the build", "drv", req.DrvPath, "err", cerr)
	}
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("build abandoned: %w", context.Cause(ctx))
	}
	if err != nil {
		if tail := sess.stderr.tail(); tail != "" {
			err = fmt.Errorf("%w (nix-store said: %s)", err, tail)
		}
		return nil, err
	}
	// Our clock is finer than Nix's whole seconds, and covers the input
	// and output copies, which the slot was held for.
	res.StartTime, res.StopTime = start, time.Now()
	res.Worker = w.cfg.Name
	return res, nil
}

// session is one nix-store --serve process.
type session struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	client *serveproto.Client
	stderr *lineForwarder
	done   chan struct{}
}

func (w *Worker) start(ctx context.Context, log io.Writer, opts build.Options) (*session, error) {
	args := []string{"--serve", "--write"}
	if opts.Cores > 0 {
		args = append(args, "--option", "cores", strconv.Itoa(opts.Cores))
	}
	if w.cfg.StoreURI != "" {
		args = append(args, "--store", w.cfg.StoreURI)
	}
	cmd := exec.CommandContext(ctx, w.cfg.NixStore, args...)
	// When the build is abandoned, SIGTERM lets Nix kill its builder and
	// clean up; SIGKILL follows if it has not exited 5 seconds later.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", w.cfg.NixStore, err)
	}
	s := &session{cmd: cmd, stdin: stdin, stderr: newLineForwarder(log), done: make(chan struct{})}
	go func() {
		s.stderr.copyFrom(stderr)
		close(s.done)
	}()
	s.client, err = serveproto.NewClient(stdout, stdin)
	if err != nil {
		s.close()
		return nil, fmt.Errorf("talking to %s --serve: %w", w.cfg.NixStore, err)
	}
	return s, nil
}

func (s *session) close() error {
	s.stdin.Close()
	<-s.done
	err := s.cmd.Wait()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return fmt.Errorf("nix-store --serve exited with status %d", exit.ExitCode())
	}
	return err
}

func (s *session) build(ctx context.Context, w *Worker, req *build.Request) (*build.Result, error) {
	if err := s.sendInputs(ctx, w, req); err != nil {
		return nil, err
	}
	res, err := s.client.BuildDerivation(req.DrvPath, req.Drv, req.Options)
	if err != nil {
		return nil, err
	}
	if !res.Status.Success() {
		return res, nil
	}
	outputs := req.Drv.OutputPaths()
	if err := s.fetchOutputs(ctx, w, req, outputs); err != nil {
		return nil, err
	}
	res.Outputs = outputs
	return res, nil
}

// sendInputs copies the part of the input closure that the Nix store lacks.
func (s *session) sendInputs(ctx context.Context, w *Worker, req *build.Request) error {
	inputs, err := storepath.ParseList(req.Drv.InputSrcs)
	if err != nil {
		return err
	}
	closure, err := w.farm.Closure(ctx, inputs)
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
		info, err := w.farm.QueryPathInfo(ctx, p)
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
		if err := s.sendOne(ctx, w, info); err != nil {
			return err
		}
	}
	return nil
}

func (s *session) sendOne(ctx context.Context, w *Worker, info *store.PathInfo) error {
	rc, _, err := w.farm.NarFromPath(ctx, info.Path)
	if err != nil {
		return err
	}
	defer rc.Close()
	return s.client.AddToStoreNar(info, rc)
}

// fetchOutputs copies the outputs the farm store lacks from the Nix store,
// checking the references Nix reports against our own scan.
func (s *session) fetchOutputs(ctx context.Context, w *Worker, req *build.Request, outputs map[string]storepath.Path) error {
	var want []storepath.Path
	for _, p := range outputs {
		want = append(want, p)
	}
	valid, err := w.farm.ValidPaths(ctx, want)
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
		return fmt.Errorf("the build reported success but %d of its %d outputs are missing in %s", len(missing)-len(infos), len(missing), w.cfg.StoreURI)
	}
	sorted, err := store.TopoSort(infos)
	if err != nil {
		return err
	}
	scanner, err := w.referenceScanner(ctx, req, outputs)
	if err != nil {
		return err
	}
	for _, info := range sorted {
		if err := s.fetchOne(ctx, w, req, info, scanner); err != nil {
			return err
		}
	}
	return nil
}

// candidates for references of outputs: the input closure and the outputs.
func (w *Worker) referenceScanner(ctx context.Context, req *build.Request, outputs map[string]storepath.Path) (func() *refscan.Scanner, error) {
	inputs, err := storepath.ParseList(req.Drv.InputSrcs)
	if err != nil {
		return nil, err
	}
	closure, err := w.farm.Closure(ctx, inputs)
	if err != nil {
		return nil, err
	}
	byHash := make(map[string]storepath.Path, len(closure)+len(outputs))
	for _, p := range closure {
		byHash[p.HashPart()] = p
	}
	for _, p := range outputs {
		byHash[p.HashPart()] = p
	}
	hashes := make([]string, 0, len(byHash))
	for h := range byHash {
		hashes = append(hashes, h)
	}
	return func() *refscan.Scanner { return refscan.New(hashes) }, nil
}

func (s *session) fetchOne(ctx context.Context, w *Worker, req *build.Request, info *store.PathInfo, newScanner func() *refscan.Scanner) error {
	narSrc, err := s.client.NarFromPath(info.Path)
	if err != nil {
		return err
	}
	scan := newScanner()
	info.Ultimate = true
	info.Account = req.Account
	if err := w.farm.AddToStore(ctx, info, io.TeeReader(narSrc, scan)); err != nil {
		return fmt.Errorf("importing output %s: %w", info.Path, err)
	}
	var reported []string
	for _, r := range info.References {
		reported = append(reported, r.HashPart())
	}
	slices.Sort(reported)
	if found := scan.Found(); !slices.Equal(found, reported) {
		w.log.Warn("reference scan disagrees with Nix", "path", info.Path, "nix", reported, "nixfarm", found)
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
