package collector

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// nsID identifies a namespace file: nsfs device and inode.
type nsID struct{ dev, ino uint64 }

func statNS(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

func fstatNS(fd int) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nsID{}, err
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

// nsCandidates yields the paths of network namespaces that may hold pod
// ends: first the runtime's bind mounts, then every process's namespace from
// procfs, each namespace once. The node's and the exporter's own namespaces
// are skipped. Enumeration stops when yield returns false.
type nsCandidates struct {
	procfs, dir string
	seen        map[nsID]bool
}

func (n *nsCandidates) each(yield func(id nsID, path string) bool) {
	if n.dir != "" {
		if entries, err := os.ReadDir(n.dir); err == nil {
			for _, e := range entries {
				if !n.offer(filepath.Join(n.dir, e.Name()), yield) {
					return
				}
			}
		}
	}
	if n.procfs == "" {
		return
	}
	f, err := os.Open(n.procfs)
	if err != nil {
		return
	}
	defer f.Close()
	for {
		names, err := f.Readdirnames(256)
		for _, name := range names {
			if _, perr := strconv.Atoi(name); perr != nil {
				continue
			}
			if !n.offer(filepath.Join(n.procfs, name, "ns", "net"), yield) {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (n *nsCandidates) offer(path string, yield func(nsID, string) bool) bool {
	id, err := statNS(path)
	if err != nil || n.seen[id] {
		return true // gone, not ours to read, or seen: skip
	}
	n.seen[id] = true
	return yield(id, path)
}

// scanNetNS enters the pod namespaces and pairs their veth ends with the
// node's. A node veth's IFLA_LINK_NETNSID is the peer namespace's id as the
// node numbers it, and its IFLA_LINK the peer's ifindex there; RTM_GETNSID
// on the node's socket gives a namespace file's id without entering it, so
// only namespaces that hold a peer of a node veth are entered, and the walk
// stops once every peer namespace was found.
//
// Each namespace is read through a netlink socket created inside it
// (netlink.NewHandleAt creates it on a locked OS thread and moves the thread
// back); no goroutine's thread is left in a pod namespace.
func (c *Veth) scanNetNS(ctx context.Context, h *netlink.Handle, veths []hostVeth, record func(int, string, podEnd)) error {
	type peer struct{ nsid, index int }
	hostOf := make(map[peer]int, len(veths))
	wanted := map[int]bool{}
	for _, v := range veths {
		hostOf[peer{v.nsid, v.peerIndex}] = v.index
		wanted[v.nsid] = true
	}
	cands := &nsCandidates{procfs: c.procfs, dir: c.netnsDir, seen: map[nsID]bool{}}
	if id, err := statNS("/proc/self/ns/net"); err == nil {
		cands.seen[id] = true
	}
	if c.cfg.NetNS != 0 {
		if id, err := fstatNS(c.cfg.NetNS); err == nil {
			cands.seen[id] = true
		}
	}
	var ctxErr error
	cands.each(func(id nsID, path string) bool {
		if err := ctx.Err(); err != nil {
			ctxErr = err
			return false
		}
		c.readPodNS(ctx, h, id, path, wanted, func(nsid, podIndex int, end podEnd) {
			if host, ok := hostOf[peer{nsid, podIndex}]; ok {
				record(host, VethMethodNetNS, end)
			}
		})
		return len(wanted) > 0
	})
	if ctxErr != nil {
		return fmt.Errorf("scan pod network namespaces: %w", ctxErr)
	}
	return nil
}

// readPodNS reads one candidate namespace if it holds the peer of a node
// veth. A namespace or interface that vanishes meanwhile is skipped.
func (c *Veth) readPodNS(ctx context.Context, h *netlink.Handle, id nsID, path string, wanted map[int]bool, found func(nsid, podIndex int, end podEnd)) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	// The process may have exited and its pid been reused between the stat
	// and the open.
	if got, err := fstatNS(fd); err != nil || got != id {
		return
	}
	nsid, err := h.GetNetNsIdByFd(fd)
	c.roundTrips.Add(1)
	if err != nil || nsid < 0 || !wanted[nsid] {
		// EINVAL: a bind mount that is no network namespace; -1: the node
		// has no id for it, so no node veth has its peer there.
		return
	}
	delete(wanted, nsid)

	ph, err := netlink.NewHandleAt(netns.NsHandle(fd), unix.NETLINK_ROUTE)
	if err != nil {
		c.netnsErrOnce.Do(func() {
			c.logger.Warn("cannot open a netlink socket in a pod network namespace; mapping by routes and bridge tables only (grant CAP_SYS_ADMIN and hostPID, or mount the runtime's netns directory)",
				zap.String("path", path), zap.Error(err))
		})
		return
	}
	defer ph.Close()
	if err := setHandleDeadline(ctx, ph); err != nil {
		return
	}
	links, err := ph.LinkList()
	c.roundTrips.Add(1)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return
	}
	addrs, err := ph.AddrList(nil, netlink.FAMILY_ALL)
	c.roundTrips.Add(1)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return
	}
	ips := map[int][]netip.Addr{}
	var nsIPs []netip.Addr
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLinkLocalUnicast() || ip.IsLoopback() {
			continue
		}
		ips[a.LinkIndex] = append(ips[a.LinkIndex], ip)
		nsIPs = append(nsIPs, ip)
	}
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" {
			continue
		}
		found(nsid, a.Index, podEnd{iface: a.Name, ips: ips[a.Index], nsIPs: nsIPs, netns: path})
	}
}
