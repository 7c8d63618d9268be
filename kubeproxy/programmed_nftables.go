package kubeproxy

import (
	"crypto/sha256"
	"encoding/base32"
	"net/netip"
	"slices"
	"strconv"
)

// NFTablesListing is what one family's table of kube-proxy's nftables mode
// holds of its per-service rules (pkg/proxy/nftables/proxier.go v1.37.2):
// the verdict maps that send a service's destinations to its chains or
// reject and drop them, and where each per-service chain sends packets.
type NFTablesListing struct {
	// ServiceIPs is the map service-ips: ClusterIPs, external IPs and
	// load-balancer VIPs with their protocol and port, to the chain they
	// go to.
	ServiceIPs map[NFTAddrKey]string
	// NodePorts is the map service-nodeports: protocol and node port to
	// the chain they go to.
	NodePorts map[NFTPortKey]string
	// NoEndpoints and NoEndpointNodePorts are the maps
	// no-endpoint-services and no-endpoint-nodeports: destinations kube-proxy
	// rejects (no endpoint at all) or drops (traffic policy Local, no local
	// endpoint).
	NoEndpoints         map[NFTAddrKey]NFTNoEndpoint
	NoEndpointNodePorts map[NFTPortKey]NFTNoEndpoint
	// Chains are kube-proxy's per-service chains (service-, local-,
	// external-, endpoint-) by name.
	Chains map[string]NFTChainTargets
}

// NFTAddrKey is the key of service-ips and no-endpoint-services:
// "address . protocol . port". Protocol is lower case.
type NFTAddrKey struct {
	Addr     netip.Addr
	Protocol string
	Port     uint16
}

// NFTPortKey is the key of service-nodeports and no-endpoint-nodeports:
// "protocol . port".
type NFTPortKey struct {
	Protocol string
	Port     uint16
}

// NFTNoEndpoint is an element of no-endpoint-services or
// no-endpoint-nodeports.
type NFTNoEndpoint struct {
	// Reject is set for "goto reject-chain" (no endpoints), clear for
	// "drop" (no local endpoint).
	Reject bool
	// Comment is the service port's name, "namespace/name[:port]".
	Comment string
}

// NFTChainTargets is where a chain's rules send packets.
type NFTChainTargets struct {
	// DNAT are the addresses and ports its rules DNAT to.
	DNAT []netip.AddrPort
	// Gotos are the chains its rules go or jump to.
	Gotos []string
}

// nftReject is the chain no-endpoint-services sends rejected traffic to.
const nftReject = "reject-chain"

// NFTNoEndpointFromVerdict is the NFTNoEndpoint of an element whose verdict
// is verdict ("drop", "goto") to chain.
func NFTNoEndpointFromVerdict(verdict, chain, comment string) NFTNoEndpoint {
	return NFTNoEndpoint{Reject: verdict == "goto" && chain == nftReject, Comment: comment}
}

// nftChains are a service port's chain names (servicePortChainNameBase,
// hashAndTruncate): "<prefix><hash8>-<ns>/<name>/<proto>/<port>".
type nftChains struct{ cluster, local, external string }

func nftChainNames(id ServicePortID) nftChains {
	base := id.Namespace + "/" + id.Name + "/" + id.Protocol + "/" + id.Port
	sum := sha256.Sum256([]byte(base))
	var h [8]byte
	enc := base32.StdEncoding.EncodeToString(sum[:5]) // 5 bytes are 8 characters
	copy(h[:], enc)
	base = string(h[:]) + "-" + base
	// kube-proxy truncates names above 240 characters (chainNameBaseLengthMax);
	// Kubernetes names are short enough that a service port's never is.
	return nftChains{cluster: "service-" + base, local: "local-" + base, external: "external-" + base}
}

