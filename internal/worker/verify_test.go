package worker_test

import (
	"bytes"
	"context"
	"crypto/sha1"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// machine is a worker.Transport whose `nix-store --serve` is nixfarm's
// own serve-protocol server over a store of the machine's, where builds
// succeed at once (the outputs are in that store already), and which
// describes outputs as lie says, whatever their NAR.
type machine struct {
	st  store.Store
	lie func(*store.PathInfo)
}

func (m *machine) Open(ctx context.Context, opts build.Options) (*worker.Stream, error) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ls := &lyingStore{Store: m.st, lie: m.lie}
	srv := &serveproto.Server{Store: ls, Builds: &builtAlready{st: ls},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	// Ending ctx ends the process, as for a real one.
	context.AfterFunc(ctx, func() {
		outR.CloseWithError(ctx.Err())
		inW.CloseWithError(ctx.Err())
	})
	done := make(chan error, 1)
	go func() {
		err := srv.Serve(ctx, inR, outW, &serveproto.Session{Account: "worker", Write: true, Stderr: io.Discard})
		outW.CloseWithError(err)
		inR.Close()
		done <- err
	}()
	return &worker.Stream{Stdin: inW, Stdout: outR, Wait: func() error { return <-done }}, nil
}

type lyingStore struct {
	store.Store
	lie func(*store.PathInfo)
	// built: the outputs (input-addressed, unlike the inputs) are
	// there only once the build has been asked for, as on a real
	// machine; the farm checks they are not there before.
	built atomic.Bool
}

// For implements store.Views: the machine's store is one account's.
func (s *lyingStore) For(string) store.Store { return s }

func (s *lyingStore) QueryPathInfo(ctx context.Context, p storepath.Path) (*store.PathInfo, error) {
	info, err := s.Store.QueryPathInfo(ctx, p)
	if err == nil && info.CA == "" && !s.built.Load() {
		return nil, fmt.Errorf("%w: %s", store.ErrNotFound, p)
	}
	if err != nil || s.lie == nil || info.CA != "" { // inputs are content-addressed; outputs not
		return info, err
	}
	claimed := *info
	s.lie(&claimed)
	return &claimed, nil
}

type builtAlready struct{ st *lyingStore }

func (b *builtAlready) BuildDerivation(ctx context.Context, req *build.Request) (*build.Result, error) {
	b.st.built.Store(true)
	return &build.Result{Status: build.Built, TimesBuilt: 1}, nil
}

func (*builtAlready) Realise(context.Context, []build.DerivedPath, build.Options, string, build.Logs) ([]*build.Result, error) {
	return nil, errors.New("not here")
}

// A worker whose description of an output does not match the output's
// NAR fails the attempt, and the farm store does not register the output.
func TestWrongOutputs(t *testing.T) {
	ctx := context.Background()
	addInput := func(st store.Store) storepath.Path {
		info, err := store.AddContent(ctx, st, t.TempDir(), store.Content{Name: "input", Method: storepath.Text,
			Algo: nixhash.SHA256, Data: strings.NewReader("an input\n")})
		if err != nil {
			t.Fatal(err)
		}
		return info.Path
	}
	probe, _, _ := testutil.Store(t)
	input := addInput(probe)
	d := &derivation.Derivation{Outputs: map[string]derivation.Output{"out": {}}, InputSrcs: []string{string(input)},
		Platform: "x86_64-linux", Builder: "/bin/sh", Args: []string{"-c", "true"}}
	drvPath := testutil.Derivation(t, "claimed", d, nil)
	drv := d.Basic("claimed", nil)
	out := drv.OutputPaths()["out"]
	// The output refers to its input, and not to itself.
	contents := testutil.FileNar("made from " + string(input) + "\n")

	for _, tc := range []struct {
		name string
		lie  func(*store.PathInfo)
		want string // in the error; "" for success
	}{
		{"honest", nil, ""},
		{"nar hash", func(i *store.PathInfo) { i.NarHash = nixhash.SHA256Of([]byte("other bytes")) }, "NAR hash mismatch"},
		{"nar size", func(i *store.PathInfo) { i.NarSize++ }, "NAR size mismatch"},
		{"nar size short", func(i *store.PathInfo) { i.NarSize-- }, ""},
		{"sha1 nar hash", func(i *store.PathInfo) { i.NarHash = nixhash.FromDigest(nixhash.SHA1, sha1.New()) }, "no SHA-256 NAR hash"},
		{"nar size 0", func(i *store.PathInfo) { i.NarSize = 0 }, "NAR size of 0"},
		{"missing reference", func(i *store.PathInfo) { i.References = nil }, "declares references to []"},
		{"extra reference", func(i *store.PathInfo) { i.References = []storepath.Path{input, out} }, "declares references to"},
		{"another path", func(i *store.PathInfo) { i.Path = input }, "not an output asked for"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			farm, _, _ := testutil.Store(t)
			addInput(farm)
			own, _, _ := testutil.Store(t)
			addInput(own)
			info := &store.PathInfo{Path: out, Deriver: drvPath, References: []storepath.Path{input}}
			if err := own.AddToStore(ctx, info, bytes.NewReader(contents)); err != nil {
				t.Fatal(err)
			}
			e := worker.NewExecutor("machine", farm, &machine{st: own, lie: tc.lie}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			e.AnnounceAfterVerify = true
			announced := false
			res, err := e.Build(ctx, &build.Request{DrvPath: drvPath, Drv: drv, Account: "alice",
				OnOutputs: func(*build.Result) { announced = true }})
			registered, qerr := farm.QueryPathInfo(ctx, out)
			if tc.lie == nil {
				if err != nil || res.Status != build.Built || res.Worker != "machine" {
					t.Fatalf("honest worker: %+v, %v", res, err)
				}
				if qerr != nil || len(registered.References) != 1 || registered.References[0] != input || registered.Account != "alice" {
					t.Errorf("registered %+v, %v", registered, qerr)
				}
				return
			}
			if err == nil || !errors.Is(err, worker.ErrWrongOutput) && tc.want != "" {
				t.Fatalf("a lying worker's attempt: %+v, %v", res, err)
			}
			if tc.want != "" && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
			if !errors.Is(qerr, store.ErrNotFound) {
				t.Errorf("the wrong output was registered: %+v, %v", registered, qerr)
			}
			if announced {
				t.Error("an unverified output was announced")
			}
		})
	}
}
