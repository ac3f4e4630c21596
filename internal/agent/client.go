package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/credentials"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// Config configures an agent.
type Config struct {
	// Coordinator is the host:port of the coordinator's worker listener.
	Coordinator string
	// Credential is the secret `nixfarm workers add NAME` issued for
	// Name.
	Credential string
	// CoordinatorHostKey pins the coordinator's SSH host key (see
	// HostKeyCallback); empty accepts any, with a warning.
	CoordinatorHostKey string
	Name               string
	Version            string
	Caps               worker.Capabilities
	// Local runs nix-store --serve for each build, with the settings
	// that make the local Nix accept what Caps declares.
	Local *worker.Local
	Log   *slog.Logger
}

// Agent is a running `nixfarm worker`.
type Agent struct {
	cfg     Config
	running atomic.Int64
}

// New returns an agent.
func New(cfg Config) (*Agent, error) {
	// The coordinator decides which names are taken or reserved, and
	// says why it refuses one.
	if err := credentials.ValidFormat(cfg.Name); err != nil {
		return nil, err
	}
	if err := cfg.Caps.Validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Agent{cfg: cfg}, nil
}

// Run connects to the coordinator and serves builds until ctx ends,
// reconnecting with backoff whenever the connection drops.
func (a *Agent) Run(ctx context.Context) error {
	hostKey, err := HostKeyCallback(a.cfg.CoordinatorHostKey)
	if err != nil {
		return err
	}
	if a.cfg.CoordinatorHostKey == "" {
		a.cfg.Log.Warn("not checking the coordinator's host key; pass --coordinator-host-key to pin it")
	}
	backoff := time.Second
	for {
		start := time.Now()
		err := a.session(ctx, hostKey)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		a.cfg.Log.Warn("disconnected from the coordinator; reconnecting", "err", err, "in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// session is one connection to the coordinator.
func (a *Agent) session(ctx context.Context, hostKey ssh.HostKeyCallback) error {
	var banner strings.Builder
	conn, err := ssh.Dial("tcp", a.cfg.Coordinator, &ssh.ClientConfig{
		User:            a.cfg.Name,
		Auth:            []ssh.AuthMethod{ssh.Password(a.cfg.Credential)},
		HostKeyCallback: hostKey,
		BannerCallback:  func(msg string) error { banner.WriteString(msg); return nil },
		ClientVersion:   "SSH-2.0-nixfarm-worker",
		Timeout:         15 * time.Second,
	})
	if err != nil {
		if b := strings.TrimSpace(banner.String()); b != "" {
			return fmt.Errorf("%s (%w)", b, err)
		}
		return fmt.Errorf("connecting to %s: %w", a.cfg.Coordinator, err)
	}
	defer conn.Close()
	// Stopping says goodbye on the control channel, once it is open, then
	// hangs up. Builds running then end with the connection: the
	// coordinator retries them elsewhere and counts this worker lost.
	var ctlMu sync.Mutex
	var ctl ssh.Channel
	hungUp := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(hungUp)
		ctlMu.Lock()
		c := ctl
		ctlMu.Unlock()
		if c != nil {
			sent := make(chan struct{})
			go func() {
				c.Write(encode(message{Type: "goodbye"}))
				close(sent)
			}()
			select {
			case <-sent:
			case <-time.After(time.Second): // a coordinator that reads nothing
			}
		}
		conn.Close()
	})
	defer stop()

	builds := conn.HandleChannelOpen(buildChannel)
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() {
		for nch := range builds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.serveBuild(ctx, nch)
			}()
		}
	}()

	ch, reqs, err := conn.OpenChannel(controlChannel, nil)
	if err != nil {
		return fmt.Errorf("opening the control channel: %w", err)
	}
	go ssh.DiscardRequests(reqs)
	ctlMu.Lock()
	ctl = ch
	ctlMu.Unlock()
	caps := a.cfg.Caps
	if _, err := ch.Write(encode(message{Type: "register", Name: a.cfg.Name, Version: a.cfg.Version, Capabilities: &caps})); err != nil {
		return err
	}
	lines := bufio.NewReader(ch)
	m, err := readMessage(lines)
	if err != nil {
		return fmt.Errorf("waiting for the coordinator's welcome: %w", err)
	}
	if m.Type == "error" {
		return fmt.Errorf("the coordinator refused this worker: %s", m.Message)
	}
	if m.Type != "welcome" {
		return fmt.Errorf("unexpected %q from the coordinator", m.Type)
	}
	interval := time.Duration(max(m.HeartbeatMillis, 10)) * time.Millisecond
	a.cfg.Log.Info("registered with the coordinator", "coordinator", a.cfg.Coordinator, "capabilities", caps.String(), "max_jobs", caps.MaxJobs)

	// Messages from the coordinator after the welcome are errors only.
	closed := make(chan error, 1)
	go func() {
		for {
			m, err := readMessage(lines)
			if err != nil {
				closed <- err
				return
			}
			if m.Type == "error" {
				a.cfg.Log.Error("the coordinator reports an error", "message", m.Message)
			}
		}
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			load := scheduler.Load{Running: int(a.running.Load()), Load1: loadAverage()}
			if _, err := ch.Write(encode(message{Type: "heartbeat", Load: &load})); err != nil {
				return err
			}
		case err := <-closed:
			return err
		case <-ctx.Done():
			<-hungUp // the goodbye is said before the connection closes
			return ctx.Err()
		}
	}
}

