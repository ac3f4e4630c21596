package agent

import (
	"bufio"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/sshd"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// Registry is where agents join and leave: the scheduler.
type Registry interface {
	AddWorker(w scheduler.Worker) error
	RemoveWorker(name string, reason error)
	Heartbeat(name string, load scheduler.Load)
}

// ServerConfig configures the coordinator's side.
type ServerConfig struct {
	HostKey ssh.Signer
	// Token is the join token agents must present.
	Token    string
	Farm     store.Views
	Registry Registry
	// HeartbeatInterval is what agents are told to use (5s); an agent
	// silent for three intervals is lost.
	HeartbeatInterval time.Duration
	// Limits bound the connections the agent listener holds; only the
	// total, the unauthenticated ones per source and the handshake
	// timeout apply (agents keep one connection, never idle).
	Limits sshd.Limits
	Log    *slog.Logger
}

// Server accepts agents.
type Server struct {
	cfg  ServerConfig
	ssh  *ssh.ServerConfig
	gate *sshd.Gate

	mu     sync.Mutex
	agents map[string]*agentConn
}

type agentConn struct {
	conn ssh.Conn
	done chan struct{}
}

// NewServer returns an agent server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if len(cfg.Token) < 16 {
		return nil, errors.New("the worker join token must be at least 16 characters")
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &Server{cfg: cfg, agents: map[string]*agentConn{}, gate: sshd.NewGate(cfg.Limits, cfg.Log)}
	s.ssh = &ssh.ServerConfig{
		ServerVersion: "SSH-2.0-nixfarm-coordinator",
		MaxAuthTries:  3,
		PasswordCallback: func(meta ssh.ConnMetadata, password []byte) (*ssh.Permissions, error) {
			if err := ValidName(meta.User()); err != nil {
				return nil, &ssh.BannerError{Err: err, Message: "nixfarm: " + err.Error() + "\n"}
			}
			if subtle.ConstantTimeCompare(password, []byte(cfg.Token)) != 1 {
				cfg.Log.Warn("worker refused: wrong join token", "worker", meta.User(), "remote", meta.RemoteAddr())
				return nil, &ssh.BannerError{Err: errors.New("wrong join token"),
					Message: "nixfarm: the join token is wrong; use the coordinator's --worker-token-file\n"}
			}
			return nil, nil
		},
	}
	s.ssh.AddHostKey(cfg.HostKey)
	return s, nil
}

// Serve accepts agents until ctx ends, then drops them all.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return sshd.Accept(ctx, ln, s.cfg.Log, func(nc net.Conn) { s.handle(ctx, nc) })
}

