// Package sshd is nixfarm's SSH front end, built on golang.org/x/crypto/ssh.
// It authenticates clients by public key against an OpenSSH
// authorized_keys file (the key's comment names the account) and then a
// KeyLookup (the state database's keys), accepts
// exec requests only, and hands each command to a Handler. It knows nothing
// of Nix; the Handler decides which commands exist.
package sshd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixfarm/nixfarm/internal/metrics"
)

// Session is one exec request on an authenticated connection.
type Session struct {
	Account     string
	Fingerprint string
	User        string
	RemoteAddr  net.Addr
	Command     string
	Env         map[string]string
	Stdin       io.Reader
	Stdout      io.Writer
	Stderr      io.Writer
}

// Handler runs exec requests. It returns the command's exit status. The
// context ends when the client closes the channel or the connection.
type Handler interface {
	Exec(ctx context.Context, s *Session) uint32
}

// Config configures a Server.
type Config struct {
	HostKey            ssh.Signer
	AuthorizedKeysFile string
	// Keys, if set, is consulted for keys the authorized_keys file does
	// not hold, at every authentication.
	Keys    KeyLookup
	Handler Handler
	Log     *slog.Logger
	// Banner, if set, is shown to clients before authentication.
	Banner string
	// Ciphers are the ciphers offered, DefaultCiphers if empty.
	Ciphers []string
	// Limits bound connections, per source, per account and in all, and
	// how long they may take to authenticate and stay idle.
	Limits Limits
	// Metrics, if set, counts connections, handshake failures and the
	// bytes of each command.
	Metrics *metrics.Farm
}

// KeyLookup finds the account a public key authenticates as.
type KeyLookup interface {
	LookupKey(ctx context.Context, key ssh.PublicKey) (account string, ok bool, err error)
}

// DefaultCiphers are AES-GCM only. An OpenSSH client takes the first
// cipher of its own list that the server offers, and its list starts with
// chacha20-poly1305, which Go implements without assembly on amd64: it
// cost a farm more CPU than everything else in a large transfer. Offering
// AES-GCM alone (OpenSSH 6.2 and later have it) makes clients pick it;
// AES-NI makes it several times cheaper.
var DefaultCiphers = []string{ssh.CipherAES128GCM, ssh.CipherAES256GCM}

// Server accepts SSH connections.
type Server struct {
	cfg  Config
	keys *keyFile
	log  *slog.Logger
	ssh  *ssh.ServerConfig
	gate *Gate
}

// New returns a server. It reads the authorized_keys file once to report
// errors early; later changes to the file are picked up without a restart.
func New(cfg Config) (*Server, error) {
	if cfg.HostKey == nil || cfg.Handler == nil {
		return nil, errors.New("sshd: host key and handler are required")
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	s := &Server{cfg: cfg, keys: &keyFile{path: cfg.AuthorizedKeysFile}, log: log, gate: NewGate(cfg.Limits, log)}
	if _, _, err := s.keys.lookup(cfg.HostKey.PublicKey()); err != nil {
		return nil, err
	}
	s.ssh = &ssh.ServerConfig{
		PublicKeyCallback: s.checkKey,
		ServerVersion:     "SSH-2.0-nixfarm",
		MaxAuthTries:      10,
	}
	s.ssh.Ciphers = cfg.Ciphers
	if len(s.ssh.Ciphers) == 0 {
		s.ssh.Ciphers = DefaultCiphers
	}
	supported := ssh.SupportedAlgorithms().Ciphers
	for _, c := range s.ssh.Ciphers {
		if !slices.Contains(supported, c) {
			return nil, fmt.Errorf("sshd: unknown or insecure cipher %q (supported: %s)", c, strings.Join(supported, ", "))
		}
	}
	s.ssh.AddHostKey(cfg.HostKey)
	return s, nil
}

const (
	extAccount     = "nixfarm-account"
	extFingerprint = "nixfarm-fingerprint"
)

func (s *Server) checkKey(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	fp := ssh.FingerprintSHA256(key)
	ak, ok, err := s.keys.lookup(key)
	account := ak.Account
	if !ok && s.cfg.Keys != nil {
		// The database answers for keys the file does not hold, even if
		// the file cannot be read right now.
		var dbErr error
		account, ok, dbErr = s.cfg.Keys.LookupKey(context.Background(), key)
		err = errors.Join(err, dbErr)
	}
	if !ok && err != nil {
		s.log.Error("cannot check key", "err", err)
		return nil, &ssh.BannerError{Err: err, Message: "nixfarm: the farm cannot read its authorized keys right now; tell the farm's operator.\n"}
	}
	if !ok {
		s.log.Info("key refused", "fingerprint", fp, "type", key.Type(), "user", meta.User(), "remote", meta.RemoteAddr())
		return nil, &ssh.BannerError{
			Err: fmt.Errorf("key %s is not authorized", fp),
			Message: fmt.Sprintf("nixfarm: your key %s (%s) is not authorized on this farm.\n"+
				"nixfarm: ask the farm's operator to add it to your account (NAME), on the farm's host:\n"+
				"nixfarm:   echo '%s' | nixfarm keys add --account NAME -\n"+
				"nixfarm: If you meant another key: the key is the build user's (root's, when nix-daemon builds);\n"+
				"nixfarm: `nixfarm doctor` shows which one it uses.\n", fp, key.Type(), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))),
		}
	}
	if err := s.gate.AccountFull(account); err != nil {
		s.gate.logRefusal("connection refused", "account", account, "remote", meta.RemoteAddr().String(), "reason", err.Error())
		return nil, &ssh.BannerError{Err: capsError{err},
			Message: "nixfarm: " + err.Error() + "; close some, or ask the farm's operator to raise --max-connections-per-account.\n"}
	}
	return &ssh.Permissions{Extensions: map[string]string{extAccount: account, extFingerprint: fp}}, nil
}