// CompareNFTables compares one family's nftables listing with what the
// expectation says kube-proxy programs (nftables mode), service port by
// service port.
//
// What is judged, for every expected service port: the ClusterIP's element
// (service-ips to the Cluster or Local policy chain, or no-endpoint-services
// with reject or drop); for an externally accessible one, the elements of
// its external IPs, load-balancer VIPs (service-ips to the external chain
// when it has endpoints, no-endpoint-services when external traffic has
// none) and node port (service-nodeports, no-endpoint-nodeports); the
// external chain's goto to the policy chain of external traffic; and the
// endpoints of the Cluster and Local policy chains (their DNAT targets, or
// with session affinity those of the endpoint chains they go to), each
// compared as a set. A chain nothing refers to is not judged: kube-proxy
// flushes a chain it no longer uses and deletes it a while later (stale
// chains, kernels before 6.2). A stale service port is one whose element
// is still in one of the four maps while the API no longer has it, named
// by its chain or the element's comment.
func (e *Expectation) CompareNFTables(f IPFamily, l *NFTablesListing) Comparison {
	c := Comparison{Family: f}
	ports := e.Family(f)
	matched := 0 // map elements accounted for by an expected port
	for i := range ports {
		p := &ports[i]
		c.ServicePorts++
		s, n := compareNFTablesPort(p, l)
		matched += n
		if s != InSync {
			c.Mismatches = append(c.Mismatches, Mismatch{Key: p.driftKey(), State: s})
		}
	}
	if total := len(l.ServiceIPs) + len(l.NodePorts) + len(l.NoEndpoints) + len(l.NoEndpointNodePorts); total > matched {
		c.addStaleNFTables(ports, l)
	}
	return c
}

// compareNFTablesPort judges one service port and returns how many map
// elements are its own.
func compareNFTablesPort(p *ExpectedPort, l *NFTablesListing) (DriftState, int) {
	names := nftChainNames(p.ID)
	ok, matched := true, 0
	// want checks the element of one destination against the path the
	// port's traffic to it should take: to chain (a Forward path), or
	// rejected or dropped.
	addr := func(a netip.Addr, port uint16, chain string, fwd bool, noEP bool, reject bool) {
		k := NFTAddrKey{Addr: a, Protocol: p.ID.Protocol, Port: port}
		got, has := l.ServiceIPs[k]
		ne, hasNE := l.NoEndpoints[k]
		if has {
			matched++
		}
		if hasNE {
			matched++
		}
		switch {
		case fwd != has, fwd && got != chain, noEP != hasNE, noEP && ne.Reject != reject:
			ok = false
		}
	}
	in := p.Internal()
	inChain := names.cluster
	if in.Local {
		inChain = names.local
	}
	k := NFTAddrKey{Addr: p.ClusterIP, Protocol: p.ID.Protocol, Port: p.Port}
	_, hasIP := l.ServiceIPs[k]
	_, hasNE := l.NoEndpoints[k]
	if !hasIP && !hasNE {
		// Nothing at all for its ClusterIP: kube-proxy has not programmed it.
		return Missing, countOwn(p, l)
	}
	addr(p.ClusterIP, p.Port, inChain, in.Verdict == Forward, in.Verdict != Forward, in.Verdict == Reject)

	ext := p.External()
	if p.ExternallyAccessible {
		// External destinations go to the external chain whenever the port
		// has endpoints at all; no-endpoint-services also gets them when
		// external traffic has no endpoint (reject, or drop for policy
		// Local without local endpoints).
		fwd, noEP, reject := p.HasEndpoints, ext.Verdict != Forward, ext.Verdict == Reject
		for _, a := range p.ExternalIPs {
			addr(a, p.Port, names.external, fwd, noEP, reject)
		}
		for _, a := range p.LoadBalancerVIPs {
			addr(a, p.Port, names.external, fwd, noEP, reject)
		}
		if p.NodePort != 0 {
			np := NFTPortKey{Protocol: p.ID.Protocol, Port: p.NodePort}
			got, has := l.NodePorts[np]
			ne, hasNE := l.NoEndpointNodePorts[np]
			matched += b2i(has) + b2i(hasNE)
			switch {
			case fwd != has, fwd && got != names.external, noEP != hasNE, noEP && ne.Reject != reject:
				ok = false
			}
		}
	}
	if p.ExternalChain() {
		extChain, has := l.Chains[names.external]
		switch {
		case !has:
			ok = false
		case ext.Verdict == Forward:
			want := names.cluster
			if ext.Local {
				want = names.local
			}
			ok = ok && slices.Contains(extChain.Gotos, want)
		}
	}
	if len(p.Cluster) > 0 && !nftChainEndpoints(l, names.cluster, p.Cluster) {
		ok = false
	}
	if len(p.Local) > 0 && !nftChainEndpoints(l, names.local, p.Local) {
		ok = false
	}
	if !ok {
		return EndpointsDiffer, matched
	}
	return InSync, matched
}

