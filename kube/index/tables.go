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