// HostKey returns the server's public host key.
func (s *Server) HostKey() ssh.PublicKey { return s.cfg.HostKey.PublicKey() }

// Serve accepts connections until ctx ends or the listener is closed. It
// waits for open connections to finish before returning.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return Accept(ctx, ln, s.log, func(conn net.Conn) { s.handleConn(ctx, conn) })
}

// Accept backoff: from minAcceptDelay, doubling, to maxAcceptDelay, as
// net/http's Server does.
const (
	minAcceptDelay = 5 * time.Millisecond
	maxAcceptDelay = time.Second
)

// Accept runs handle for each connection ln accepts, each on its own
// goroutine, until ctx ends or the listener is closed. Any other error
// (out of file descriptors, a connection reset before it was accepted) is
// logged, at most every few seconds, and retried after a backoff: a flood
// of connections may slow the front end but never ends it. It returns
// once every handler has returned. On Linux, a connection acknowledges
// what it reads at once, to speed up the SSH handshake, until handle
// clears the connection's deadline with SetDeadline(time.Time{}) to mark
// the end of the handshake.
func Accept(ctx context.Context, ln net.Listener, log *slog.Logger, handle func(net.Conn)) error {
	if log == nil {
		log = slog.Default()
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	var delay time.Duration
	failures := 0
	logged := newRateLimit(5 * time.Second)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accepting connections: %w", err)
			}
			failures++
			delay = min(max(2*delay, minAcceptDelay), maxAcceptDelay)
			if ok, _ := logged.allow(time.Now()); ok {
				log.Warn("accepting a connection failed; retrying", "addr", ln.Addr().String(), "err", err,
					"failures", failures, "retry_in", delay)
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil
			}
			continue
		}
		if failures > 0 {
			log.Info("accepting connections again", "addr", ln.Addr().String(), "failures", failures)
		}
		delay, failures = 0, 0
		conn = withQuickAck(conn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			handle(conn)
		}()
	}
}

