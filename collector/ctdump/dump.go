package ctdump

import (
	"context"
	"fmt"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Family selects which entries a dump returns.
type Family uint8

// Families of a dump request.
const (
	// FamilyAll dumps IPv4 and IPv6 entries in one pass (AF_UNSPEC: the
	// kernel filters by family only when one is given).
	FamilyAll  Family = unix.AF_UNSPEC
	FamilyIPv4 Family = unix.AF_INET
	FamilyIPv6 Family = unix.AF_INET6
)

// bufSize is the receive buffer. The kernel sizes the datagrams of a dump
// after the reader's buffer but caps them at 32 KiB (netlink_recvmsg in
// net/netlink/af_netlink.c), so 64 KiB always holds a whole datagram.
const bufSize = 64 << 10

// Stats describes one dump.
type Stats struct {
	// Entries is the number of entries handed to the callback.
	Entries int
	// Datagrams is the number of datagrams read.
	Datagrams int
	// Interrupted is set when the kernel flagged the dump as inconsistent
	// (NLM_F_DUMP_INTR): the table changed under it in a way that may have
	// skipped or repeated entries.
	Interrupted bool
}

// Dumper dumps conntrack tables. It holds one receive buffer, reused by
// every dump, and must not be used by two dumps at once.
type Dumper struct {
	buf []byte
	e   Entry

	// The outcome of the last readFD, kept here so that the function passed
	// to RawConn.Read is made once, not once per datagram.
	n      int
	rerr   error
	readFn func(fd uintptr) bool
}

// NewDumper returns a Dumper.
func NewDumper() *Dumper {
	d := &Dumper{buf: make([]byte, bufSize)}
	d.readFn = d.readFD
	return d
}

// Dump reads every conntrack entry of the network namespace netns (an open
// fd; 0 means the caller's) of the given family and calls fn for each, with
// a pointer valid only during the call. It only reads: the request is
// IPCTNL_MSG_CT_GET, never the variant that zeroes counters.
//
// The dump stops when ctx is done. fn runs on the dumping goroutine and
// should be quick: the kernel holds the rest of the table until it is read.
func (d *Dumper) Dump(ctx context.Context, netns int, family Family, fn func(*Entry)) (Stats, error) {
	var st Stats
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return st, fmt.Errorf("dial netfilter netlink: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetReadDeadline(dl); err != nil {
			return st, fmt.Errorf("set netlink deadline: %w", err)
		}
	}
	// Wake a blocked read when ctx is cancelled without a deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	req, err := conn.Send(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(nfnlSubsysCTNetlink<<8 | ipctnlMsgCTGet),
			Flags: netlink.Request | netlink.Dump,
		},
		// struct nfgenmsg: family, version NFNETLINK_V0, res_id 0.
		Data: []byte{byte(family), 0, 0, 0},
	})
	if err != nil {
		return st, fmt.Errorf("send conntrack dump request: %w", err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return st, fmt.Errorf("raw netlink socket: %w", err)
	}

	for {
		if err := ctx.Err(); err != nil {
			return st, fmt.Errorf("conntrack dump after %d entries: %w", st.Entries, err)
		}
		n, err := d.recv(raw)
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return st, fmt.Errorf("receive conntrack dump after %d entries: %w", st.Entries, err)
		}
		st.Datagrams++
		b, err := decodeDatagram(d.buf[:n], req.Header.Sequence, &d.e, fn)
		st.Entries += b.entries
		st.Interrupted = st.Interrupted || b.interrupted
		if err != nil {
			return st, fmt.Errorf("decode conntrack dump after %d entries: %w", st.Entries, err)
		}
		if b.done {
			return st, nil
		}
	}
}

// recv reads one datagram into d.buf without allocating (unix.Recvmsg and
// Recvfrom allocate a source address per call). MSG_TRUNC makes the kernel
// return the datagram's full length, so a datagram larger than the buffer
// is detected instead of silently cut.
func (d *Dumper) recv(raw syscall.RawConn) (int, error) {
	d.n, d.rerr = 0, nil
	if err := raw.Read(d.readFn); err != nil {
		return 0, err
	}
	n, rerr := d.n, d.rerr
	if rerr != nil {
		// ENOBUFS is not expected on a dump (the kernel fills the next
		// datagram only once this one is read) but is reported as is.
		return 0, rerr
	}
	if n > len(d.buf) {
		return 0, fmt.Errorf("%w: datagram of %d bytes exceeds the %d-byte buffer", ErrMalformed, n, len(d.buf))
	}
	if n < nlmsgHdrLen {
		return 0, fmt.Errorf("%w: datagram of %d bytes", ErrMalformed, n)
	}
	return n, nil
}

// readFD is the RawConn.Read callback of recv; it returns false to wait for
// the socket to become readable.
func (d *Dumper) readFD(fd uintptr) bool {
	r, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd,
		uintptr(unsafePointer(d.buf)), uintptr(len(d.buf)),
		unix.MSG_DONTWAIT|unix.MSG_TRUNC, 0, 0)
	switch {
	case errno == unix.EAGAIN:
		return false
	case errno != 0:
		d.rerr = errno
	default:
		d.n = int(r)
	}
	return true
}

// unsafePointer is the address of b's first byte, for recvfrom(2).
func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }
