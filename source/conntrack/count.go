package conntrack

import (
	"context"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

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
