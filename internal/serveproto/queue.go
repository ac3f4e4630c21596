package serveproto

import (
	"io"

	"github.com/nixfarm/nixfarm/internal/build"
)

// queueLine is a build request's OnQueue: where the build waits in the
// farm's queue, and then the worker that took it, as a line on the
// session's stderr, which stock Nix prints as part of the build's output.
func (c *serveConn) queueLine(st build.QueueStatus) {
	if c.sess.Stderr != nil {
		io.WriteString(c.sess.Stderr, st.String()+"\n")
	}
}
