package links

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source/netns"
)

// Namespaces says where pod network namespaces are found.
type Namespaces struct {
	// Dir holds the container runtime's bind mounts (/run/netns).
	Dir string
	// ProcFS is the procfs whose /<pid>/ns/net files are walked.
	ProcFS string
}

// PeerEnd is the end of a node veth in another network namespace.
type PeerEnd struct {
	// HostIndex is the ifindex of the node's end.
	HostIndex int
	// Name is the interface's name in its namespace (eth0, net1).
	Name string
	// IPs are its addresses; NSIPs the addresses of every interface of its
	// namespace (a Multus pod's status lists only its primary interface's).
	// Link-local and loopback addresses are left out.
	IPs, NSIPs []netip.Addr
	// NetNS is the path the namespace was entered through: a bind mount
	// under Namespaces.Dir or <procfs>/<pid>/ns/net; NetNSID is the
	// namespace's identity, to tell whether the path still names it later.
	NetNS   string
	NetNSID netns.ID
}

// candidates yields the paths of network namespaces that may hold pod ends:
// first the runtime's bind mounts, then every process's namespace from
// procfs, each namespace once. Enumeration stops when yield returns false.
type candidates struct {
	Namespaces
	seen map[netns.ID]bool
}

func (n *candidates) each(yield func(id netns.ID, path string) bool) {
	if n.Dir != "" {
		if entries, err := os.ReadDir(n.Dir); err == nil {
			for _, e := range entries {
				if !n.offer(filepath.Join(n.Dir, e.Name()), yield) {
					return
				}
			}
		}
	}
	if n.ProcFS == "" {
		return
	}
	f, err := os.Open(n.ProcFS)
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
			if !n.offer(filepath.Join(n.ProcFS, name, "ns", "net"), yield) {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (n *candidates) offer(path string, yield func(netns.ID, string) bool) bool {
	id, err := netns.Stat(path)
	if err != nil || n.seen[id] {
		return true // gone, not ours to read, or seen: skip
	}
	n.seen[id] = true
	return yield(id, path)
}

// PeerEnds enters the namespaces that hold the peers of veths, found under
// where, and returns the peer ends. The reader's own namespace and the
// exporter's are skipped. A node veth's IFLA_LINK_NETNSID is the peer
// namespace's id as the node numbers it, and its IFLA_LINK the peer's
// ifindex there; RTM_GETNSID on the node's socket gives a namespace file's
// id without entering it, so only namespaces that hold a peer of a node veth
// are entered, and the walk stops once every peer namespace was found.
//
// Each namespace is read through a netlink socket created inside it
// (netlink.NewHandleAt creates it on a locked OS thread and moves the thread
// back); no goroutine's thread is left in a pod namespace. A namespace or
// interface that vanishes meanwhile is skipped. warn is the first error
// opening a socket in a pod namespace (a missing capability), after which
// those namespaces are skipped too; err is ctx's error when it ended the
// walk.
func (r *Reader) PeerEnds(ctx context.Context, veths []Veth, where Namespaces) (ends []PeerEnd, warn error, err error) {
	type peer struct{ nsid, index int }
	hostOf := make(map[peer]int, len(veths))
	wanted := map[int]bool{}
	for _, v := range veths {
		hostOf[peer{v.NSID, v.PeerIndex}] = v.Index
		wanted[v.NSID] = true
	}
	cands := &candidates{Namespaces: where, seen: map[netns.ID]bool{}}
	if id, err := netns.Stat("/proc/self/ns/net"); err == nil {
		cands.seen[id] = true
	}
	if !r.target.IsOwn() {
		if id, err := netns.Fstat(r.target.FD()); err == nil {
			cands.seen[id] = true
		}
	}
	var ctxErr error
	cands.each(func(id netns.ID, path string) bool {
		if err := ctx.Err(); err != nil {
			ctxErr = err
			return false
		}
		w := r.readPodNS(ctx, id, path, wanted, func(nsid int, end PeerEnd, podIndex int) {
			if host, ok := hostOf[peer{nsid, podIndex}]; ok {
				end.HostIndex = host
				ends = append(ends, end)
			}
		})
		if warn == nil {
			warn = w
		}
		return len(wanted) > 0
	})
	if ctxErr != nil {
		return ends, warn, fmt.Errorf("scan pod network namespaces: %w", ctxErr)
	}
	return ends, warn, nil
}

// readPodNS reads one candidate namespace if it holds the peer of a node
// veth, and returns the error of opening a socket in it, if that failed.
func (r *Reader) readPodNS(ctx context.Context, id netns.ID, path string, wanted map[int]bool, found func(nsid int, end PeerEnd, podIndex int)) error {
	f, err := netns.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	// The process may have exited and its pid been reused between the stat
	// and the open.
	if got, err := f.ID(); err != nil || got != id {
		return nil
	}
	nsid, err := r.h.GetNetNsIdByFd(f.FD())
	r.roundTrips.Add(1)
	if err != nil || nsid < 0 || !wanted[nsid] {
		// EINVAL: a bind mount that is no network namespace; -1: the node
		// has no id for it, so no node veth has its peer there.
		return nil
	}
	delete(wanted, nsid)

	ph, err := netlink.NewHandleAt(vnetns.NsHandle(f.FD()), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open a netlink socket in %s: %w", path, err)
	}
	defer ph.Close()
	if err := setDeadline(ctx, ph); err != nil {
		return nil
	}
	links, err := ph.LinkList()
	r.roundTrips.Add(1)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil
	}
	addrs, err := ph.AddrList(nil, netlink.FAMILY_ALL)
	r.roundTrips.Add(1)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil
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
		found(nsid, PeerEnd{Name: a.Name, IPs: ips[a.Index], NSIPs: nsIPs, NetNS: path, NetNSID: id}, a.Index)
	}
	return nil
}
