package sshd

import (
	"net"
	"syscall"
)

// quickAckConn acknowledges every segment it reads at once.
//
// OpenSSH clients leave Nagle's algorithm on for non-interactive sessions,
// such as Nix's. During the SSH handshake the client writes two small
// packets in a row (KEX_ECDH_INIT after KEXINIT, SERVICE_REQUEST after
// NEWKEYS); Nagle holds the second until the first is acknowledged, and
// Linux delays that acknowledgement by 40 ms when the server has nothing
// to send. Two such stalls made every connection 80 ms slower, and Nix
// opens one connection per remote build, one build at a time. TCP_QUICKACK
// does not stick, so it is set again before each read.
type quickAckConn struct {
	*net.TCPConn
	raw syscall.RawConn
}

func withQuickAck(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &quickAckConn{TCPConn: tc, raw: raw}
}

func (c *quickAckConn) Read(p []byte) (int, error) {
	c.raw.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	})
	return c.TCPConn.Read(p)
}
