package worker

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/serveproto"
	"github.com/nixfarm/nixfarm/internal/usage"
)

// Warm sessions. Starting `nix-store --serve --write` and completing its
// handshake costs a trivial build about a fifth of its time on the farm
// (15–25 ms locally; an SSH connection and a remote process on a static
// worker). An executor with Warm > 0 keeps that many sessions started
// ahead of need: a build takes one and a replacement starts at once, in
// the background, with the same cores setting. Each session still serves
// exactly one build, so its stderr is that build's log and nothing else.
// A warm session idle for warmIdle is closed; one found dead when its
// build starts is replaced by a new session before anything was built.

// warmIdle is how long a warm session waits for a build before it is
// closed.
const warmIdle = time.Minute

// conn is a running `nix-store --serve --write` whose handshake is done.
type conn struct {
	stream  *Stream
	client  *serveproto.Client
	stderr  *lineForwarder
	drained chan struct{} // stderr read to its end
	cancel  context.CancelFunc
	cores   int
	idle    *time.Timer // while warm, the timer that closes it
	usage   usage.Usage // what stream.Usage measured, once closed
}

// dial starts a session with the given cores setting. The process lives
// until close, or until ctx ends during the handshake.
func (e *Executor) dial(ctx context.Context, cores int) (*conn, error) {
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stream, err := e.transport.Open(pctx, build.Options{Cores: cores})
	if err != nil {
		cancel()
		return nil, err
	}
	c := &conn{stream: stream, stderr: newLineForwarder(nil), drained: make(chan struct{}), cancel: cancel, cores: cores}
	go func() {
		if stream.Stderr != nil {
			c.stderr.copyFrom(stream.Stderr)
		}
		close(c.drained)
	}()
	stop := context.AfterFunc(ctx, c.kill)
	c.client, err = serveproto.NewClient(stream.Stdout, stream.Stdin)
	if !stop() {
		err = context.Cause(ctx)
	}
	if err != nil {
		werr := c.close()
		if tail := c.stderr.tail(); tail != "" {
			err = fmt.Errorf("%w (nix-store said: %s)", err, tail)
		} else if werr != nil {
			err = fmt.Errorf("%w (%v)", err, werr)
		}
		return nil, fmt.Errorf("talking to nix-store --serve: %w", err)
	}
	return c, nil
}

// kill stops the process: SIGTERM through its context, so that Nix stops
// its builder and cleans up, and the end of its input.
func (c *conn) kill() {
	c.cancel()
	c.stream.Stdin.Close()
}

// close ends the session once its work is done and waits for the process.
func (c *conn) close() error {
	c.stream.Stdin.Close()
	<-c.drained
	err := c.stream.Wait()
	c.cancel()
	if p := c.stream.Usage; p != nil {
		// Sampled after the process has ended: the outputs' copy is
		// the build's too, and an agent reports its figures only then.
		u, uerr := p.Sample()
		if uerr == nil {
			c.usage = u
		}
		// Removing the control groups takes milliseconds (2.4 ms for
		// v1's pair here, and 50 ms more each time the kernel still
		// holds one busy): not the build's time. Groups a farm that
		// stopped meanwhile left are swept when the next one starts.
		go p.Close()
	}
	return err
}

// takeWarm returns a warm session with the given cores setting, or nil.
func (e *Executor) takeWarm(cores int) *conn {
	e.warmMu.Lock()
	defer e.warmMu.Unlock()
	i := slices.IndexFunc(e.warm, func(c *conn) bool { return c.cores == cores })
	if i < 0 {
		return nil
	}
	c := e.warm[i]
	e.warm = slices.Delete(e.warm, i, i+1)
	c.idle.Stop()
	return c
}

// warmUp starts a warm session with the given cores setting in the
// background, unless Warm sessions are there or on their way already. A
// warm session with another cores setting makes room for it.
func (e *Executor) warmUp(cores int) {
	e.warmMu.Lock()
	defer e.warmMu.Unlock()
	if e.closed || e.Warm <= 0 {
		return
	}
	if len(e.warm)+e.warming >= e.Warm {
		i := slices.IndexFunc(e.warm, func(c *conn) bool { return c.cores != cores })
		if i < 0 {
			return
		}
		old := e.warm[i]
		e.warm = slices.Delete(e.warm, i, i+1)
		old.idle.Stop()
		go old.close()
	}
	e.warming++
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := e.dial(ctx, cores)
		e.warmMu.Lock()
		defer e.warmMu.Unlock()
		e.warming--
		if err != nil {
			e.log.Debug("starting a warm session failed", "err", err)
			return
		}
		e.keepLocked(c)
	}()
}

// keepLocked adds c to the warm sessions, or closes it if the executor is
// closed. It is called with warmMu held.
func (e *Executor) keepLocked(c *conn) {
	if e.closed || len(e.warm) >= e.Warm {
		go c.close()
		return
	}
	e.warm = append(e.warm, c)
	c.idle = time.AfterFunc(warmIdle, func() {
		e.warmMu.Lock()
		i := slices.Index(e.warm, c)
		if i >= 0 {
			e.warm = slices.Delete(e.warm, i, i+1)
		}
		e.warmMu.Unlock()
		if i >= 0 {
			c.close()
		}
	})
}

// Check starts nix-store --serve on the machine and completes the
// handshake, which also creates the machine's store if it is new: Nix 2.8
// fails ("database is busy") when two processes create the same store at
// once, as the first builds of a new farm would. The session is kept
// warm if the executor keeps warm sessions.
func (e *Executor) Check(ctx context.Context) error {
	c, err := e.dial(ctx, 0)
	if err != nil {
		return fmt.Errorf("worker %s: %w", e.name, err)
	}
	e.warmMu.Lock()
	e.keepLocked(c)
	e.warmMu.Unlock()
	return nil
}

// Close closes the warm sessions; builds may still run, without them.
func (e *Executor) Close() error {
	e.warmMu.Lock()
	warm := e.warm
	e.warm, e.closed = nil, true
	e.warmMu.Unlock()
	for _, c := range warm {
		c.idle.Stop()
		c.close()
	}
	return nil
}

var _ io.Closer = (*Executor)(nil)
