package sshd

import (
	"errors"
	"os"

	"golang.org/x/crypto/ssh"
)

// capsError is a refusal at authentication by a connection cap (the
// account's connections), for the metrics' handshake failure reasons.
type capsError struct{ error }

func (e capsError) Unwrap() error { return e.error }

// connConfig returns the SSH configuration of one connection: the
// server's, with a key check that notes in *refused why it last refused a
// key ("caps" or "refused-key"; "" if it refused none). The check runs on
// the connection's handshake goroutine, before NewServerConn returns.
func (s *Server) connConfig() (*ssh.ServerConfig, *string) {
	conf := *s.ssh
	refused := new(string)
	conf.PublicKeyCallback = func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
		perms, err := s.checkKey(meta, key)
		if err != nil {
			*refused = "refused-key"
			if errors.As(err, new(capsError)) {
				*refused = "caps"
			}
		}
		return perms, err
	}
	return &conf, refused
}

// handshakeFailure names why a handshake failed (metrics.HandshakeReasons):
// its deadline passed, else a key was refused (the client then gives up,
// however it says so), else the client broke the protocol or left without
// offering a key.
func handshakeFailure(err error, refused string) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case refused != "":
		return refused
	}
	return "protocol"
}
