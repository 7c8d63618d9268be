package kubeproxy

import (
	"net/netip"
	"strconv"
)

// IPVSListing is what one family's IPVS table holds, as kube-proxy's IPVS
// mode (pkg/proxy/ipvs/proxier.go v1.37.2) programs it: a virtual server
// per ClusterIP, external IP, load-balancer VIP and node address x node
// port, each with the real servers of its endpoints.
type IPVSListing struct {
	// VirtualServers maps every virtual server of the family (fwmark ones
	// left out: kube-proxy makes none) to its real servers of non-zero
	// weight: kube-proxy keeps a removed real server at weight 0 until
	// its connections end (graceful_termination.go).
	VirtualServers map[IPVSVirtualServer]EndpointSet
	// NodeAddrs are the node's own addresses (not those kube-proxy binds
	// to its dummy interface kube-ipvs0): where node-port virtual servers
	// are.
	NodeAddrs map[netip.Addr]bool
}

// IPVSVirtualServer identifies a virtual server. Protocol is lower case.
type IPVSVirtualServer struct {
	Protocol string
	Addr     netip.Addr
	Port     uint16
}

// IPVSNames remembers the service port each virtual server was expected
// for, so that a virtual server left behind when its Service is gone from
// the API (stale) is still named. Its memory is one entry per virtual
// server expected or present; entries of virtual servers that are neither
// go at the next comparison. The zero value is ready; it is not safe for
// concurrent use.
type IPVSNames struct {
	m map[IPVSVirtualServer]DriftKey
}

// CompareIPVS compares one family's IPVS listing with what the expectation
// says kube-proxy programs (IPVS mode), service port by service port, and
// updates names (which may be nil).
//
// Judged: the ClusterIP, external IP and load-balancer VIP virtual servers
// exist with exactly the expected real servers (IPVSInternal,
// IPVSExternal: a Local policy without local endpoints falls back to the
// cluster's, kubernetes#97081), and every node-port virtual server found on
// a node address has the external ones. Not judged: whether a node-port
// virtual server exists on each node address (--nodeport-addresses may
// narrow them), scheduler and session-affinity flags. Every other virtual
// server of the family is stale: kube-proxy deletes the ones it did not
// make (cleanLegacyService), except in --ipvs-exclude-cidrs.
func (e *Expectation) CompareIPVS(f IPFamily, l *IPVSListing, names *IPVSNames) Comparison {
	c := Comparison{Family: f}
	if names != nil && names.m == nil {
		names.m = map[IPVSVirtualServer]DriftKey{}
	}
	ports := e.Family(f)
	// Node ports by protocol and port, to tell node-port virtual servers
	// from stale ones.
	nodePorts := map[IPVSVirtualServer]*ExpectedPort{}
	expected := make(map[IPVSVirtualServer]struct{}, len(ports))
	for i := range ports {
		p := &ports[i]
		c.ServicePorts++
		key := p.driftKey()
		state := InSync
		check := func(addr netip.Addr, want EndpointSet) {
			vs := IPVSVirtualServer{Protocol: p.ID.Protocol, Addr: addr, Port: p.Port}
			expected[vs] = struct{}{}
			if names != nil {
				names.m[vs] = key
			}
			got, ok := l.VirtualServers[vs]
			switch {
			case !ok && addr == p.ClusterIP:
				state = Missing
			case state == InSync && (!ok || !got.Equal(want)):
				state = EndpointsDiffer
			}
		}
		check(p.ClusterIP, p.IPVSInternal())
		ext := p.IPVSExternal()
		for _, a := range p.ExternalIPs {
			check(a, ext)
		}
		for _, a := range p.LoadBalancerVIPs {
			check(a, ext)
		}
		if p.NodePort != 0 {
			nodePorts[IPVSVirtualServer{Protocol: p.ID.Protocol, Port: p.NodePort}] = p
		}
		if state != InSync {
			c.Mismatches = append(c.Mismatches, Mismatch{Key: key, State: state})
		}
	}
	// Node-port virtual servers, and stale ones.
	judged := map[DriftKey]bool{}
	for i := range c.Mismatches {
		judged[c.Mismatches[i].Key] = true
	}
	var stale []DriftKey
	for vs, got := range l.VirtualServers {
		if _, ok := expected[vs]; ok {
			continue
		}
		if p := nodePorts[IPVSVirtualServer{Protocol: vs.Protocol, Port: vs.Port}]; p != nil && l.NodeAddrs[vs.Addr] {
			key := p.driftKey()
			if names != nil {
				names.m[vs] = key
			}
			expected[vs] = struct{}{}
			if !judged[key] && !got.Equal(p.IPVSExternal()) {
				judged[key] = true
				c.Mismatches = append(c.Mismatches, Mismatch{Key: key, State: EndpointsDiffer})
			}
			continue
		}
		key, known := DriftKey{}, false
		if names != nil {
			key, known = names.m[vs]
		}
		if !known {
			key = DriftKey{Family: f, Port: strconv.Itoa(int(vs.Port))}
		}
		stale = append(stale, key)
	}
	if len(stale) > 0 {
		add := newStaleSet(&c, ports).add
		for _, k := range stale {
			add(k)
		}
	}
	if names != nil {
		for vs := range names.m {
			if familyOf(vs.Addr) != f {
				continue
			}
			if _, ok := expected[vs]; ok {
				continue
			}
			if _, ok := l.VirtualServers[vs]; !ok {
				delete(names.m, vs)
			}
		}
	}
	return c
}
