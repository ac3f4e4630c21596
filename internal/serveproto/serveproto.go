// Package serveproto speaks Nix's legacy serve protocol, the protocol of
// `nix-store --serve` that Nix uses for ssh:// stores and remote builders.
// It holds both ends: Server answers stock Nix clients from the farm store,
// and Client drives a `nix-store --serve --write` process (local or over
// SSH) as a worker.
//
// Versions 2.5 to 2.7 are supported. Every optional field is gated on the
// lower of the two sides' versions.
package serveproto

import (
	"fmt"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// Handshake magic numbers and the protocol version nixfarm speaks.
const (
	Magic1  = 0x390c9deb // client → server
	Magic2  = 0x5452eecb // server → client
	Version = 0x207      // 2.7, as Nix 2.4 through 2.34

	// MinVersion is the oldest client version accepted: 2.5 introduced
	// AddToStoreNar, which every client since Nix 2.4 uses.
	MinVersion = 0x205

	exportMagic = 0x4558494e
)

// Command numbers.
const (
	cmdQueryValidPaths = 1
	cmdQueryPathInfos  = 2
	cmdDumpStorePath   = 3
	cmdImportPaths     = 4
	cmdExportPaths     = 5
	cmdBuildPaths      = 6
	cmdQueryClosure    = 7
	cmdBuildDerivation = 8
	cmdAddToStoreNar   = 9
)

func minor(v uint64) uint64 { return v & 0xff }
func major(v uint64) uint64 { return v & 0xff00 }

func readPaths(r *wire.Reader, what string) ([]storepath.Path, error) {
	ss, err := r.Strings(wire.MaxListLen, wire.MaxPathLen)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	ps, err := storepath.ParseList(ss)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	return ps, nil
}

func readOptionalPath(r *wire.Reader, what string) (storepath.Path, error) {
	s, err := r.String(wire.MaxPathLen)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", what, err)
	}
	if s == "" {
		return "", nil
	}
	p, err := storepath.Parse(s)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", what, err)
	}
	return p, nil
}

// options are the build settings sent after BuildPaths and BuildDerivation.
func readOptions(r *wire.Reader, ver uint64) (build.Options, error) {
	var o build.Options
	silent, err := r.Uint64()
	if err != nil {
		return o, fmt.Errorf("reading maxSilentTime: %w", err)
	}
	timeout, err := r.Uint64()
	if err != nil {
		return o, fmt.Errorf("reading buildTimeout: %w", err)
	}
	o.MaxSilentTime = seconds(silent)
	o.Timeout = seconds(timeout)
	if minor(ver) >= 2 {
		if o.MaxLogSize, err = r.Uint64(); err != nil {
			return o, fmt.Errorf("reading maxLogSize: %w", err)
		}
	}
	if minor(ver) >= 3 {
		// nrRepeats and enforceDeterminism: repeated builds are not
		// supported, so they are read and ignored.
		if _, err := r.Uint64(); err != nil {
			return o, fmt.Errorf("reading nrRepeats: %w", err)
		}
		if _, err := r.Uint64(); err != nil {
			return o, fmt.Errorf("reading enforceDeterminism: %w", err)
		}
	}
	if minor(ver) >= 7 {
		keep, err := r.Uint64()
		if err != nil {
			return o, fmt.Errorf("reading keepFailed: %w", err)
		}
		o.KeepFailed = keep != 0
	}
	return o, nil
}

func writeOptions(w *wire.Writer, ver uint64, o build.Options) {
	w.Uint64(uint64(o.MaxSilentTime.Seconds()))
	w.Uint64(uint64(o.Timeout.Seconds()))
	if minor(ver) >= 2 {
		w.Uint64(o.MaxLogSize)
	}
	if minor(ver) >= 3 {
		w.Uint64(0)
		w.Uint64(0)
	}
	if minor(ver) >= 7 {
		w.Bool(o.KeepFailed)
	}
}
