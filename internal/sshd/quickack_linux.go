package sshd

import (
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// quickAckConn acknowledges every segment it reads at once during the SSH
// handshake.
//
// OpenSSH clients leave Nagle's algorithm on for non-interactive sessions,
// such as Nix's. During the SSH handshake the client writes two small
// packets in a row (KEX_ECDH_INIT after KEXINIT, SERVICE_REQUEST after
// NEWKEYS); Nagle holds the second until the first is acknowledged, and
// Linux delays that acknowledgement by 40 ms when the server has nothing
// to send. Two such stalls made every connection 80 ms slower, and Nix
// opens one connection per remote build, one build at a time. TCP_QUICKACK
// does not stick, so it is set again before each read, but only until the
// handshake is over: a system call per read would be wasted on the large
// transfers that follow. The handlers given to Accept set a deadline for
// the handshake and clear it once it is done, which ends the quick ACKs.
type quickAckConn struct {
	*net.TCPConn
	raw syscall.RawConn
	// handshake is set until the deadline is cleared.
	handshake atomic.Bool
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
	qc := &quickAckConn{TCPConn: tc, raw: raw}
	qc.handshake.Store(true)
	return qc
}

func (c *quickAckConn) Read(p []byte) (int, error) {
	if c.handshake.Load() {
		c.raw.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
		})
	}
	return c.TCPConn.Read(p)
}

// SetDeadline ends the quick ACKs when it clears the deadline, as the
// handlers do once the handshake is over.
func (c *quickAckConn) SetDeadline(t time.Time) error {
	if t.IsZero() {
		c.handshake.Store(false)
	}
	return c.TCPConn.SetDeadline(t)
}