func (s *Server) handle(ctx context.Context, nc net.Conn) {
	adm, err := s.gate.Admit(nc.RemoteAddr())
	if err != nil {
		nc.Close()
		return
	}
	defer adm.Close()
	nc.SetDeadline(time.Now().Add(s.gate.Limits().HandshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(nc, s.ssh)
	if err != nil {
		s.cfg.Log.Debug("agent handshake failed", "remote", nc.RemoteAddr(), "err", err)
		nc.Close()
		return
	}
	nc.SetDeadline(time.Time{})
	adm.Authenticated("")
	name := sc.User()
	log := s.cfg.Log.With("worker", name, "remote", nc.RemoteAddr())
	go ssh.DiscardRequests(reqs)
	stop := context.AfterFunc(ctx, func() { sc.Close() })
	defer stop()
	defer sc.Close()

	// The control channel comes first; agents open nothing else.
	var control ssh.NewChannel
	for nch := range chans {
		if nch.ChannelType() == controlChannel && control == nil {
			control = nch
			go func() {
				for other := range chans {
					other.Reject(ssh.Prohibited, "agents open only the control channel")
				}
			}()
			break
		}
		nch.Reject(ssh.UnknownChannelType, "open the control channel first")
	}
	if control == nil {
		return
	}
	ch, chReqs, err := control.Accept()
	if err != nil {
		return
	}
	go ssh.DiscardRequests(chReqs)
	err = s.session(ctx, sc, ch, name, log)
	log.Info("worker disconnected", "reason", err)
}

// session registers the agent, then follows its heartbeats until it goes.
func (s *Server) session(ctx context.Context, sc *ssh.ServerConn, ch ssh.Channel, name string, log *slog.Logger) error {
	msgs := make(chan message)
	readErr := make(chan error, 1)
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		lines := bufio.NewReaderSize(ch, 64<<10)
		for {
			m, err := readMessage(lines)
			if err != nil {
				readErr <- err
				return
			}
			select {
			case msgs <- m:
			case <-quit:
				return
			}
		}
	}()
	// next waits for a message, ending the connection if none comes.
	next := func(timeout time.Duration) (message, error) {
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case m := <-msgs:
			return m, nil
		case err := <-readErr:
			return message{}, err
		case <-t.C:
			sc.Close()
			return message{}, fmt.Errorf("nothing heard from the agent for %s", timeout)
		case <-ctx.Done():
			return message{}, ctx.Err()
		}
	}
	fail := func(err error) error {
		ch.Write(encode(message{Type: "error", Message: err.Error()}))
		ch.Close()
		return err
	}
	reg, err := next(30 * time.Second)
	if err != nil {
		return fmt.Errorf("reading registration: %w", err)
	}
	if reg.Type != "register" || reg.Capabilities == nil {
		return fail(fmt.Errorf("expected a registration, got %q", reg.Type))
	}
	if reg.Name != name {
		return fail(fmt.Errorf("the agent calls itself %q but logged in as %q", reg.Name, name))
	}
	caps := *reg.Capabilities
	if err := caps.Validate(); err != nil {
		return fail(err)
	}

	// A worker that comes back under the same name replaces its old
	// connection, whose builds go elsewhere.
	me := &agentConn{conn: sc, done: make(chan struct{})}
	defer close(me.done)
	s.mu.Lock()
	old := s.agents[name]
	s.agents[name] = me
	s.mu.Unlock()
	if old != nil {
		old.conn.Close()
		<-old.done
	}
	defer func() {
		s.mu.Lock()
		if s.agents[name] == me {
			delete(s.agents, name)
		}
		s.mu.Unlock()
	}()

	executor := worker.NewExecutor(name, s.cfg.Farm, &channelTransport{conn: sc}, s.cfg.Log)
	if err := s.cfg.Registry.AddWorker(scheduler.Worker{Name: name, Kind: "agent", Caps: caps, Builder: executor}); err != nil {
		return fail(err)
	}
	var lost error
	defer func() { s.cfg.Registry.RemoveWorker(name, lost) }()
	log.Info("worker registered", "version", reg.Version, "capabilities", caps.String(), "max_jobs", caps.MaxJobs)
	if _, err := ch.Write(encode(message{Type: "welcome", HeartbeatMillis: s.cfg.HeartbeatInterval.Milliseconds()})); err != nil {
		lost = err
		return err
	}
	for {
		m, err := next(3 * s.cfg.HeartbeatInterval)
		if err != nil {
			lost = err
			return err
		}
		if m.Type == "heartbeat" && m.Load != nil {
			s.cfg.Registry.Heartbeat(name, *m.Load)
		}
	}
}

func readMessage(r *bufio.Reader) (message, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return message{}, errors.New("control message too long")
		}
		return message{}, err
	}
	var m message
	if err := json.Unmarshal(line, &m); err != nil {
		return message{}, fmt.Errorf("bad control message: %w", err)
	}
	return m, nil
}

// Agents lists the names of connected agents.
func (s *Server) Agents() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.agents {
		out = append(out, n)
	}
	return out
}

// channelTransport opens build channels to an agent.
type channelTransport struct{ conn ssh.Conn }

func (t *channelTransport) Open(ctx context.Context, opts build.Options) (*worker.Stream, error) {
	payload, _ := json.Marshal(buildOptions{Cores: opts.Cores})
	ch, reqs, err := t.conn.OpenChannel(buildChannel, payload)
	if err != nil {
		return nil, fmt.Errorf("opening a build channel: %w", err)
	}
	exited := make(chan error, 1)
	go func() {
		status := errors.New("the agent closed the build channel without an exit status")
		for req := range reqs {
			if req.Type == "exit-status" && len(req.Payload) == 4 {
				code := uint32(req.Payload[0])<<24 | uint32(req.Payload[1])<<16 | uint32(req.Payload[2])<<8 | uint32(req.Payload[3])
				status = nil
				if code != 0 {
					status = fmt.Errorf("nix-store --serve on the agent exited with status %d", code)
				}
			}
			if req.WantReply {
				req.Reply(false, nil)
			}
		}
		exited <- status
	}()
	stop := context.AfterFunc(ctx, func() { ch.Close() })
	return &worker.Stream{
		Stdin:  writeCloser{ch},
		Stdout: ch,
		Stderr: ch.Stderr(),
		Wait: func() error {
			defer stop()
			defer ch.Close()
			select {
			case err := <-exited:
				return err
			case <-time.After(30 * time.Second):
				return errors.New("the agent did not end the build channel")
			}
		},
	}, nil
}

// writeCloser turns Close into CloseWrite: end of input, not of channel.
type writeCloser struct{ ch ssh.Channel }

func (w writeCloser) Write(p []byte) (int, error) { return w.ch.Write(p) }
func (w writeCloser) Close() error                { return w.ch.CloseWrite() }
