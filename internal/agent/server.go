package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/build"
	"github.com/nixfarm/nixfarm/internal/credentials"
	"github.com/nixfarm/nixfarm/internal/metrics"
	"github.com/nixfarm/nixfarm/internal/scheduler"
	"github.com/nixfarm/nixfarm/internal/sshd"
	"github.com/nixfarm/nixfarm/internal/store"
	"github.com/nixfarm/nixfarm/internal/worker"
)

// Registry is where agents join and leave: the scheduler.
type Registry interface {
	// AddWorker refuses a name a registered worker holds.
	AddWorker(w scheduler.Worker) error
	RemoveWorker(name string, reason error)
	Heartbeat(name string, load scheduler.Load)
	HasWorker(name string) bool
}

// Credentials are what the server needs from the credential store
// (credentials.Store).
type Credentials interface {
	// Verify checks that secret is a live credential of name and
	// returns its id.
	Verify(ctx context.Context, name, secret string) (int64, error)
	// Live reports which of ids are still live.
	Live(ctx context.Context, ids []int64) (map[int64]bool, error)
}

// ServerConfig configures the coordinator's side.
type ServerConfig struct {
	HostKey ssh.Signer
	// Credentials admit each agent under its own name only.
	Credentials Credentials
	Farm        store.Views
	Registry    Registry
	// HeartbeatInterval is what agents are told to use (5s); an agent
	// silent for three intervals is lost.
	HeartbeatInterval time.Duration
	// RevocationCheck is how often the credentials of connected agents
	// are checked, so a revoked one is disconnected (2s).
	RevocationCheck time.Duration
	// Limits bound the connections the agent listener holds; only the
	// total, the unauthenticated ones per source and the handshake
	// timeout apply (agents keep one connection, never idle).
	Limits sshd.Limits
	// Metrics, if set, counts the listener's connections and handshake
	// failures (listener="agent").
	Metrics *metrics.Farm
	Log     *slog.Logger
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
	conn   ssh.Conn
	credID int64
	done   chan struct{}
	// revoked is closed when the agent's credential is withdrawn.
	revoked     chan struct{}
	revokedOnce sync.Once
}

// errRevoked ends the session of an agent whose credential is withdrawn.
var errRevoked = errors.New("its credential was revoked")

// credentialExt carries the id of the credential an agent logged in with
// from the password callback to the connection.
const credentialExt = "nixfarm-credential"

// NewServer returns an agent server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Credentials == nil {
		return nil, errors.New("the agent server needs a credential store")
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = 5 * time.Second
	}
	if cfg.RevocationCheck == 0 {
		cfg.RevocationCheck = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &Server{cfg: cfg, agents: map[string]*agentConn{}, gate: sshd.NewGate(cfg.Limits, cfg.Log)}
	s.ssh = &ssh.ServerConfig{
		ServerVersion:    "SSH-2.0-nixfarm-coordinator",
		MaxAuthTries:     3,
		PasswordCallback: s.authenticate,
	}
	s.ssh.AddHostKey(cfg.HostKey)
	return s, nil
}

// authenticate admits an agent whose password is a live credential of
// the name it logs in as, unless a worker holds that name already.
func (s *Server) authenticate(meta ssh.ConnMetadata, password []byte) (*ssh.Permissions, error) {
	name := meta.User()
	log := s.cfg.Log.With("worker", name, "remote", meta.RemoteAddr())
	refuse := func(err error, msg string) (*ssh.Permissions, error) {
		log.Warn("worker refused", "reason", err)
		return nil, &ssh.BannerError{Err: err, Message: "nixfarm: " + msg + "\n"}
	}
	if err := ValidName(name); err != nil {
		return refuse(err, err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := s.cfg.Credentials.Verify(ctx, name, string(password))
	switch {
	case errors.Is(err, credentials.ErrUnknown):
		return refuse(err, fmt.Sprintf("the credential is not valid for worker %s (never issued, or revoked); on the coordinator, `nixfarm workers add %s` issues one", name, name))
	case errors.Is(err, credentials.ErrWrongName):
		return refuse(err, err.Error())
	case err != nil:
		log.Error("checking a worker's credential", "err", err)
		return nil, &ssh.BannerError{Err: err, Message: "nixfarm: the coordinator could not check the credential; try again later\n"}
	}
	if err := s.nameFree(name); err != nil {
		return refuse(err, err.Error())
	}
	return &ssh.Permissions{Extensions: map[string]string{credentialExt: strconv.FormatInt(id, 10)}}, nil
}

// nameFree refuses a name a connected agent or another worker holds.
func (s *Server) nameFree(name string) error {
	s.mu.Lock()
	_, connected := s.agents[name]
	s.mu.Unlock()
	if connected || s.cfg.Registry.HasWorker(name) {
		return fmt.Errorf("worker name %s is taken by a connected worker; it is not replaced", name)
	}
	return nil
}

// Serve accepts agents until ctx ends, then drops them all.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go s.watchRevocations(watchCtx)
	return sshd.Accept(ctx, ln, s.cfg.Log, func(nc net.Conn) { s.handle(ctx, nc) })
}

// watchRevocations disconnects agents whose credential has been revoked.
func (s *Server) watchRevocations(ctx context.Context) {
	t := time.NewTicker(s.cfg.RevocationCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		conns := make([]*agentConn, 0, len(s.agents))
		ids := make([]int64, 0, len(s.agents))
		for _, a := range s.agents {
			conns = append(conns, a)
			ids = append(ids, a.credID)
		}
		s.mu.Unlock()
		if len(ids) == 0 {
			continue
		}
		live, err := s.cfg.Credentials.Live(ctx, ids)
		if err != nil {
			s.cfg.Log.Error("checking connected workers' credentials", "err", err)
			continue
		}
		for _, a := range conns {
			if !live[a.credID] {
				a.revokedOnce.Do(func() { close(a.revoked) })
			}
		}
	}
}

func (s *Server) handle(ctx context.Context, nc net.Conn) {
	s.cfg.Metrics.ConnOpened(metrics.ListenerAgent)
	defer s.cfg.Metrics.ConnClosed(metrics.ListenerAgent)
	adm, err := s.gate.Admit(nc.RemoteAddr())
	if err != nil {
		s.cfg.Metrics.HandshakeFailed(metrics.ListenerAgent, "caps")
		nc.Close()
		return
	}
	defer adm.Close()
	nc.SetDeadline(time.Now().Add(s.gate.Limits().HandshakeTimeout))
	// A copy of the configuration per connection notes whether a
	// credential was refused (on the handshake's goroutine).
	conf := *s.ssh
	refused := false
	conf.PasswordCallback = func(meta ssh.ConnMetadata, password []byte) (*ssh.Permissions, error) {
		perms, err := s.authenticate(meta, password)
		refused = refused || err != nil
		return perms, err
	}
	sc, chans, reqs, err := ssh.NewServerConn(nc, &conf)
	if err != nil {
		reason := "protocol"
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			reason = "timeout"
		case refused:
			reason = "refused-credential"
		}
		s.cfg.Metrics.HandshakeFailed(metrics.ListenerAgent, reason)
		s.cfg.Log.Debug("agent handshake failed", "remote", nc.RemoteAddr(), "err", err)
		nc.Close()
		return
	}
	nc.SetDeadline(time.Time{})
	adm.Authenticated("")
	name := sc.User()
	var credID int64
	if sc.Permissions != nil {
		credID, _ = strconv.ParseInt(sc.Permissions.Extensions[credentialExt], 10, 64)
	}
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
	err = s.session(ctx, sc, ch, name, credID, log)
	log.Info("worker disconnected", "reason", err)
}

