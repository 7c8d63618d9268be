package conntrack

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source/netlinkattr"
	"github.com/netinspect/netinspect/source/netns"
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

// bufSize is the size of each receive buffer. The kernel sizes the
// datagrams of a dump after the reader's buffer but caps them at 32 KiB
// (netlink_recvmsg in net/netlink/af_netlink.c), so 64 KiB always holds a
// whole datagram.
const bufSize = 64 << 10

// buffers is how many datagrams can be in flight between the goroutine that
// reads the socket and the one that decodes.
//
// Why two goroutines: the kernel builds the next datagram of a dump inside
// the recvmsg(2) that returns the current one (netlink_recvmsg calls
// netlink_dump once the queue is below half the receive buffer), so reading
// is where the kernel's share of a dump runs. Decoding and counting on
// another goroutine lets both proceed at once on two CPUs; a pass then costs
// about the kernel's dump time instead of the kernel's time plus ours.
const buffers = 4

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

// Dumper dumps conntrack tables. It holds its receive buffers, reused by
// every dump, and must not be used by two dumps at once.
type Dumper struct {
	bufs [buffers][]byte
	e    Entry
}

// NewDumper returns a Dumper.
func NewDumper() *Dumper {
	d := &Dumper{}
	for i := range d.bufs {
		d.bufs[i] = make([]byte, bufSize)
	}
	return d
}

// datagram is one datagram received into one of the Dumper's buffers.
type datagram struct {
	buf []byte // the whole buffer; buf[:n] is the datagram
	n   int
	err error
}

// StatusFilter selects the entries whose status has the bits Mask set to
// Value: (status & Mask) == Value. The zero StatusFilter selects all. Two
// filters with the same single-bit Mask and Values 0 and Mask split a table
// into two disjoint parts that together are the whole table.
type StatusFilter struct {
	Mask, Value uint32
}

// ErrFilterUnsupported is returned by DumpFiltered when the kernel ignored
// the status filter (kernels before 5.19 have no CTA_STATUS_MASK in dump
// requests and dump every entry).
var ErrFilterUnsupported = errors.New("kernel does not filter conntrack dumps by status")

// ctnetlink request attributes of a status filter
// (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaStatusMask = 26
)

// Dump reads every conntrack entry of the network namespace target of the
// given family and calls fn for each, with
// a pointer valid only during the call. It only reads: the request is
// IPCTNL_MSG_CT_GET, never the variant that zeroes counters.
//
// The socket is read on a goroutine of its own while fn runs on the calling
// goroutine, each datagram decoded as soon as it has arrived; Dump returns
// only after that goroutine has stopped. The dump stops when ctx is done.
// fn should be quick: the kernel holds the rest of the table until it is
// read.
func (d *Dumper) Dump(ctx context.Context, target netns.Target, family Family, fn func(*Entry)) (Stats, error) {
	return d.DumpFiltered(ctx, target, family, StatusFilter{}, fn)
}

