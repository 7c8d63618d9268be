package kubeproxy

import "net/netip"

// Test access to the chain names CompareIPTables computes and to union.

// ServicePortHash is the hash of the port's KUBE-SVC-/SVL-/EXT-/FW- chains.
func ServicePortHash(id ServicePortID) string {
	var h hasher
	return string(h.servicePort(id))
}

// EndpointChain is the port's KUBE-SEP- chain for ep.
func EndpointChain(id ServicePortID, ep netip.AddrPort) string {
	var h hasher
	return string(h.endpoint(id, ep))
}

// Union is union.
func Union(a, b EndpointSet) EndpointSet { return union(a, b) }

// NFTChains are the port's service-, local- and external- chain names.
func NFTChains(id ServicePortID) (cluster, local, external string) {
	n := nftChainNames(id)
	return n.cluster, n.local, n.external
}