// session registers the agent, then follows its heartbeats until it goes.
func (s *Server) session(ctx context.Context, sc *ssh.ServerConn, ch ssh.Channel, name string, credID int64, log *slog.Logger) error {
	me := &agentConn{conn: sc, credID: credID, done: make(chan struct{}), revoked: make(chan struct{})}
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
		case <-me.revoked:
			return message{}, errRevoked
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

	// A name is held by one connection at a time: one that comes while
	// it is held is refused, never put in its place.
	defer close(me.done)
	s.mu.Lock()
	_, taken := s.agents[name]
	if !taken {
		s.agents[name] = me
	}
	s.mu.Unlock()
	if taken {
		err := fmt.Errorf("worker name %s is taken by a connected worker; it is not replaced", name)
		log.Warn("worker refused", "reason", err)
		return fail(err)
	}
	defer func() {
		s.mu.Lock()
		if s.agents[name] == me {
			delete(s.agents, name)
		}
		s.mu.Unlock()
	}()

	executor := worker.NewExecutor(name, s.cfg.Farm, &channelTransport{conn: sc}, s.cfg.Log)
	// An agent is anyone holding a credential: its outputs are announced
	// to clients only once verified, so a wrong one is retried elsewhere
	// without a client having been answered from it.
	executor.AnnounceAfterVerify = true
	if err := s.cfg.Registry.AddWorker(scheduler.Worker{Name: name, Kind: "agent", Caps: caps, Builder: executor}); err != nil {
		log.Warn("worker refused", "reason", err)
		return fail(err)
	}
	// lost wraps scheduler.ErrLeft when the agent left on purpose (its
	// goodbye, its revocation, the farm stopping): the scheduler counts
	// it lost only if builds were running on it.
	var lost error
	defer func() { s.cfg.Registry.RemoveWorker(name, lost) }()
	defer func() {
		if errors.Is(lost, errRevoked) {
			fail(fmt.Errorf("worker %s: %w; the coordinator disconnected it", name, errRevoked))
		}
	}()
	log.Info("worker registered", "version", reg.Version, "capabilities", caps.String(), "max_jobs", caps.MaxJobs)
	if _, err := ch.Write(encode(message{Type: "welcome", HeartbeatMillis: s.cfg.HeartbeatInterval.Milliseconds()})); err != nil {
		lost = err
		return err
	}
	for {
		m, err := next(3 * s.cfg.HeartbeatInterval)
		if errors.Is(err, errRevoked) || (err != nil && ctx.Err() != nil) {
			lost = fmt.Errorf("%w: %w", scheduler.ErrLeft, err)
			return err
		}
		if err != nil {
			lost = err
			return err
		}
		switch {
		case m.Type == "heartbeat" && m.Load != nil:
			s.cfg.Registry.Heartbeat(name, *m.Load)
		case m.Type == "goodbye":
			lost = fmt.Errorf("%w: the agent said goodbye", scheduler.ErrLeft)
			return lost
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
	reported := &reportedUsage{}
	go func() {
		status := errors.New("the agent closed the build channel without an exit status")
		for req := range reqs {
			if req.Type == usageRequest {
				if u, err := parseUsage(req.Payload); err == nil {
					reported.set(u)
				}
			}
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
		Usage:  reported,
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