// DumpFiltered is Dump for the entries filter selects; the kernel does the
// selection, so two dumps of disjoint parts can run at once, each costing
// the kernel the entries it returns (plus a walk of the table). When the
// kernel returns an entry outside the filter, DumpFiltered stops with an
// error wrapping ErrFilterUnsupported: every entry is checked.
func (d *Dumper) DumpFiltered(ctx context.Context, target netns.Target, family Family, filter StatusFilter, fn func(*Entry)) (Stats, error) {
	var st Stats
	if filter.Value&^filter.Mask != 0 {
		return st, fmt.Errorf("status filter value %#x has bits outside its mask %#x", filter.Value, filter.Mask)
	}
	// struct nfgenmsg: family, version NFNETLINK_V0, res_id 0.
	data := []byte{byte(family), 0, 0, 0}
	// The status of an entry the kernel returned although the filter
	// excludes it, and whether there was one.
	var outside uint32
	var outsideSeen bool
	if filter.Mask != 0 {
		data = netlinkattr.AppendBE32(data, ctaStatus, filter.Value)
		data = netlinkattr.AppendBE32(data, ctaStatusMask, filter.Mask)
		inner := fn
		fn = func(e *Entry) {
			if e.Status&filter.Mask != filter.Value {
				outside, outsideSeen = e.Status, true
				return
			}
			inner(e)
		}
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: target.FD()})
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
		Data: data,
	})
	if err != nil {
		return st, fmt.Errorf("send conntrack dump request: %w", err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return st, fmt.Errorf("raw netlink socket: %w", err)
	}

	free := make(chan []byte, buffers)
	for _, b := range d.bufs {
		free <- b
	}
	filled := make(chan datagram, buffers)
	go receive(raw, free, filled)
	defer func() {
		// Stop the reader: wake a read blocked on a socket with nothing
		// more to come (the dump ended, or decoding failed), give it no
		// more buffers and wait until it has returned all of them.
		_ = conn.SetReadDeadline(time.Unix(1, 0))
		close(free)
		for range filled {
		}
	}()

	for dg := range filled {
		if err := ctx.Err(); err != nil {
			return st, fmt.Errorf("conntrack dump after %d entries: %w", st.Entries, err)
		}
		if dg.err != nil {
			if ctx.Err() != nil {
				dg.err = ctx.Err()
			}
			return st, fmt.Errorf("receive conntrack dump after %d entries: %w", st.Entries, dg.err)
		}
		st.Datagrams++
		b, err := decodeDatagram(dg.buf[:dg.n], req.Header.Sequence, &d.e, fn)
		free <- dg.buf
		// A dump is background work that keeps both of its goroutines
		// busy for as long as the table is large; yielding after each
		// datagram lets other goroutines (an exporter's scrapes) run
		// within one datagram's decoding instead of after a scheduler
		// time slice (10 ms).
		runtime.Gosched()
		st.Entries += b.entries
		st.Interrupted = st.Interrupted || b.interrupted
		if err != nil {
			return st, fmt.Errorf("decode conntrack dump after %d entries: %w", st.Entries, err)
		}
		if outsideSeen {
			return st, fmt.Errorf("%w: an entry with status %#x came back for filter %#x/%#x", ErrFilterUnsupported, outside, filter.Value, filter.Mask)
		}
		if b.done {
			return st, nil
		}
	}
	return st, fmt.Errorf("receive conntrack dump after %d entries: reader stopped", st.Entries)
}

// receive reads datagrams into the buffers it takes from free and hands them
// to filled, until free is closed or a read fails; it closes filled when it
// returns.
func receive(raw syscall.RawConn, free <-chan []byte, filled chan<- datagram) {
	defer close(filled)
	var (
		cur  []byte
		n    int
		rerr error
	)
	// Made once per dump, not once per datagram.
	read := func(fd uintptr) bool {
		r, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd,
			uintptr(unsafePointer(cur)), uintptr(len(cur)),
			unix.MSG_DONTWAIT|unix.MSG_TRUNC, 0, 0)
		switch {
		case errno == unix.EAGAIN:
			return false
		case errno != 0:
			rerr = errno
		default:
			n = int(r)
		}
		return true
	}
	for cur = range free {
		n, rerr = 0, nil
		if err := raw.Read(read); err != nil {
			rerr = err
		}
		switch {
		case rerr != nil:
			// ENOBUFS is not expected on a dump (the kernel fills the
			// next datagram only once this one is read) but is
			// reported as is.
		case n > len(cur):
			// MSG_TRUNC makes the kernel return the datagram's full
			// length, so a datagram larger than the buffer is detected
			// instead of silently cut.
			rerr = fmt.Errorf("%w: datagram of %d bytes exceeds the %d-byte buffer", ErrMalformed, n, len(cur))
		case n < nlmsgHdrLen:
			rerr = fmt.Errorf("%w: datagram of %d bytes", ErrMalformed, n)
		}
		filled <- datagram{buf: cur, n: n, err: rerr}
		if rerr != nil {
			return
		}
	}
}

// unsafePointer is the address of b's first byte, for recvfrom(2).
func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }
