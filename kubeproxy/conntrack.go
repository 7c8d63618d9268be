package kubeproxy

// This file mirrors which conntrack entries kube-proxy v1.37.2 deletes as
// stale: k8s.io/kubernetes@v1.37.2/pkg/proxy/conntrack/cleanup.go,
// CleanStaleEntries, which every proxier (iptables, nftables, ipvs) runs
// after each sync, once per IP family:
//
//   - Only UDP service ports, and only UDP entries ("we are only interested
//     in UDP services"); TCP and SCTP entries are never deleted.
//   - For each UDP service port of the family: the set of its SERVING
//     endpoints (endpoint.IsServing(): the serving condition, whatever
//     ready, terminating, traffic policy or topology say), as address and
//     target port; an empty set for a port without any.
//   - Frontends: ClusterIP:port, every load-balancer VIP:port and external
//     IP:port of the family map to that set. NodePort: the port number
//     alone (any destination address) maps to the set, but only when the
//     set is not empty.
//   - An entry is stale when its original destination is a frontend and
//     its reply source (address and port: the DNAT target, or the frontend
//     itself when the entry was never DNATed) is not in the frontend's set;
//     else when its original destination port is a node port and its reply
//     source is not in that port's set. An entry to a frontend whose reply
//     source is serving is still checked against the node ports (the code
//     falls through), which matters only when a service port number equals
//     some node port.
//
// The set of service ports and endpoints is the one kube-proxy's trackers
// hold (servicechangetracker.go, endpointslicecache.go), which Expect
// already mirrors: the same gather, without the topology and policy steps.
//
// What cannot be mirrored exactly: when two UDP service ports share one
// frontend (two Services listing the same external IP and port) or one
// node port, kube-proxy's map keeps whichever it wrote last in Go's random
// map order; this mirror keeps the first in its own order.

import (
	"net/netip"
	"slices"
)

// StaleTarget is one UDP service port of one family as kube-proxy's
// conntrack cleanup sees it.
type StaleTarget struct {
	ID ServicePortID
	// Serving are the endpoints (address, target port) an entry may be
	// DNATed to without being stale.
	Serving EndpointSet
}

// ConntrackCleanup answers, for one conntrack entry at a time, whether
// kube-proxy's CleanStaleEntries would delete it. Build it with
// BuildConntrackCleanup (or Rebuild, reusing its memory); Stale does not
// allocate and is safe for concurrent use once built.
type ConntrackCleanup struct {
	Targets []StaleTarget

	frontends map[netip.AddrPort]int32
	nodePorts [2]map[uint16]int32
	// nodePortBits has a bit per node port in nodePorts, per family: the
	// check that every UDP entry not addressed to a frontend makes.
	nodePortBits [2][65536 / 64]uint64

	b builder
}

// BuildConntrackCleanup builds the cleanup rules of every Service of src.
func BuildConntrackCleanup(src Source) *ConntrackCleanup {
	c := &ConntrackCleanup{}
	c.Rebuild(src)
	return c
}

// Rebuild replaces the rules with those of src's current Services,
// reusing c's memory: nothing may still read the previous Targets.
func (c *ConntrackCleanup) Rebuild(src Source) {
	if c.frontends == nil {
		c.frontends = map[netip.AddrPort]int32{}
		c.nodePorts = [2]map[uint16]int32{{}, {}}
	}
	clear(c.frontends)
	for i := range c.nodePorts {
		clear(c.nodePorts[i])
		clear(c.nodePortBits[i][:])
	}
	c.Targets = c.Targets[:0]
	c.b.node, c.b.zone = src.Node(), src.NodeZone()
	c.b.arena = c.b.arena[:0]
	src.EachProxyService(c.service)
}

func (c *ConntrackCleanup) service(s *Service, sl []EndpointSlice) {
	if skipService(s) {
		return
	}
	for _, f := range [...]IPFamily{IPv4, IPv6} {
		cip, ok := clusterIPOf(s, f)
		if !ok {
			continue
		}
		for i := range s.Ports {
			sp := &s.Ports[i]
			if sp.Protocol != "udp" {
				continue
			}
			c.b.gather(sl, f, sp)
			serving := c.b.filter(func(c *candidate) bool { return c.serving })
			t := int32(len(c.Targets))
			c.Targets = append(c.Targets, StaleTarget{
				ID:      ServicePortID{Family: f, Namespace: s.Namespace, Name: s.Name, Port: sp.Name, Protocol: sp.Protocol},
				Serving: serving,
			})
			c.frontend(netip.AddrPortFrom(cip, sp.Port), t)
			for _, a := range ofFamily(s.LoadBalancerVIPs, f) {
				c.frontend(netip.AddrPortFrom(a, sp.Port), t)
			}
			for _, a := range ofFamily(s.ExternalIPs, f) {
				c.frontend(netip.AddrPortFrom(a, sp.Port), t)
			}
			if sp.NodePort != 0 && len(serving) > 0 {
				fi := familyIndex(f)
				if _, taken := c.nodePorts[fi][sp.NodePort]; !taken {
					c.nodePorts[fi][sp.NodePort] = t
					c.nodePortBits[fi][sp.NodePort/64] |= 1 << (sp.NodePort % 64)
				}
			}
		}
	}
}

func (c *ConntrackCleanup) frontend(ap netip.AddrPort, t int32) {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if _, taken := c.frontends[ap]; !taken {
		c.frontends[ap] = t
	}
}

// Stale reports whether kube-proxy would delete a UDP conntrack entry
// whose original destination is origDst and whose reply source is
// replySrc, and for which service port: the index of its Targets entry.
// Call it for UDP entries only (kube-proxy never deletes others).
func (c *ConntrackCleanup) Stale(origDst, replySrc netip.AddrPort) (target int, stale bool) {
	if c == nil {
		return 0, false
	}
	if t, ok := c.frontends[origDst]; ok && !c.Targets[t].Serving.Contains(replySrc) {
		return int(t), true
	}
	fi := 0
	if !origDst.Addr().Is4() {
		fi = 1
	}
	p := origDst.Port()
	if c.nodePortBits[fi][p/64]&(1<<(p%64)) == 0 {
		return 0, false
	}
	if t, ok := c.nodePorts[fi][p]; ok && !c.Targets[t].Serving.Contains(replySrc) {
		return int(t), true
	}
	return 0, false
}

// Frontends returns the frontends (ClusterIP, load-balancer VIPs and
// external IPs, each with the service port) of target t, sorted; for
// runbooks and reports, not the hot path.
func (c *ConntrackCleanup) Frontends(t int) []netip.AddrPort {
	var out []netip.AddrPort
	for ap, i := range c.frontends {
		if int(i) == t {
			out = append(out, ap)
		}
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return out
}