// serveBuild runs nix-store --serve --write for one build channel.
func (a *Agent) serveBuild(ctx context.Context, nch ssh.NewChannel) {
	var opts buildOptions
	if len(nch.ExtraData()) > 0 {
		if err := json.Unmarshal(nch.ExtraData(), &opts); err != nil {
			nch.Reject(ssh.ConnectionFailed, "bad build options")
			return
		}
	}
	ch, reqs, err := nch.Accept()
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	a.running.Add(1)
	defer a.running.Add(-1)
	buildCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := a.cfg.Local.Open(buildCtx, build.Options{Cores: opts.Cores})
	if err != nil {
		fmt.Fprintf(ch.Stderr(), "nixfarm worker %s: %v\n", a.cfg.Name, err)
		sendExit(ch, 1)
		ch.Close()
		return
	}
	var copies sync.WaitGroup
	copies.Add(2)
	go func() {
		defer copies.Done()
		io.Copy(ch, stream.Stdout)
	}()
	go func() {
		defer copies.Done()
		io.Copy(ch.Stderr(), stream.Stderr)
	}()
	go func() {
		// The coordinator's end of input, or of the channel, ends the
		// process: EOF on its stdin makes Nix stop, and the channel
		// closing cancels it outright.
		io.Copy(stream.Stdin, ch)
		stream.Stdin.Close()
		time.AfterFunc(10*time.Second, cancel) // if Nix lingers
	}()
	copies.Wait()
	code := uint32(0)
	if err := stream.Wait(); err != nil {
		code = 1
	}
	a.sendUsage(ch, stream)
	sendExit(ch, code)
	ch.Close()
}

// sendUsage reports what the session's process tree used, if it was
// measured (see usageRequest), and removes its control group.
func (a *Agent) sendUsage(ch ssh.Channel, stream *worker.Stream) {
	if stream.Usage == nil {
		return
	}
	u, err := stream.Usage.Sample()
	stream.Usage.Close()
	if err != nil {
		a.cfg.Log.Debug("could not measure a build's CPU time and memory", "err", err)
		return
	}
	if !u.Measured {
		return
	}
	payload, _ := json.Marshal(usageReport{CPUNanos: int64(u.CPU), PeakMemory: u.PeakMemory})
	ch.SendRequest(usageRequest, false, payload)
}

func sendExit(ch ssh.Channel, code uint32) {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], code)
	ch.SendRequest("exit-status", false, b[:])
}

// loadAverage reads the one-minute load average (Linux).
func loadAverage() float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