// countOwn counts the map elements of an expected port that has none for
// its ClusterIP, so that they are not taken for stale ones.
func countOwn(p *ExpectedPort, l *NFTablesListing) int {
	n := 0
	has := func(a netip.Addr) {
		k := NFTAddrKey{Addr: a, Protocol: p.ID.Protocol, Port: p.Port}
		_, x := l.ServiceIPs[k]
		_, y := l.NoEndpoints[k]
		n += b2i(x) + b2i(y)
	}
	for _, a := range p.ExternalIPs {
		has(a)
	}
	for _, a := range p.LoadBalancerVIPs {
		has(a)
	}
	if p.NodePort != 0 {
		np := NFTPortKey{Protocol: p.ID.Protocol, Port: p.NodePort}
		_, x := l.NodePorts[np]
		_, y := l.NoEndpointNodePorts[np]
		n += b2i(x) + b2i(y)
	}
	return n
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// nftChainEndpoints reports whether chain exists and DNATs to exactly want:
// directly, or through the endpoint chains it goes to (session affinity).
func nftChainEndpoints(l *NFTablesListing, chain string, want EndpointSet) bool {
	ch, ok := l.Chains[chain]
	if !ok {
		return false
	}
	got := slices.Clone(ch.DNAT)
	for _, g := range ch.Gotos {
		if t, ok := l.Chains[g]; ok && g != chain {
			got = append(got, t.DNAT...)
		}
	}
	slices.SortFunc(got, netip.AddrPort.Compare)
	got = slices.Compact(got)
	return EndpointSet(got).Equal(want)
}

// addStaleNFTables adds a stale mismatch for every service port that has
// map elements but is not expected.
func (c *Comparison) addStaleNFTables(ports []ExpectedPort, l *NFTablesListing) {
	addrs := make(map[NFTAddrKey]struct{}, len(ports))
	nodePorts := map[NFTPortKey]struct{}{}
	for i := range ports {
		p := &ports[i]
		addrs[NFTAddrKey{Addr: p.ClusterIP, Protocol: p.ID.Protocol, Port: p.Port}] = struct{}{}
		for _, a := range p.ExternalIPs {
			addrs[NFTAddrKey{Addr: a, Protocol: p.ID.Protocol, Port: p.Port}] = struct{}{}
		}
		for _, a := range p.LoadBalancerVIPs {
			addrs[NFTAddrKey{Addr: a, Protocol: p.ID.Protocol, Port: p.Port}] = struct{}{}
		}
		if p.NodePort != 0 {
			nodePorts[NFTPortKey{Protocol: p.ID.Protocol, Port: p.NodePort}] = struct{}{}
		}
	}
	add := newStaleSet(c, ports).add
	for k, chain := range l.ServiceIPs {
		if _, ok := addrs[k]; !ok {
			add(nftChainKey(c.Family, chain, k.Port))
		}
	}
	for k, ne := range l.NoEndpoints {
		if _, ok := addrs[k]; !ok {
			add(staleKey(c.Family, ne.Comment, int(k.Port)))
		}
	}
	for k, chain := range l.NodePorts {
		if _, ok := nodePorts[k]; !ok {
			add(nftChainKey(c.Family, chain, 0))
		}
	}
	for k, ne := range l.NoEndpointNodePorts {
		if _, ok := nodePorts[k]; !ok {
			add(staleKey(c.Family, ne.Comment, 0))
		}
	}
}

// nftChainKey labels a service port known only from its chain's name
// ("...-ns/name/proto/port"); an unnamed port by number, when known.
func nftChainKey(f IPFamily, chain string, port uint16) DriftKey {
	k := DriftKey{Family: f}
	sp := ParseNFTChainName(chain).ServicePort
	ns, name, _, portName, ok := SplitNFTServicePort(sp)
	if !ok {
		return k
	}
	k.Namespace, k.Service, k.Port = ns, name, portName
	if k.Port == "" && port != 0 {
		k.Port = strconv.Itoa(int(port))
	}
	return k
}
