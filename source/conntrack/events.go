package conntrack

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source/netns"
)

// ctnetlink multicast groups (enum nfnetlink_groups in
// include/uapi/linux/netfilter/nfnetlink.h).
const (
	nfnlgrpConntrackNew     = 1
	nfnlgrpConntrackDestroy = 3
)

// ErrEventsLost is returned by Listener.Receive when the kernel dropped
// events because the socket's receive buffer was full (ENOBUFS): counts
// kept from events are wrong from then on, and the table must be read again
// with a full dump.
var ErrEventsLost = errors.New("conntrack events lost (receive buffer overrun)")

// Listener receives conntrack NEW and DESTROY events of one network
// namespace, decoded in place like Dumper's entries.
type Listener struct {
	conn *netlink.Conn
	raw  syscall.RawConn
	buf  []byte
	e    Entry

	n      int
	rerr   error
	readFn func(fd uintptr) bool
}

// Listen subscribes to the NEW and DESTROY events of the network namespace
// target. rcvbuf, when not 0, sets the
// socket's receive buffer (SO_RCVBUF), which bounds how many events can
// wait while the reader is busy. The kernel sends conntrack events only
// while net.netfilter.nf_conntrack_events is not 0 (its default 2 sends
// them while someone listens, kernel 6.0 and later).
func Listen(target netns.Target, rcvbuf int) (*Listener, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: target.FD()})
	if err != nil {
		return nil, fmt.Errorf("dial netfilter netlink: %w", err)
	}
	l := &Listener{conn: conn, buf: make([]byte, bufSize)}
	l.readFn = l.readFD
	fail := func(err error) (*Listener, error) { conn.Close(); return nil, err }
	if rcvbuf > 0 {
		if err := conn.SetReadBuffer(rcvbuf); err != nil {
			return fail(fmt.Errorf("set receive buffer: %w", err))
		}
	}
	for _, g := range []uint32{nfnlgrpConntrackNew, nfnlgrpConntrackDestroy} {
		if err := conn.JoinGroup(g); err != nil {
			return fail(fmt.Errorf("join conntrack event group %d: %w", g, err))
		}
	}
	if l.raw, err = conn.SyscallConn(); err != nil {
		return fail(fmt.Errorf("raw netlink socket: %w", err))
	}
	return l, nil
}

// Close unsubscribes.
func (l *Listener) Close() error { return l.conn.Close() }

// Receive waits for the next datagram of events, until ctx is done or the
// deadline passes, and calls fn for each event in it (Entry.Event says
// which). It returns the number of events, os.ErrDeadlineExceeded (wrapped)
// at the deadline, and ErrEventsLost when the kernel dropped events.
func (l *Listener) Receive(ctx context.Context, deadline time.Time, fn func(*Entry)) (int, error) {
	if err := l.conn.SetReadDeadline(deadline); err != nil {
		return 0, fmt.Errorf("set netlink deadline: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = l.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	l.n, l.rerr = 0, nil
	if err := l.raw.Read(l.readFn); err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, err
	}
	if errors.Is(l.rerr, unix.ENOBUFS) {
		return 0, ErrEventsLost
	}
	if l.rerr != nil {
		return 0, fmt.Errorf("receive conntrack events: %w", l.rerr)
	}
	if l.n > len(l.buf) {
		return 0, fmt.Errorf("%w: datagram of %d bytes exceeds the %d-byte buffer", ErrMalformed, l.n, len(l.buf))
	}
	b, err := decodeEvents(l.buf[:l.n], &l.e, fn)
	return b.entries, err
}

func (l *Listener) readFD(fd uintptr) bool {
	r, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd,
		uintptr(unsafePointer(l.buf)), uintptr(len(l.buf)),
		unix.MSG_DONTWAIT|unix.MSG_TRUNC, 0, 0)
	switch {
	case errno == unix.EAGAIN:
		return false
	case errno != 0:
		l.rerr = errno
	default:
		l.n = int(r)
	}
	return true
}
