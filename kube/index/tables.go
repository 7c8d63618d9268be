package index

import "net/netip"

// HasPod reports whether the index holds the pod namespace/name of this
// node: a collector that serves counts from an earlier pass drops the
// series of pods deleted since.
func (ix *Index) HasPod(namespace, name string) bool {
	if ix == nil {
		return false
	}
	ix.mu.RLock()
	_, ok := ix.pods[objKey{namespace, name}]
	ix.mu.RUnlock()
	return ok
}

// HoldsAddr reports whether ip is the address of a pod of this node or of
// an endpoint of some EndpointSlice (any Service, any condition): whether
// traffic to it can still reach a pod the cluster knows.
func (ix *Index) HoldsAddr(ip netip.Addr) bool {
	if ix == nil {
		return false
	}
	ip = ip.Unmap()
	ix.mu.RLock()
	_, pod := ix.podByIP[ip]
	_, ep := ix.endpointByIP[ip]
	ix.mu.RUnlock()
	return pod || ep
}

// EachPodIP calls fn for every address of a pod of this node, as PodByIP
// finds it (hostNetwork pods are not indexed by IP), under one read lock:
// for a collector that copies the lookup once instead of taking the lock
// per address. fn must be quick.
func (ix *Index) EachPodIP(fn func(ip netip.Addr, pod PodRef)) {
	if ix == nil {
		return
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	for ip, ref := range ix.podByIP {
		fn(ip, ref)
	}
}

// EachServiceAddrPort calls fn for every address, port and protocol
// ServiceByAddrPort finds a service port at (ClusterIPs, external IPs,
// load-balancer IPs), under one read lock; protocol is "tcp", "udp",
// "sctp", or "" for another. fn must be quick.
func (ix *Index) EachServiceAddrPort(fn func(protocol string, ap netip.AddrPort, ref ServicePortRef)) {
	if ix == nil {
		return
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	for k, ref := range ix.svcByAddrPort {
		fn(protoNames[k.proto], netip.AddrPortFrom(k.addr, k.port), ref)
	}
}

// protoNames are the names of the protoKey values.
var protoNames = [...]string{protoUnknown: "", protoTCP: "tcp", protoUDP: "udp", protoSCTP: "sctp"}
