// Package links reads a node's links, routes, bridge tables and addresses,
// and the veth ends in pod network namespaces, through rtnetlink
// (vishvananda/netlink): what `ip link`, `ip route`, `bridge fdb`, `ip neigh`
// and `nsenter -n ip addr` show.
package links

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source/netns"
)

// Stats are a link's counters as the kernel keeps them for that end.
type Stats struct {
	RxBytes, TxBytes, RxPackets, TxPackets   uint64
	RxErrors, TxErrors, RxDropped, TxDropped uint64
}

// Veth is a veth of the node whose peer is in another namespace, as the
// node's link dump shows it.
type Veth struct {
	// Index is the veth's ifindex; PeerIndex the ifindex of its peer in the
	// peer's namespace (IFLA_LINK), NSID the node's id of that namespace
	// (IFLA_LINK_NETNSID), Master the ifindex of its bridge (0: none).
	Index, PeerIndex, NSID, Master int
	Name                           string
	Stats                          Stats
}

// Reader reads one namespace through one rtnetlink socket.
type Reader struct {
	h          *netlink.Handle
	target     netns.Target
	roundTrips atomic.Uint64
}

// Open opens an rtnetlink socket in target, with ctx's deadline (10 s when
// it has none) as its timeout.
func Open(ctx context.Context, target netns.Target) (*Reader, error) {
	var (
		h   *netlink.Handle
		err error
	)
	if target.IsOwn() {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	} else {
		// Created on a locked OS thread inside the namespace, which is
		// moved back at once.
		h, err = netlink.NewHandleAt(vnetns.NsHandle(target.FD()), unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink route socket: %w", err)
	}
	if err := setDeadline(ctx, h); err != nil {
		h.Close()
		return nil, err
	}
	return &Reader{h: h, target: target}, nil
}

func setDeadline(ctx context.Context, h *netlink.Handle) error {
	d := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		d = max(time.Until(dl), time.Millisecond)
	}
	if err := h.SetSocketTimeout(d); err != nil {
		return fmt.Errorf("set netlink socket timeout: %w", err)
	}
	return nil
}

// Close closes the socket.
func (r *Reader) Close() { r.h.Close() }

// RoundTrips is the number of netlink request/response exchanges the
// reader made, including those in pod namespaces.
func (r *Reader) RoundTrips() uint64 { return r.roundTrips.Load() }

// Veths lists the node's veths whose peer is in another namespace, sorted by
// ifindex, with their counters.
func (r *Reader) Veths() ([]Veth, error) {
	links, err := r.h.LinkList()
	r.roundTrips.Add(1)
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		// The link list changed during the dump (NLM_F_DUMP_INTR), so it
		// may miss a veth: read it once more.
		links, err = r.h.LinkList()
		r.roundTrips.Add(1)
	}
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list the node's links: %w", err)
	}
	return HostVeths(links), nil
}

