package serveproto_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// A waiting build's status and then its worker reach an ssh:// client as
// lines on stderr, which stock Nix prints with the build's output.
func TestQueueLinesOnStderr(t *testing.T) {
	st, _, _ := testutil.Store(t)
	fb := &fakeBuilds{result: &build.Result{Status: build.Built}}
	fb.during = func(req *build.Request) {
		if req.OnQueue == nil {
			t.Error("the request has no OnQueue")
			return
		}
		req.OnQueue(build.QueueStatus{Position: 1, Class: "x86_64-linux", Reason: "account limit max-concurrent-builds (4) reached"})
		req.OnQueue(build.QueueStatus{Worker: "local", Attempt: 1, Waited: 3 * time.Second})
	}
	s := startSession(t, &serveproto.Server{Store: st, Builds: fb}, true)
	s.handshake(t, serveproto.Version)
	s.w.Uint64(8)
	s.w.String(drvPath)
	testBasic().Write(s.w)
	for i := 0; i < 6; i++ {
		s.w.Uint64(0)
	}
	s.w.Flush()
	if st, _ := s.r.Uint64(); st != 0 {
		t.Errorf("status %d", st)
	}
	want := "nixfarm: queued at position 1 for x86_64-linux: account limit max-concurrent-builds (4) reached; estimated start unknown\n" +
		"nixfarm: building on worker local (waited 3 s)\n"
	if got := s.stderr.buf.String(); !strings.Contains(got, want) {
		t.Errorf("stderr:\n%s\nwant:\n%s", got, want)
	}
}
