// Package build defines what a build is, independent of who runs it: a
// request to realise a BasicDerivation, its options, its result, and the
// Builder interface that workers implement. Protocol servers and the
// coordinator speak these types; workers turn them into real builds.
package build

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/nixfarm/nixfarm/internal/derivation"
	"github.com/nixfarm/nixfarm/internal/nixhash"
	"github.com/nixfarm/nixfarm/internal/storepath"
)

// Status is Nix's BuildResult status, with Nix's numbering (the protocols
// send it as is).
type Status uint64

// The statuses, numbered as in Nix's build-result.hh.
const (
	Built Status = iota
	Substituted
	AlreadyValid
	PermanentFailure
	InputRejected
	OutputRejected
	TransientFailure
	CachedFailure
	TimedOut
	MiscFailure
	DependencyFailed
	LogLimitExceeded
	NotDeterministic
	ResolvesToAlreadyValid
	NoSubstituters
)

var statusNames = [...]string{
	"Built", "Substituted", "AlreadyValid", "PermanentFailure", "InputRejected",
	"OutputRejected", "TransientFailure", "CachedFailure", "TimedOut", "MiscFailure",
	"DependencyFailed", "LogLimitExceeded", "NotDeterministic", "ResolvesToAlreadyValid",
	"NoSubstituters",
}

func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("Status(%d)", uint64(s))
}

// Success reports whether the outputs are valid after a build with this status.
func (s Status) Success() bool {
	return s == Built || s == Substituted || s == AlreadyValid || s == ResolvesToAlreadyValid
}

// Options are the per-build limits a client may set. Zero means no limit.
type Options struct {
	MaxSilentTime time.Duration
	Timeout       time.Duration
	MaxLogSize    uint64
	KeepFailed    bool
	// Cores is the builder's NIX_BUILD_CORES; 0 leaves the worker's own.
	Cores int
	// KeepGoing, for a request of several builds, waits for every build
	// rather than answering at the first failure.
	KeepGoing bool
}

// Request asks for one derivation to be built.
type Request struct {
	DrvPath storepath.Path
	Drv     *derivation.Basic
	Options Options
	// Account is the account on whose behalf the build runs.
	Account string
	// Log receives the build log as the builder produces it. It may be nil.
	Log io.Writer
	// OnOutputs, if set, is called when the build has succeeded and its
	// outputs can be fetched from the farm store while they are still
	// being copied in (see store.Expecter), before the builder returns.
	// It may be called more than once if the build is retried.
	OnOutputs func(*Result)
	// OutputsVerified says the farm derived the output paths itself (a
	// .drv from the farm store, checked against hashDerivationModulo),
	// so it may sign the outputs: a BasicDerivation a client sends could
	// name any path.
	OutputsVerified bool
	// Progress, if set, hears what the farm fetches from upstream caches
	// for this request.
	Progress Progress
	// OnStart, if set, is called when a worker starts an attempt of the
	// build (attempt counts from 1), before the worker is asked to
	// build; the build waits for it, so it must be quick.
	OnStart func(worker string, attempt int)
	// OnQueue, if set, hears where the build stands while it waits for
	// a worker (QueueStatus), and, with Worker set, when a worker starts
	// it. The scheduler calls it outside its lock, only when the
	// position or reason changed, so it must be quick: the coordinator
	// hands each status to its waiting clients' own goroutines, which
	// call theirs (a protocol writing to its client) at most every
	// couple of seconds.
	OnQueue func(QueueStatus)
}

type keyFingerprintKey struct{}

// WithKeyFingerprint returns ctx carrying the fingerprint of the SSH key
// a session authenticated with, for the build records of its requests.
func WithKeyFingerprint(ctx context.Context, fingerprint string) context.Context {
	return context.WithValue(ctx, keyFingerprintKey{}, fingerprint)
}

// KeyFingerprint returns the SSH key fingerprint ctx carries ("" if none).
func KeyFingerprint(ctx context.Context) string {
	fp, _ := ctx.Value(keyFingerprintKey{}).(string)
	return fp
}

