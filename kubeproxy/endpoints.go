package kubeproxy

// This file mirrors kube-proxy v1.37.2's choice of endpoints per service
// port (k8s.io/kubernetes@v1.37.2/pkg/proxy), function by function:
//
//   - cmd/kube-proxy/app/server.go (ProxyServer.Run): the informers' label
//     selectors. Services with the label service.kubernetes.io/service-proxy-name
//     and headless Services (field selector spec.clusterIP!=None) are not
//     watched; EndpointSlices with the label service.kubernetes.io/headless
//     are not watched. -> skipService; the Source leaves such slices out.
//   - util/utils.go ShouldSkipService (no ClusterIP, type ExternalName),
//     GetClusterIPByFamily, MapIPsByIPFamily, IsVIPMode. -> skipService,
//     clusterIPOf, ofFamily, Service.LoadBalancerVIPs.
//   - servicechangetracker.go serviceToServiceMap: one ServicePort per
//     spec.ports entry, keyed by (namespace, name, port name, protocol), only
//     for families in which the Service has a ClusterIP. -> Expect.
//   - serviceport.go newBaseServiceInfo, ExternallyAccessible,
//     UsesClusterEndpoints, UsesLocalEndpoints, and pkg/api/v1/service
//     ExternalPolicyLocal / InternalPolicyLocal / ExternallyAccessible.
//     -> portPolicy.
//   - endpointschangetracker.go EndpointSliceUpdate (only slices of the
//     proxier's address type) and endpointslicecache.go
//     endpointInfoByServicePort / addEndpoints / isLocal: endpoints grouped
//     by slice port name and protocol, a slice port with a nil name or a nil
//     or zero port ignored, addresses[0] only, conditions defaulting ready
//     and serving to true and terminating to false, a duplicate address
//     replaced unless the newcomer is terminating, local means
//     nodeName == this node (and the node name is set). -> gather.
//   - topology.go CategorizeEndpoints, topologyModeFromHints,
//     availableForTopology (feature gate PreferSameTrafficDistribution is
//     GA and locked on in 1.37, so node hints always count). -> categorize.
//   - iptables/proxier.go and nftables/proxier.go syncProxyRules: which
//     policy chain internal and external traffic reach (hasInternalEndpoints,
//     hasExternalEndpoints, usesExternalTrafficChain), and the REJECT (no
//     endpoints at all) and DROP (policy Local, no local endpoints) verdicts
//     in the filter table / the no-endpoint-services and
//     no-endpoint-nodeports maps. Session affinity adds recent-match rules
//     (iptables) or per-endpoint chains and affinity sets (nftables) but
//     does not change the set. -> ExpectedPort.Internal, ExpectedPort.External.
//   - ipvs/proxier.go syncProxyRules and syncEndpoint: a virtual server for
//     every ClusterIP, external IP, load-balancer VIP and node IP x node
//     port, whatever the endpoints; real servers are the cluster endpoints,
//     or for a Local policy the local ones, falling back to the cluster ones
//     when there are none (kubernetes#97081). A removed real server is kept
//     with weight 0 until its connections end (graceful_termination.go), so
//     compare real servers of non-zero weight. -> ExpectedPort.IPVSInternal,
//     ExpectedPort.IPVSExternal.
//
// Service.spec.trafficDistribution is not read by kube-proxy: the
// EndpointSlice controller turns it into hints (k8s.io/endpointslice
// trafficdist), which kube-proxy follows; so does this mirror. A Service's
// selector is not read either: a Service without one is proxied to whatever
// EndpointSlices name it.
//
// What cannot be mirrored exactly: when two EndpointSlices of a Service list
// the same address and port, both not terminating, kube-proxy keeps the one
// it reads last from a map (undefined order); so does this mirror, in its
// own order. Only the conditions, node and hints of such duplicates can
// differ, which the endpoint controller never writes.

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
)

// IPFamily is an address family kube-proxy programs separately (one
// proxier per family).
type IPFamily uint8

// The families, in the order expectations are sorted.
const (
	IPv4 IPFamily = 4
	IPv6 IPFamily = 6
)

