package serveproto_test

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"testing"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/testutil"
	"github.com/nixfarm/nixfarm/internal/wire"
)

// FuzzServe feeds arbitrary bytes to the server after a valid handshake.
// The server must never panic or hang, whatever the client sends.
func FuzzServe(f *testing.F) {
	sessions, _ := filepath.Glob("testdata/sessions/*/[0-9]*")
	for _, s := range sessions {
		in := testutil.ReadGz(f, filepath.Join(s, "in.gz"))
		if len(in) > 16 && len(in) < 1<<16 {
			f.Add(in[16:])
		}
	}
	var seed bytes.Buffer
	w := wire.NewWriter(&seed)
	w.Uint64(1)
	w.Uint64(0)
	w.Uint64(0)
	w.Strings([]string{"/nix/store/00000000000000000000000000000000-x"})
	w.Uint64(7)
	w.Uint64(1)
	w.Strings([]string{"/nix/store/00000000000000000000000000000000-x.drv"})
	w.Flush()
	f.Add(seed.Bytes())
	f.Add([]byte{8, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})

	st, _, dir := testutil.Store(f)
	srv := &serveproto.Server{Store: st, Builds: &fakeBuilds{result: &build.Result{Status: build.Built}}, TempDir: dir}
	f.Fuzz(func(t *testing.T, data []byte) {
		var in bytes.Buffer
		hw := wire.NewWriter(&in)
		hw.Uint64(serveproto.Magic1)
		hw.Uint64(serveproto.Version)
		hw.Write(data)
		hw.Flush()
		srv.Serve(context.Background(), &in, io.Discard, &serveproto.Session{Account: testutil.Account, Write: true, Stderr: io.Discard})
	})
}