// Result is the outcome of a build. A build that ran and failed is a
// Result with a failure status, not an error.
type Result struct {
	Status     Status
	ErrorMsg   string
	TimesBuilt uint64
	StartTime  time.Time
	StopTime   time.Time
	// Outputs maps output names to their paths, for successful builds.
	Outputs map[string]storepath.Path
	// HashModulo is the derivation's hashDerivationModulo, which names
	// its outputs' realisations.
	HashModulo nixhash.Hash
	// Worker names the worker that built it ("" if none did).
	Worker string
	// Infrastructure says the farm, not the build, failed: no worker
	// could run it (every attempt failed, or none can take it).
	Infrastructure bool
	// Produced is, for a build a worker ran, the contents of each output
	// as the farm received and verified them, whatever the requesting
	// account holds under the same paths: what the build is shared as.
	Produced map[string]Contents
	// CPUTime (user + system) and PeakMemory (bytes) of the process tree
	// that built it on the worker (package usage), when UsageMeasured;
	// unknown otherwise (static workers, builds through a nix-daemon).
	CPUTime       time.Duration
	PeakMemory    int64
	UsageMeasured bool
	// Record is the ID of the build record that answers the request, in
	// the requesting account's records (0 if none does: outputs valid
	// already within a realisation, or another account's build joined).
	// Protocol sessions attribute the bytes they move to it.
	Record int64
}

// Contents identifies the contents of a store path: its NAR and the
// references it declares.
type Contents struct {
	NarHash    nixhash.Hash
	NarSize    uint64
	References []storepath.Path
}

// Builder realises a BasicDerivation. The request's inputs (the closure of
// Drv.InputSrcs) are in the farm store when Build is called; on success the
// outputs are in the farm store when it returns. Build returns an error only
// when it could not run the build at all (an infrastructure failure);
// failures of the build itself are reported in the Result.
type Builder interface {
	Build(ctx context.Context, req *Request) (*Result, error)
}

// Realisation records that a derivation output (its id,
// "sha256:<hashModulo hex>!<output name>") was realised at a path.
type Realisation struct {
	ID      string
	OutPath storepath.Path
}

// JSON renders the realisation as Nix sends it in BuildResults.
func (r Realisation) JSON() []byte {
	js, _ := json.Marshal(struct {
		DependentRealisations map[string]string `json:"dependentRealisations"`
		ID                    string            `json:"id"`
		OutPath               string            `json:"outPath"`
		Signatures            []string          `json:"signatures"`
	}{map[string]string{}, r.ID, r.OutPath.Base(), []string{}})
	return js
}

// BuiltOutputs returns the realisations of a successful build's outputs,
// sorted by output name; none if the build failed or HashModulo is unset.
func (r *Result) BuiltOutputs() []Realisation {
	if !r.Status.Success() || r.HashModulo.IsZero() {
		return nil
	}
	out := make([]Realisation, 0, len(r.Outputs))
	for _, name := range slices.Sorted(maps.Keys(r.Outputs)) {
		out = append(out, Realisation{ID: "sha256:" + r.HashModulo.Hex() + "!" + name, OutPath: r.Outputs[name]})
	}
	return out
}

// Logs gives each build of a request its own log.
type Logs interface {
	// BuildLog returns the log writer for one derivation's build; the
	// caller closes it when that build ends. It may return nil.
	BuildLog(drvPath storepath.Path) io.WriteCloser
}

// LogWriter makes a single writer, such as an SSH session's stderr, the
// log of every build.
type LogWriter struct{ W io.Writer }

// BuildLog implements Logs.
func (l LogWriter) BuildLog(storepath.Path) io.WriteCloser {
	if l.W == nil {
		return nil
	}
	return nopCloser{l.W}
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// ErrWorkerBusy is returned by a Builder that cannot run a build now
// because a build running on the same worker uses other contents under
// one of its paths: the build waits and is tried again, on any worker,
// and the worker is not at fault.
var ErrWorkerBusy = errors.New("the worker is busy with other contents of the same path")

// ErrWorkerConflict is returned by a Builder whose worker holds other
// contents under one of the build's paths, or an output before building
// it, and cannot remove them: the build is tried on another worker.
var ErrWorkerConflict = errors.New("the worker holds other contents under a path of the build")

// LimitError is a request refused, or a build failed, because it would
// take an account over one of its limits. The message names the limit and
// its value. It is the account's to deal with, not the farm's: a build
// failing with it ends with its message, and is not tried on another
// worker.
type LimitError struct{ Msg string }

func (e *LimitError) Error() string { return e.Msg }

// Public marks the message as meant for the client (package publicerr):
// it names the limit, its value and the path, nothing of the farm's.
func (e *LimitError) Public() bool { return true }