func (s *Server) handleConn(ctx context.Context, nc net.Conn) {
	s.cfg.Metrics.SSHConnOpened()
	defer s.cfg.Metrics.SSHConnClosed()
	adm, err := s.gate.Admit(nc.RemoteAddr())
	if err != nil {
		s.cfg.Metrics.SSHHandshakeFailed("caps")
		nc.Close()
		return
	}
	defer adm.Close()
	limits := s.gate.Limits()
	nc.SetDeadline(time.Now().Add(limits.HandshakeTimeout)) // for the handshake only
	conf, refused := s.connConfig()
	sc, chans, reqs, err := ssh.NewServerConn(nc, conf)
	if err != nil {
		s.cfg.Metrics.SSHHandshakeFailed(handshakeFailure(err, *refused))
		s.log.Debug("ssh handshake failed", "remote", nc.RemoteAddr(), "err", err)
		nc.Close()
		return
	}
	nc.SetDeadline(time.Time{})
	account := sc.Permissions.Extensions[extAccount]
	if err := adm.Authenticated(account); err != nil {
		s.cfg.Metrics.SSHHandshakeFailed("caps")
		sc.Close()
		return
	}
	log := s.log.With("account", account, "remote", nc.RemoteAddr())
	log.Debug("ssh connection")
	// A connection with no session open for IdleTimeout is closed; an
	// open session, however quiet, keeps it.
	idle := newIdleTimer(limits.IdleTimeout, func() {
		log.Info("closing an idle connection", "idle", limits.IdleTimeout)
		sc.Close()
	})
	defer idle.stop()
	connCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		sc.Wait()
		cancel()
	}()
	// On shutdown the connection is closed, which ends its sessions.
	stop := context.AfterFunc(ctx, func() { sc.Close() })
	defer stop()
	go ssh.DiscardRequests(reqs)
	var wg sync.WaitGroup
	for nch := range chans {
		if nch.ChannelType() != "session" {
			nch.Reject(ssh.UnknownChannelType, "nixfarm accepts session channels only")
			continue
		}
		ch, chReqs, err := nch.Accept()
		if err != nil {
			continue
		}
		idle.enter()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer idle.leave()
			s.handleSession(connCtx, log, sc, ch, chReqs)
		}()
	}
	wg.Wait()
}

type execMsg struct{ Command string }
type envMsg struct{ Name, Value string }
type exitStatusMsg struct{ Status uint32 }

const notExec = "nixfarm: this SSH endpoint serves Nix remote builds only; it has no shell.\n" +
	"nixfarm: use it from Nix as a builder, e.g. --builders 'ssh://HOST x86_64-linux'.\n"

func (s *Server) handleSession(ctx context.Context, log *slog.Logger, sc *ssh.ServerConn, ch ssh.Channel, reqs <-chan *ssh.Request) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer ch.Close()
	env := map[string]string{}
	for req := range reqs {
		switch req.Type {
		case "env":
			var m envMsg
			if ssh.Unmarshal(req.Payload, &m) == nil && len(env) < 64 {
				env[m.Name] = m.Value
			}
			req.Reply(true, nil)
		case "exec":
			var m execMsg
			if err := ssh.Unmarshal(req.Payload, &m); err != nil {
				req.Reply(false, nil)
				continue
			}
			req.Reply(true, nil)
			// Requests after exec (e.g. window changes) are answered, and
			// the end of the channel cancels the command.
			go func() {
				for r := range reqs {
					r.Reply(false, nil)
				}
				cancel()
			}()
			sess := &Session{
				Account:     sc.Permissions.Extensions[extAccount],
				Fingerprint: sc.Permissions.Extensions[extFingerprint],
				User:        sc.User(),
				RemoteAddr:  sc.RemoteAddr(),
				Command:     m.Command,
				Env:         env,
				Stdin:       &counting{r: ch},
				Stdout:      &counting{w: ch},
				Stderr:      ch.Stderr(),
			}
			start := time.Now()
			status := s.cfg.Handler.Exec(ctx, sess)
			in, out := sess.Stdin.(*counting).n.Load(), sess.Stdout.(*counting).n.Load()
			s.cfg.Metrics.SSHBytes(in, out)
			log.Debug("exec finished", "command", m.Command, "status", status, "duration", time.Since(start),
				"bytes_in", in, "bytes_out", out)
			s.exit(ch, status)
			return
		case "shell", "subsystem":
			req.Reply(true, nil)
			io.WriteString(ch.Stderr(), notExec)
			s.exit(ch, 1)
			return
		default: // pty-req, x11-req, auth-agent-req@openssh.com, ...
			req.Reply(false, nil)
		}
	}
}

func (s *Server) exit(ch ssh.Channel, status uint32) {
	ch.SendRequest("exit-status", false, ssh.Marshal(exitStatusMsg{status}))
	ch.CloseWrite()
}

// counting counts the bytes a session reads from or writes to its
// client, for the log.
type counting struct {
	r io.Reader
	w io.Writer
	n atomic.Int64
}

func (c *counting) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *counting) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}
