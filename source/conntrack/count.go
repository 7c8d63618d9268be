package conntrack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source/netlinkattr"
	"github.com/netinspect/netinspect/source/netns"
)

// ReadCount reads the number of entries of target's table and the limit
// that applies to it, with one ctnetlink request (IPCTNL_MSG_CT_GET_STATS):
// ReadNetlink without the per-CPU statistics, for callers that ask many
// namespaces (the pods' own tables). Every namespace counts its own
// entries (struct nf_conntrack_net's count) against the one global
// nf_conntrack_max. A namespace in which nothing registered conntrack's
// hooks (no NAT or conntrack rule there) has 0 entries.
func ReadCount(ctx context.Context, target netns.Target) (entries, limit uint64, err error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: target.FD()})
	if err != nil {
		return 0, 0, fmt.Errorf("dial netfilter netlink: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return 0, 0, fmt.Errorf("set netlink deadline: %w", err)
		}
	}
	global, err := globalStats(conn)
	if err != nil {
		return 0, 0, fmt.Errorf("get global conntrack stats: %w", err)
	}
	if entries, limit, err = ParseGlobalStats(global); err != nil {
		return 0, 0, fmt.Errorf("decode global conntrack stats: %w", err)
	}
	return entries, limit, nil
}

// NamespaceCount is the table of one namespace ReadCounts read.
type NamespaceCount struct {
	Entries, Limit uint64
	// Err is why the namespace was not read (gone, no longer the same, no
	// ctnetlink); Entries and Limit are 0 then.
	Err error
}

// ReadCounts is ReadCount for the namespaces at paths (each checked
// against want[i], see netns.Visit), read one after the other from one
// thread that enters each: the cost is a socket and a request per
// namespace, not a thread handover.
func ReadCounts(ctx context.Context, paths []string, want []netns.ID) ([]NamespaceCount, error) {
	out := make([]NamespaceCount, len(paths))
	deadline, _ := ctx.Deadline()
	var buf [512]byte
	err := netns.Visit(paths, want, func(i int, err error) {
		if err == nil {
			out[i].Entries, out[i].Limit, err = countHere(deadline, buf[:])
		}
		out[i].Err = err
	})
	return out, err
}

// countHere asks the table's entries and limit over a netlink socket of
// the calling thread's namespace, with plain system calls: a socket made
// through mdlayher/netlink costs several more (bind, options, the
// poller's registration), which for hundreds of pod namespaces per scrape
// is most of the cost.
func countHere(deadline time.Time, buf []byte) (entries, limit uint64, err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return 0, 0, fmt.Errorf("netfilter netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if !deadline.IsZero() {
		tv := unix.NsecToTimeval(max(time.Until(deadline), time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return 0, 0, fmt.Errorf("set netlink receive timeout: %w", err)
		}
	}
	const seq = 1
	req := make([]byte, 0, netlinkattr.MsgHdrLen+netlinkattr.NfgenLen)
	req = binary.NativeEndian.AppendUint32(req, netlinkattr.MsgHdrLen+netlinkattr.NfgenLen)
	req = binary.NativeEndian.AppendUint16(req, nfnlSubsysCTNetlink<<8|ctnlMsgGetStats)
	req = binary.NativeEndian.AppendUint16(req, unix.NLM_F_REQUEST)
	req = binary.NativeEndian.AppendUint32(req, seq)
	req = binary.NativeEndian.AppendUint32(req, 0)
	req = append(req, unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, 0, fmt.Errorf("send conntrack stats request: %w", err)
	}
	for range 16 { // skip stray datagrams, bounded
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return 0, 0, fmt.Errorf("receive conntrack stats: %w", err)
		}
		msgs := netlinkattr.NewMessages(buf[:n])
		for msgs.Next() {
			h := msgs.Header()
			if h.Seq != seq {
				continue
			}
			if h.Type == unix.NLMSG_ERROR {
				err := netlinkattr.Errno(msgs.Payload())
				if err == nil {
					err = errors.New("unexpected netlink acknowledgement instead of data")
				}
				return 0, 0, fmt.Errorf("conntrack stats: %w", err)
			}
			entries, limit, err = ParseGlobalStats(msgs.Payload())
			return entries, limit, err
		}
		if err := msgs.Err(); err != nil {
			return 0, 0, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
	}
	return 0, 0, errors.New("conntrack stats: no answer with the request's sequence number")
}