// HostVeths keeps the veths whose peer is in another namespace: a veth with
// both ends in the node's namespace (Cilium's cilium_host/cilium_net) has no
// IFLA_LINK_NETNSID and is no pod's.
func HostVeths(links []netlink.Link) []Veth {
	var out []Veth
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || a.NetNsID < 0 || a.ParentIndex == 0 {
			continue
		}
		v := Veth{Index: a.Index, PeerIndex: a.ParentIndex, NSID: a.NetNsID, Master: a.MasterIndex, Name: a.Name}
		if s := a.Statistics; s != nil {
			v.Stats = Stats{
				RxBytes: s.RxBytes, TxBytes: s.TxBytes, RxPackets: s.RxPackets, TxPackets: s.TxPackets,
				RxErrors: s.RxErrors, TxErrors: s.TxErrors, RxDropped: s.RxDropped, TxDropped: s.TxDropped,
			}
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// Found is an address the node's tables tie to one of its links.
type Found struct {
	LinkIndex int
	Addr      netip.Addr
}

// HostRoutes lists the routes of the main table to single addresses (/32,
// /128) that go straight out of a link in links, with no gateway:
// point-to-point CNI plugins install one per pod address. interrupted is set
// when the dump changed while it was read.
func (r *Reader) HostRoutes(links map[int]bool) (found []Found, interrupted bool, err error) {
	routes, err := r.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	r.roundTrips.Add(1)
	interrupted = errors.Is(err, netlink.ErrDumpInterrupted)
	if err != nil && !interrupted {
		return nil, false, fmt.Errorf("list the node's routes: %w", err)
	}
	for _, rt := range routes {
		if !links[rt.LinkIndex] || rt.Dst == nil || rt.Gw != nil || len(rt.MultiPath) > 0 {
			continue
		}
		if rt.Type != unix.RTN_UNICAST {
			continue
		}
		ones, bits := rt.Dst.Mask.Size()
		if ones != bits || bits == 0 {
			continue
		}
		ip, ok := netip.AddrFromSlice(rt.Dst.IP)
		if !ok {
			continue
		}
		found = append(found, Found{LinkIndex: rt.LinkIndex, Addr: ip.Unmap()})
	}
	return found, interrupted, nil
}

// BridgeStations joins the neighbour tables of the bridges of veths (IP ->
// MAC) to the bridges' forwarding databases (MAC -> port) and returns, per
// veth port, the addresses behind it. Both only hold what traffic taught
// them and age out (neighbours within minutes, learned FDB entries after the
// bridge's ageing time, 300 s by default).
func (r *Reader) BridgeStations(veths []Veth) (found []Found, interrupted bool, err error) {
	bridges := map[int]bool{}
	byIndex := make(map[int]*Veth, len(veths))
	for i, v := range veths {
		byIndex[v.Index] = &veths[i]
		if v.Master != 0 {
			bridges[v.Master] = true
		}
	}
	if len(bridges) == 0 {
		return nil, false, nil
	}
	fdb, err := r.h.NeighList(0, unix.AF_BRIDGE)
	r.roundTrips.Add(1)
	interrupted = errors.Is(err, netlink.ErrDumpInterrupted)
	if err != nil && !interrupted {
		return nil, false, fmt.Errorf("list the bridge forwarding database: %w", err)
	}
	type macKey struct {
		bridge int
		mac    string
	}
	port := map[macKey]int{}
	for _, n := range fdb {
		v := byIndex[n.LinkIndex]
		// Permanent entries are the ports' own (local) addresses; learned
		// ones are the stations behind the port.
		if v == nil || v.Master == 0 || n.State&unix.NUD_PERMANENT != 0 || len(n.HardwareAddr) == 0 {
			continue
		}
		port[macKey{v.Master, string(n.HardwareAddr)}] = n.LinkIndex
	}
	if len(port) == 0 {
		return nil, interrupted, nil
	}
	neighs, err := r.h.NeighList(0, netlink.FAMILY_ALL)
	r.roundTrips.Add(1)
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		interrupted = true
	} else if err != nil {
		return nil, false, fmt.Errorf("list the node's neighbours: %w", err)
	}
	for _, n := range neighs {
		if !bridges[n.LinkIndex] || len(n.HardwareAddr) == 0 ||
			n.State&(unix.NUD_FAILED|unix.NUD_INCOMPLETE|unix.NUD_NOARP) != 0 {
			continue
		}
		p, ok := port[macKey{n.LinkIndex, string(n.HardwareAddr)}]
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || ip.IsLinkLocalUnicast() {
			continue
		}
		found = append(found, Found{LinkIndex: p, Addr: ip.Unmap()})
	}
	return found, interrupted, nil
}

// LocalAddrs lists the addresses assigned to the interfaces of target.
func LocalAddrs(ctx context.Context, target netns.Target) (map[netip.Addr]bool, error) {
	r, err := Open(ctx, target)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	addrs, err := r.h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list interface addresses: %w", err)
	}
	out := map[netip.Addr]bool{}
	for _, a := range addrs {
		// IFA_LOCAL and IFA_ADDRESS: they differ on a point-to-point
		// interface, where vishvananda/netlink puts the second in Peer.
		for _, n := range []*net.IPNet{a.IPNet, a.Peer} {
			if n == nil {
				continue
			}
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out[ip.Unmap()] = true
			}
		}
	}
	return out, nil
}

// AddrsExcept lists the addresses of every interface of target except the
// one named dev, and reports whether dev exists (kube-proxy's IPVS mode
// binds every service address to its dummy interface kube-ipvs0; the
// others are the node's own, where its node-port virtual servers are).
// Loopback and IPv6 link-local addresses are left out, as kube-proxy's
// GetAllLocalAddressesExcept does (pkg/proxy/ipvs/netlink_linux.go
// isValidForSet).
func AddrsExcept(ctx context.Context, target netns.Target, dev string) (addrs map[netip.Addr]bool, devFound bool, err error) {
	r, err := Open(ctx, target)
	if err != nil {
		return nil, false, err
	}
	defer r.Close()
	devIndex := -1
	if l, err := r.h.LinkByName(dev); err == nil {
		devIndex, devFound = l.Attrs().Index, true
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, false, fmt.Errorf("look up link %s: %w", dev, err)
	}
	list, err := r.h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, false, fmt.Errorf("list interface addresses: %w", err)
	}
	addrs = map[netip.Addr]bool{}
	for _, a := range list {
		if a.LinkIndex == devIndex || a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IPNet.IP)
		if ip = ip.Unmap(); !ok || ip.IsLoopback() || (ip.Is6() && ip.IsLinkLocalUnicast()) {
			continue
		}
		addrs[ip] = true
	}
	return addrs, devFound, nil
}
