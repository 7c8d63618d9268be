package kubeproxy

// Modes kube-proxy runs in, as the mode label of kube_proxy_mode_info names
// them.
const (
	ModeIPTables = "iptables"
	ModeNFTables = "nftables"
	ModeIPVS     = "ipvs"
	ModeNone     = "none"
)

// Chains whose presence tells the mode (pkg/proxy/iptables, pkg/proxy/ipvs).
const (
	// ChainServices is the iptables mode's entry chain in the nat table.
	ChainServices = "KUBE-SERVICES"
	// ChainIPVSFilter is created in the filter table by the ipvs mode only.
	ChainIPVSFilter = "KUBE-IPVS-FILTER"
)

// HintChains are the chains kubelet (KUBE-IPTABLES-HINT,
// KUBE-KUBELET-CANARY) and kube-proxy (KUBE-PROXY-CANARY) create in the
// mangle table of the iptables backend they use; kubernetes-sigs/
// iptables-wrappers picks the backend by them.
var HintChains = []string{"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY", "KUBE-PROXY-CANARY"}

// ModeEvidence is what a node's rules say about kube-proxy's mode.
type ModeEvidence struct {
	// NFTablesTable: the table NFTTable exists in family ip or ip6.
	NFTablesTable bool
	// IPVSFilterChain: a filter table (IPv4 or IPv6) has ChainIPVSFilter.
	IPVSFilterChain bool
	// IPSetMatches: a KUBE- rule of the IPv4 nat table matches an ipset
	// (--match-set), which among kube-proxy's modes only ipvs writes.
	IPSetMatches bool
	// NATServices: the IPv4 nat table has ChainServices.
	NATServices bool
}

// DetectMode decides kube-proxy's mode from what is on the node. kube-proxy
// removes the other modes' rules when it starts (platformCleanup), so at
// most one is present, except briefly during a switch; nftables wins, then
// ipvs (whose nat table also has KUBE-SERVICES), then iptables.
func DetectMode(e ModeEvidence) string {
	switch {
	case e.NFTablesTable:
		return ModeNFTables
	case e.IPVSFilterChain, e.IPSetMatches:
		return ModeIPVS
	case e.NATServices:
		return ModeIPTables
	}
	return ModeNone
}
