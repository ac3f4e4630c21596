package daemonproto_test

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nixfarm/nixfarm/internal/daemonproto"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// FuzzServe feeds arbitrary operations to the server after a valid
// handshake at a version the input picks. The server must never panic or
// hang, whatever the client sends.
func FuzzServe(f *testing.F) {
	// Recorded sessions after their handshakes: 32 bytes at 1.34, 40 at
	// 1.38 (an empty feature list).
	for _, seed := range []struct {
		glob      string
		version   uint64
		handshake int
	}{
		{"testdata/sessions/nix-2.8/0[24]*", 1<<8 | 34, 32},
		{"testdata/sessions/nix-2.34/0[24]*", 1<<8 | 38, 40},
	} {
		sessions, _ := filepath.Glob(seed.glob)
		for _, s := range sessions {
			in := testutil.ReadGz(f, filepath.Join(s, "in.gz"))
			if len(in) > seed.handshake && len(in) < 1<<16 {
				f.Add(byte(slices.Index(versions, seed.version)), in[seed.handshake:])
			}
		}
	}
	var seed bytes.Buffer
	w := wire.NewWriter(&seed)
	w.Uint64(uint64(daemonproto.OpQueryValidPaths))
	w.Strings([]string{"/nix/store/00000000000000000000000000000000-x"})
	w.Uint64(0)
	w.Uint64(uint64(daemonproto.OpAddToStoreNar))
	w.String("/nix/store/00000000000000000000000000000000-x")
	w.Flush()
	f.Add(byte(9), seed.Bytes())
	f.Add(byte(0), []byte{26, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})

	fm := newFarm(f)
	f.Fuzz(func(t *testing.T, v byte, data []byte) {
		version := versions[int(v)%len(versions)]
		var in bytes.Buffer
		hw := wire.NewWriter(&in)
		hw.Uint64(daemonproto.Magic1)
		hw.Uint64(version)
		if version&0xff >= 38 {
			hw.Strings(nil)
		}
		hw.Uint64(0)
		hw.Uint64(0)
		hw.Write(data)
		hw.Flush()
		fm.srv.Serve(context.Background(), &in, io.Discard, &daemonproto.Session{Account: "fuzz"})
	})
}

// FuzzHandshake feeds arbitrary bytes from the very first one: the
// version, the feature list (1.38) and what follows must be read within
// their bounds, and the server must never panic or hang.
func FuzzHandshake(f *testing.F) {
	sessions, _ := filepath.Glob("testdata/sessions/nix-2.*/0[24]*")
	for _, s := range sessions {
		if in := testutil.ReadGz(f, filepath.Join(s, "in.gz")); len(in) < 1<<16 {
			f.Add(in)
		}
	}
	var seed bytes.Buffer
	w := wire.NewWriter(&seed)
	w.Uint64(daemonproto.Magic1)
	w.Uint64(1<<8 | 38)
	w.Strings([]string{"some-future-feature", "another"})
	w.Uint64(0)
	w.Uint64(0)
	w.Flush()
	f.Add(seed.Bytes())
	fm := newFarm(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		fm.srv.Serve(context.Background(), bytes.NewReader(data), io.Discard, &daemonproto.Session{Account: "fuzz"})
	})
}