// String is the family's label value: "ipv4" or "ipv6".
func (f IPFamily) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return "unknown"
}

func familyOf(a netip.Addr) IPFamily {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// ServicePortID is kube-proxy's ServicePortName: a Service port of one
// family. Port is the port's name ("" when unnamed), Protocol lower case.
type ServicePortID struct {
	Family          IPFamily
	Namespace, Name string
	Port            string
	Protocol        string
}

// String is kube-proxy's ServicePortName.String(): "namespace/name", with
// ":port" when the port is named.
func (id ServicePortID) String() string {
	if id.Port == "" {
		return id.Namespace + "/" + id.Name
	}
	return id.Namespace + "/" + id.Name + ":" + id.Port
}

func compareIDs(a, b ServicePortID) int {
	return cmp.Or(cmp.Compare(a.Family, b.Family), cmp.Compare(a.Namespace, b.Namespace),
		cmp.Compare(a.Name, b.Name), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
}

// EndpointSet is a set of endpoints (address and port), sorted and without
// duplicates, so two sets compare element by element.
type EndpointSet []netip.AddrPort

// Equal reports whether s and o hold the same endpoints.
func (s EndpointSet) Equal(o EndpointSet) bool { return slices.Equal(s, o) }

// Contains reports whether s holds ep.
func (s EndpointSet) Contains(ep netip.AddrPort) bool {
	_, ok := slices.BinarySearchFunc(s, ep, netip.AddrPort.Compare)
	return ok
}

// Verdict is what kube-proxy's rules do with a new connection to one of a
// service port's addresses (iptables and nftables modes).
type Verdict uint8

const (
	// NotExposed: no rule for this path (the port has no node port, no
	// external IP and no load-balancer VIP of this family).
	NotExposed Verdict = iota
	// Forward: DNAT to one of the path's endpoints (a KUBE-SVC-/KUBE-SVL-
	// chain, or nftables' service-/local- chain).
	Forward
	// Reject: the service port has no usable endpoint anywhere ("has no
	// endpoints" REJECT rule; nftables: goto reject-chain).
	Reject
	// Drop: the path's traffic policy is Local and this node has no local
	// endpoint ("has no local endpoints" DROP rule; nftables: drop).
	Drop
)

// String names the verdict.
func (v Verdict) String() string {
	switch v {
	case Forward:
		return "forward"
	case Reject:
		return "reject"
	case Drop:
		return "drop"
	}
	return "not_exposed"
}

// Path is how one kind of destination of a service port is programmed in
// iptables and nftables modes.
type Path struct {
	Verdict Verdict
	// Local says the path goes to the Local policy chain (KUBE-SVL-,
	// local-) rather than the Cluster one (KUBE-SVC-, service-); only with
	// Verdict Forward.
	Local bool
	// Endpoints are the DNAT targets; only with Verdict Forward.
	Endpoints EndpointSet
}

// ExpectedPort is what kube-proxy programs on this node for one service
// port of one family.
type ExpectedPort struct {
	ID ServicePortID
	// ClusterIP and Port: the ClusterIP destination; NodePort is 0 when
	// none. ExternalIPs and LoadBalancerVIPs are those of this family.
	ClusterIP        netip.Addr
	Port             uint16
	NodePort         uint16
	ExternalIPs      []netip.Addr
	LoadBalancerVIPs []netip.Addr
	SessionAffinity  bool
	// InternalLocal and ExternalLocal are kube-proxy's InternalPolicyLocal
	// and ExternalPolicyLocal; ExternallyAccessible says the port has a node
	// port, an external IP or a load-balancer VIP in this family.
	InternalLocal, ExternalLocal, ExternallyAccessible bool
	// HasEndpoints: some endpoint anywhere in the cluster is usable (ready,
	// or serving and terminating when none is ready).
	HasEndpoints bool
	// Cluster and Local are CategorizeEndpoints' cluster and local
	// endpoints: the contents of the Cluster and Local policy chains, each
	// programmed only when not empty. Cluster is empty when the port never
	// uses Cluster policy (internal policy Local and not externally
	// accessible); Local is empty when it never uses Local policy.
	Cluster, Local EndpointSet
}

// Internal is how the ClusterIP destination is programmed (iptables and
// nftables modes).
func (p *ExpectedPort) Internal() Path { return p.policyPath(p.InternalLocal) }

// External is how the node port, external IPs and load-balancer VIPs are
// programmed (iptables and nftables modes): through the KUBE-EXT-/external-
// chain to the external policy chain. With policy Local and no local
// endpoint the verdict is Drop, though the external chain still exists (it
// sends pod and node traffic to the Cluster chain).
func (p *ExpectedPort) External() Path {
	if !p.ExternallyAccessible {
		return Path{Verdict: NotExposed}
	}
	return p.policyPath(p.ExternalLocal)
}

// policyPath is the path of traffic under policy Local (local) or Cluster:
// hasInternalEndpoints / hasExternalEndpoints and the policy chain.
func (p *ExpectedPort) policyPath(local bool) Path {
	switch {
	case !p.HasEndpoints:
		return Path{Verdict: Reject}
	case local && len(p.Local) == 0:
		return Path{Verdict: Drop}
	case local:
		return Path{Verdict: Forward, Local: true, Endpoints: p.Local}
	}
	return Path{Verdict: Forward, Endpoints: p.Cluster}
}

// ExternalChain says the KUBE-EXT-/external- chain is programmed
// (usesExternalTrafficChain).
func (p *ExpectedPort) ExternalChain() bool { return p.HasEndpoints && p.ExternallyAccessible }

// Reachable is CategorizeEndpoints' allReachableEndpoints in iptables mode
// terms: every endpoint some chain of the port jumps to (the union of the
// programmed Cluster and Local chains).
func (p *ExpectedPort) Reachable() EndpointSet {
	switch {
	case len(p.Local) == 0:
		return p.Cluster
	case len(p.Cluster) == 0:
		return p.Local
	}
	return union(p.Cluster, p.Local)
}

// IPVSInternal is the real servers of the ClusterIP virtual server in IPVS
// mode (which exists whatever the endpoints).
func (p *ExpectedPort) IPVSInternal() EndpointSet {
	if p.InternalLocal && len(p.Local) > 0 {
		return p.Local
	}
	return p.Cluster
}

// IPVSExternal is the real servers of the external IP, load-balancer VIP
// and node IP virtual servers in IPVS mode.
func (p *ExpectedPort) IPVSExternal() EndpointSet {
	if p.ExternalLocal && len(p.Local) > 0 {
		return p.Local
	}
	return p.Cluster
}

// Service is a Service as kube-proxy's ServiceChangeTracker reads it.
type Service struct {
	Namespace, Name string
	// Type is spec.type: ClusterIP, NodePort, LoadBalancer, ExternalName.
	Type string
	// ClusterIPs is spec.clusterIPs (empty for a headless Service) and
	// IPFamilies spec.ipFamilies ("IPv4", "IPv6"), in order.
	ClusterIPs  []netip.Addr
	IPFamilies  []string
	ExternalIPs []netip.Addr
	// LoadBalancerVIPs are the ingress IPs in ipMode VIP (or unset).
	LoadBalancerVIPs []netip.Addr
	Ports            []ServicePort
	// InternalTrafficLocal and ExternalTrafficLocal: the policies are
	// Local. SessionAffinity: ClientIP. ServiceProxyName: the Service has
	// the label service.kubernetes.io/service-proxy-name.
	InternalTrafficLocal, ExternalTrafficLocal, SessionAffinity, ServiceProxyName bool
}

// ServicePort is one of spec.ports; Protocol is lower case.
type ServicePort struct {
	Name           string
	Port, NodePort uint16
	Protocol       string
}

// EndpointSlice is the part of an EndpointSlice kube-proxy reads, without
// the slices it does not watch (label service.kubernetes.io/headless,
// address type FQDN).
type EndpointSlice struct {
	// Ports are the slice's ports; a port with a nil name or a nil or zero
	// number is left out (kube-proxy ignores it).
	Ports     []SlicePort
	Endpoints []Endpoint
}

// SlicePort is a port of an EndpointSlice; Protocol is lower case.
type SlicePort struct {
	Name     string
	Port     uint16
	Protocol string
}

// Endpoint is an endpoint of a slice: its first address, its conditions
// with the API's defaults (ready and serving when unset, not terminating),
// its node and its hints.
type Endpoint struct {
	Addr                        netip.Addr
	Ready, Serving, Terminating bool
	Node                        string
	ZoneHints, NodeHints        []string
}

// Source is the cluster as kube-proxy's informers see it (kube/index's
// Index is one).
type Source interface {
	// Node is the node kube-proxy runs on; NodeZone its
	// topology.kubernetes.io/zone label ("" when none).
	Node() string
	NodeZone() string
	// EachProxyService calls fn for every Service with its EndpointSlices;
	// fn must not keep what it is given.
	EachProxyService(fn func(s *Service, slices []EndpointSlice))
}

// Expectation is what kube-proxy programs on one node for every service
// port of the cluster.
type Expectation struct {
	// Node and Zone are the node the expectation is for and its
	// topology.kubernetes.io/zone label.
	Node, Zone string
	// Ports are sorted by ID (family first).
	Ports []ExpectedPort

	totals [2]int // endpoints per family, see TotalEndpoints
	arena  []netip.AddrPort
	order  []int32 // ExpectInto's sorting buffer
}

// TotalEndpoints is kube-proxy's totalEndpoints for family f: every
// endpoint (whatever its conditions) of every service port it programs.
// Above 1000 its iptables proxier runs in large-cluster mode
// (iptables/proxier.go largeClusterEndpointsThreshold).
func (e *Expectation) TotalEndpoints(f IPFamily) int { return e.totals[familyIndex(f)] }

func familyIndex(f IPFamily) int {
	if f == IPv6 {
		return 1
	}
	return 0
}

// Find returns the expected port with that ID, or nil.
func (e *Expectation) Find(id ServicePortID) *ExpectedPort {
	i, ok := slices.BinarySearchFunc(e.Ports, id, func(p ExpectedPort, id ServicePortID) int { return compareIDs(p.ID, id) })
	if !ok {
		return nil
	}
	return &e.Ports[i]
}

// Family returns the expected ports of one family (a subslice of Ports).
func (e *Expectation) Family(f IPFamily) []ExpectedPort {
	lo, _ := slices.BinarySearchFunc(e.Ports, f, func(p ExpectedPort, f IPFamily) int { return cmp.Compare(p.ID.Family, f) })
	hi, _ := slices.BinarySearchFunc(e.Ports, f+1, func(p ExpectedPort, f IPFamily) int { return cmp.Compare(p.ID.Family, f) })
	return e.Ports[lo:hi]
}

// Expect computes what kube-proxy v1.37.2 programs on src's node for every
// Service of src; local endpoints are those whose node is that node, so the
// node name must be kube-proxy's own (its --hostname-override, as in a
// DaemonSet given spec.nodeName). The result may refer to strings and
// address lists src gave (kube/index's are immutable).
func Expect(src Source) *Expectation {
	e := &Expectation{}
	ExpectInto(e, src)
	return e
}

// ExpectInto is Expect reusing e's memory, for a caller that recomputes the
// expectation on every refresh: e's previous contents, and the endpoint
// sets taken from them, are overwritten, so nothing may still read them.
func ExpectInto(e *Expectation, src Source) {
	b := builder{node: src.Node(), zone: src.NodeZone(), out: e}
	e.Node, e.Zone = b.node, b.zone
	e.Ports = e.Ports[:0]
	e.totals = [2]int{}
	b.arena = e.arena[:0]
	src.EachProxyService(b.service)
	e.arena = b.arena
	e.sortPorts()
}

// sortPorts sorts Ports by ID through an index, so that the sort moves
// small integers rather than whole ExpectedPorts.
func (e *Expectation) sortPorts() {
	e.order = e.order[:0]
	for i := range e.Ports {
		e.order = append(e.order, int32(i))
	}
	slices.SortFunc(e.order, func(a, b int32) int { return compareIDs(e.Ports[a].ID, e.Ports[b].ID) })
	// Apply the permutation in place, cycle by cycle: position i takes
	// the port at order[i]; a done position is marked -1.
	for i := range e.order {
		if e.order[i] < 0 || int(e.order[i]) == i {
			continue
		}
		tmp := e.Ports[i]
		j := i
		for {
			k := int(e.order[j])
			e.order[j] = -1
			if k == i {
				e.Ports[j] = tmp
				break
			}
			e.Ports[j] = e.Ports[k]
			j = k
		}
	}
}

// candidate is an endpoint of one service port as kube-proxy's
// BaseEndpointInfo holds it.
type candidate struct {
	ep                          netip.AddrPort
	seq                         int // order read, for duplicates
	local                       bool
	ready, serving, terminating bool
	zoneHints, nodeHints        []string
}

func (c *candidate) zoneHinted(zone string) bool { return slices.Contains(c.zoneHints, zone) }
func (c *candidate) nodeHinted(node string) bool { return slices.Contains(c.nodeHints, node) }
func (c *candidate) hasZoneHints() bool          { return len(c.zoneHints) > 0 }
func (c *candidate) hasNodeHints() bool          { return len(c.nodeHints) > 0 }

type builder struct {
	node, zone string
	out        *Expectation
	arena      []netip.AddrPort
	cands      []candidate
	scratch    []netip.AddrPort
}

// Service types (k8s.io/api core/v1 ServiceType).
const (
	typeClusterIP    = "ClusterIP"
	typeNodePort     = "NodePort"
	typeLoadBalancer = "LoadBalancer"
	typeExternalName = "ExternalName"
)

// skipService is ShouldSkipService plus the informers' selectors.
func skipService(s *Service) bool {
	return s.ServiceProxyName || len(s.ClusterIPs) == 0 || s.Type == typeExternalName
}

// clusterIPOf is GetClusterIPByFamily.
func clusterIPOf(s *Service, f IPFamily) (netip.Addr, bool) {
	if len(s.IPFamilies) == 0 {
		// Written before dual-stack: the one ClusterIP, if of that family.
		if familyOf(s.ClusterIPs[0]) == f {
			return s.ClusterIPs[0], true
		}
		return netip.Addr{}, false
	}
	want := "IPv4"
	if f == IPv6 {
		want = "IPv6"
	}
	for i, fam := range s.IPFamilies {
		if fam == want && i < len(s.ClusterIPs) {
			return s.ClusterIPs[i], true
		}
	}
	return netip.Addr{}, false
}

// ofFamily is MapIPsByIPFamily(...)[f]: the list itself when every address
// is of family f (the usual case, no copy).
func ofFamily(addrs []netip.Addr, f IPFamily) []netip.Addr {
	n := 0
	for _, a := range addrs {
		if familyOf(a) == f {
			n++
		}
	}
	if n == len(addrs) {
		return addrs
	}
	if n == 0 {
		return nil
	}
	out := make([]netip.Addr, 0, n)
	for _, a := range addrs {
		if familyOf(a) == f {
			out = append(out, a)
		}
	}
	return out
}

func (b *builder) service(s *Service, sl []EndpointSlice) {
	if skipService(s) {
		return
	}
	for _, f := range [...]IPFamily{IPv4, IPv6} {
		cip, ok := clusterIPOf(s, f)
		if !ok {
			continue
		}
		extIPs := ofFamily(s.ExternalIPs, f)
		vips := ofFamily(s.LoadBalancerVIPs, f)
		for i := range s.Ports {
			sp := &s.Ports[i]
			p := ExpectedPort{
				ID:               ServicePortID{Family: f, Namespace: s.Namespace, Name: s.Name, Port: sp.Name, Protocol: sp.Protocol},
				ClusterIP:        cip,
				Port:             sp.Port,
				NodePort:         sp.NodePort,
				ExternalIPs:      extIPs,
				LoadBalancerVIPs: vips,
				SessionAffinity:  s.SessionAffinity,
			}
			portPolicy(&p, s)
			b.gather(sl, f, sp)
			b.out.totals[familyIndex(f)] += len(b.cands)
			b.categorize(&p)
			b.out.Ports = append(b.out.Ports, p)
		}
	}
}

// portPolicy fills the traffic-policy fields as newBaseServiceInfo and
// pkg/api/v1/service do.
func portPolicy(p *ExpectedPort, s *Service) {
	// Service-level ExternallyAccessible (pkg/api/v1/service): by type,
	// whatever the family.
	svcExternal := s.Type == typeLoadBalancer || s.Type == typeNodePort || (s.Type == typeClusterIP && len(s.ExternalIPs) > 0)
	p.ExternalLocal = svcExternal && s.ExternalTrafficLocal
	p.InternalLocal = s.InternalTrafficLocal
	// Port-level ExternallyAccessible (serviceport.go): what this family
	// really exposes.
	p.ExternallyAccessible = p.NodePort != 0 || len(p.LoadBalancerVIPs) != 0 || len(p.ExternalIPs) != 0
}

// usesCluster and usesLocal are UsesClusterEndpoints and UsesLocalEndpoints.
func usesCluster(p *ExpectedPort) bool { return !p.InternalLocal || p.ExternallyAccessible }
func usesLocal(p *ExpectedPort) bool {
	return p.InternalLocal || (p.ExternalLocal && p.ExternallyAccessible)
}

// gather is endpointInfoByServicePort + addEndpoints for one service port:
// every slice port of the same name and protocol gives the slice's
// endpoints of family f that number.
func (b *builder) gather(sl []EndpointSlice, f IPFamily, sp *ServicePort) {
	b.cands = b.cands[:0]
	for i := range sl {
		port := slicePort(sl[i].Ports, sp)
		if port == 0 {
			continue
		}
		for j := range sl[i].Endpoints {
			e := &sl[i].Endpoints[j]
			if familyOf(e.Addr) != f {
				continue // a slice of the other address type
			}
			b.cands = append(b.cands, candidate{
				ep:          netip.AddrPortFrom(e.Addr, port),
				seq:         len(b.cands),
				local:       b.node != "" && e.Node == b.node,
				ready:       e.Ready,
				serving:     e.Serving,
				terminating: e.Terminating,
				zoneHints:   e.ZoneHints,
				nodeHints:   e.NodeHints,
			})
		}
	}
	b.dedupe()
}

// slicePort is the number of the slice port named like sp (same protocol),
// 0 when there is none.
func slicePort(ports []SlicePort, sp *ServicePort) uint16 {
	for _, pp := range ports {
		if pp.Name == sp.Name && pp.Protocol == sp.Protocol {
			return pp.Port
		}
	}
	return 0
}

// dedupe keeps one candidate per address and port as addEndpoints does
// reading them in order: a later duplicate replaces the earlier one unless
// it is terminating ("prefer the running pod over the terminating one").
func (b *builder) dedupe() {
	if len(b.cands) < 2 {
		return
	}
	slices.SortFunc(b.cands, func(x, y candidate) int { return cmp.Or(x.ep.Compare(y.ep), cmp.Compare(x.seq, y.seq)) })
	out := b.cands[:1]
	for _, c := range b.cands[1:] {
		last := &out[len(out)-1]
		switch {
		case c.ep != last.ep:
			out = append(out, c)
		case !c.terminating:
			*last = c
		}
	}
	b.cands = out
}

// Topology modes of topologyModeFromHints.
const (
	topologyNone = iota
	topologySameZone
	topologySameNode
)

// topologyMode is topologyModeFromHints.
func (b *builder) topologyMode() int {
	hasReady, forNode, allNodeHints, forZone, allZoneHints := false, false, true, false, true
	for i := range b.cands {
		c := &b.cands[i]
		if !c.ready {
			continue
		}
		hasReady = true
		if !c.hasNodeHints() {
			allNodeHints = false
		} else if c.nodeHinted(b.node) {
			forNode = true
		}
		if !c.hasZoneHints() {
			allZoneHints = false
		} else if c.zoneHinted(b.zone) {
			forZone = true
		}
	}
	switch {
	case !hasReady:
		return topologyNone
	case allNodeHints && forNode:
		return topologySameNode
	case allZoneHints && forZone:
		return topologySameZone
	}
	return topologyNone
}

// availableForTopology is availableForTopology.
func (b *builder) availableForTopology(c *candidate, mode int) bool {
	switch mode {
	case topologySameNode:
		return c.nodeHinted(b.node)
	case topologySameZone:
		return c.zoneHinted(b.zone)
	}
	return true
}

// categorize is CategorizeEndpoints: it fills p.Cluster, p.Local and
// p.HasEndpoints from the gathered candidates.
func (b *builder) categorize(p *ExpectedPort) {
	if len(b.cands) == 0 {
		return
	}
	mode := topologyNone
	if usesCluster(p) {
		mode = b.topologyMode()
		p.Cluster = b.filter(func(c *candidate) bool { return c.ready && b.availableForTopology(c, mode) })
		// No ready endpoint anywhere (topology already fell back to none
		// when none was ready for it): use serving terminating ones.
		if len(p.Cluster) == 0 {
			p.Cluster = b.filter(func(c *candidate) bool { return c.serving && c.terminating })
		}
		if len(p.Cluster) > 0 {
			p.HasEndpoints = true
		}
	}
	if !usesLocal(p) {
		return
	}
	hasLocalReady, hasLocalServingTerminating := false, false
	for i := range b.cands {
		c := &b.cands[i]
		if c.ready {
			p.HasEndpoints = true
			hasLocalReady = hasLocalReady || c.local
		} else if c.serving && c.terminating {
			p.HasEndpoints = true
			hasLocalServingTerminating = hasLocalServingTerminating || c.local
		}
	}
	switch {
	case hasLocalReady:
		p.Local = b.filter(func(c *candidate) bool { return c.local && c.ready })
	case hasLocalServingTerminating:
		p.Local = b.filter(func(c *candidate) bool { return c.local && c.serving && c.terminating })
	}
	// kube-proxy's allReachableEndpoints (the endpoint chains it writes) is
	// the union of the two lists whichever way it computes it: Reachable.
}

// filter returns the candidates pred accepts as a sorted set carved from
// the arena.
func (b *builder) filter(pred func(*candidate) bool) EndpointSet {
	b.scratch = b.scratch[:0]
	for i := range b.cands {
		if pred(&b.cands[i]) {
			b.scratch = append(b.scratch, b.cands[i].ep)
		}
	}
	if len(b.scratch) == 0 {
		return nil
	}
	if !slices.IsSortedFunc(b.scratch, netip.AddrPort.Compare) {
		slices.SortFunc(b.scratch, netip.AddrPort.Compare)
	}
	return b.carve(b.scratch)
}

// arenaChunk is how many endpoints one arena allocation holds: sets are
// carved from shared chunks instead of one allocation each.
const arenaChunk = 4096

func (b *builder) carve(src []netip.AddrPort) EndpointSet {
	if len(src) > arenaChunk {
		return EndpointSet(slices.Clone(src))
	}
	if cap(b.arena)-len(b.arena) < len(src) {
		b.arena = make([]netip.AddrPort, 0, arenaChunk)
	}
	start := len(b.arena)
	b.arena = append(b.arena, src...)
	return EndpointSet(b.arena[start:len(b.arena):len(b.arena)])
}

// union merges two sorted sets.
func union(a, b EndpointSet) EndpointSet {
	out := make(EndpointSet, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch c := a[i].Compare(b[j]); {
		case c < 0:
			out = append(out, a[i])
			i++
		case c > 0:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	out = append(out, a[i:]...)
	return append(out, b[j:]...)
}

// PortLabel is the value of the "port" label of a service port's series:
// its name, or its number when unnamed (CONTRACT.md).
func (p *ExpectedPort) PortLabel() string {
	if p.ID.Port != "" {
		return p.ID.Port
	}
	return strconv.Itoa(int(p.Port))
}
