package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/sshd"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/storepath"
	"github.com/nixfarm/nixfarm/internal/testutil"
)

// TestSessionErrorHidden: on ssh://, an internal error ends the session
// with "error: nixfarm: internal error (id …)" on stderr, and the log has
// the id with the detail; a public error is shown as it is.
func TestSessionErrorHidden(t *testing.T) {
	p := storepath.Path("/nix/store/" + strings.Repeat("a", 32) + "-x")
	for _, tc := range []struct {
		name   string
		err    error
		public string // "" = internal
	}{
		{"internal", fmt.Errorf("reading /var/lib/nixfarm/nars/ab/cd.nar: SQL logic error: no such table (1)"), ""},
		{"public", fmt.Errorf("%w: %s", store.ErrInvalidReference, p), "reference is not valid: " + string(p)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, _, _ := testutil.Store(t)
			var logBuf, stderr testutil.LogBuffer
			log := slog.New(slog.NewTextHandler(&logBuf, nil))
			h := &execHandler{serve: &serveproto.Server{Store: testutil.BrokenStore{Store: st, Err: tc.err}, Log: log}, log: log}
			inR, inW := io.Pipe()
			outR, outW := io.Pipe()
			status := make(chan uint32, 1)
			go func() {
				status <- h.Exec(context.Background(), &sshd.Session{Account: "alice", Command: "nix-store --serve --write",
					Stdin: inR, Stdout: outW, Stderr: &stderr})
				outW.Close()
			}()
			c, err := serveproto.NewClient(outR, inW)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.QueryPathInfos([]storepath.Path{p}); err == nil {
				t.Fatal("QueryPathInfos succeeded")
			}
			inW.Close()
			if s := <-status; s != 1 {
				t.Errorf("status %d", s)
			}
			told := stderr.String()
			if tc.public != "" {
				if !strings.Contains(told, "error: nixfarm: ") || !strings.Contains(told, tc.public) {
					t.Errorf("the client was told %q, want %q", told, tc.public)
				}
				return
			}
			m := regexp.MustCompile(`^error: nixfarm: internal error \(id ([0-9a-f]{8})\); the farm's log has the details\n$`).FindStringSubmatch(told)
			if m == nil {
				t.Fatalf("the client was told %q", told)
			}
			if !regexp.MustCompile(`error_id=` + m[1] + `.*/var/lib/nixfarm/nars/ab/cd.nar: SQL logic error`).MatchString(logBuf.String()) {
				t.Errorf("no log line with error_id=%s and the error:\n%s", m[1], logBuf.String())
			}
		})
	}
}
