// Package index is the Kubernetes metadata netinspect joins kernel state
// to, as plain Go values: the pods of this node, every Service and
// EndpointSlice of the cluster stripped to what netinspect reads, and this
// node's zone, with the lookups collectors make on the scrape path: pod IP
// -> pod, service address and port -> service port, endpoint IP -> pod.
// Unknown objects give zero values, never guesses. A nil *Index is valid and
// finds nothing (enrichment off).
//
// Package kube fills it from informers (and re-exports its names); this
// package imports neither client-go nor Prometheus, so kube-proxy's mirror
// (package kubeproxy) can read it.
package index

import (
	"net/netip"
	"sort"
	"strconv"
	"sync"

	corev1 "k8s.io/api/core/v1"
)

// PodRef identifies a pod; the zero value means unknown (empty label values).
type PodRef struct {
	Namespace, Name, UID string
	HostNetwork          bool
}

// ServicePortRef identifies one port of a Service. Port is the port's name,
// or its number when the port is unnamed (see CONTRACT.md).
type ServicePortRef struct {
	Namespace, Service, Port string
}

// PodInfo is a pod of this node as the index holds it.
type PodInfo struct {
	Namespace, Name, UID string
	Node                 string
	HostNetwork          bool
	// IPs are the pod's status.podIPs, in order.
	IPs []netip.Addr
	// Labels holds only the allowlisted labels (see LabelAllowlist).
	Labels map[string]string
}

// Ref is the pod's identity.
func (p PodInfo) Ref() PodRef {
	return PodRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID, HostNetwork: p.HostNetwork}
}

// ServicePortInfo is one port of a Service.
type ServicePortInfo struct {
	Name     string // may be empty
	Port     uint16
	Protocol string // lower case: tcp, udp, sctp
	NodePort uint16 // 0 when none
	// ReadyEndpoints counts the ready endpoint addresses that serve this port,
	// summed over the Service's EndpointSlices.
	ReadyEndpoints int
}

// ref is the ServicePortRef of the port (its name, or number when unnamed).
func (p ServicePortInfo) ref(namespace, service string) ServicePortRef {
	name := p.Name
	if name == "" {
		name = strconv.Itoa(int(p.Port))
	}
	return ServicePortRef{Namespace: namespace, Service: service, Port: name}
}

// ServiceInfo is a Service as the index holds it.
type ServiceInfo struct {
	Namespace, Name string
	Type            string // ClusterIP, NodePort, LoadBalancer, ExternalName
	// ClusterIPs is spec.clusterIPs in order (empty for a headless Service).
	ClusterIPs []netip.Addr
	// IPFamilies is spec.ipFamilies in order: ClusterIPs[i] is of family
	// IPFamilies[i]. Empty only for objects written before dual-stack.
	IPFamilies  []corev1.IPFamily
	ExternalIPs []netip.Addr
	// LoadBalancerIPs are the status.loadBalancer.ingress IPs;
	// LoadBalancerVIPs those of them in ipMode VIP (or unset), the only
	// ones kube-proxy programs.
	LoadBalancerIPs  []netip.Addr
	LoadBalancerVIPs []netip.Addr
	Ports            []ServicePortInfo
	// InternalTrafficLocal and ExternalTrafficLocal say that
	// spec.internalTrafficPolicy / spec.externalTrafficPolicy is Local.
	InternalTrafficLocal, ExternalTrafficLocal bool
	// SessionAffinityClientIP says spec.sessionAffinity is ClientIP.
	SessionAffinityClientIP bool
	// ServiceProxyName says the Service has the label
	// service.kubernetes.io/service-proxy-name: another proxy serves it and
	// kube-proxy ignores it.
	ServiceProxyName bool
	// ReadyEndpoints counts the distinct ready endpoint addresses of the
	// Service over all its EndpointSlices.
	ReadyEndpoints int
}

// EndpointInfo is one endpoint address of a Service, from an EndpointSlice.
type EndpointInfo struct {
	IP netip.Addr
	// Ready, Serving and Terminating are the endpoint's conditions, an
	// unset one taking the API's documented default (ready and serving
	// true, terminating false).
	Ready, Serving, Terminating bool
	// NotProxied says kube-proxy does not use this address: its slice has
	// addressType FQDN or the label service.kubernetes.io/headless, or it
	// is not the endpoint's first address (kube-proxy takes only
	// addresses[0]).
	NotProxied bool
	Node       string
	// Hints are the endpoint's topology hints; nil when it has none.
	Hints *EndpointHints
	Pod   PodRef // zero when the targetRef is not a pod
	// Ports maps the slice's port names to numbers.
	Ports []EndpointPort
}

// EndpointHints are an endpoint's hints.forZones and hints.forNodes names.
type EndpointHints struct {
	ForZones, ForNodes []string
}

// EndpointPort is a port of an EndpointSlice.
type EndpointPort struct {
	Name     string
	Port     uint16
	Protocol string
	// NilName says the slice gave the port no name at all (nil, not ""):
	// kube-proxy ignores such a port.
	NilName bool
}

// Protocol numbers used as compact map keys.
const (
	protoUnknown uint8 = iota
	protoTCP
	protoUDP
	protoSCTP
)

func protoKey(p string) uint8 {
	switch p {
	case "tcp", "TCP":
		return protoTCP
	case "udp", "UDP":
		return protoUDP
	case "sctp", "SCTP":
		return protoSCTP
	}
	return protoUnknown
}

type addrPortKey struct {
	addr  netip.Addr
	port  uint16
	proto uint8
}

type nodePortKey struct {
	port  uint16
	proto uint8
}

type objKey struct{ namespace, name string }

// sliceData is what the index keeps of one EndpointSlice.
type sliceData struct {
	service   objKey // from label kubernetes.io/service-name
	endpoints []EndpointInfo
}

type svcEntry struct {
	info ServiceInfo
}

// Index answers IP and port lookups from the informers' caches. It is safe
// for concurrent use; lookups take a read lock and do not allocate.
type Index struct {
	mu sync.RWMutex

	node      string
	nodeZone  string
	nodeKnown bool // this node's Node object has been seen
	// synced says whether the informers filling the index have synced;
	// nil for an index filled by hand, which is complete.
	synced func() bool

	pods    map[objKey]*PodInfo
	podByIP map[netip.Addr]PodRef

	services       map[objKey]*svcEntry
	svcByAddrPort  map[addrPortKey]ServicePortRef
	svcByNodePort  map[nodePortKey]ServicePortRef
	slices         map[objKey]*sliceData
	slicesBySvc    map[objKey]map[string]struct{} // service -> slice names
	endpointByIP   map[netip.Addr]epEntry
	endpointsCount int
}

type epEntry struct {
	ref   PodRef
	count int // how many slice endpoints name this IP
}

// NewIndex returns an empty index for node (the node whose pods it holds).
func NewIndex(node string) *Index {
	return &Index{
		node:          node,
		pods:          map[objKey]*PodInfo{},
		podByIP:       map[netip.Addr]PodRef{},
		services:      map[objKey]*svcEntry{},
		svcByAddrPort: map[addrPortKey]ServicePortRef{},
		svcByNodePort: map[nodePortKey]ServicePortRef{},
		slices:        map[objKey]*sliceData{},
		slicesBySvc:   map[objKey]map[string]struct{}{},
		endpointByIP:  map[netip.Addr]epEntry{},
	}
}

// Node is the node name the index was built for ("" for a nil index).
func (ix *Index) Node() string {
	if ix == nil {
		return ""
	}
	return ix.node
}

// NodeZone is the topology.kubernetes.io/zone label of this node's Node
// object ("" when unknown or unset).
func (ix *Index) NodeZone() string {
	if ix == nil {
		return ""
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return ix.nodeZone
}

// SetNodeZone records the zone label of this node's Node object.
func (ix *Index) SetNodeZone(zone string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.nodeZone, ix.nodeKnown = zone, true
}

// SetSynced sets how the index tells whether it holds the whole cluster
// (kube.Watcher: its Service, EndpointSlice and Node informers have
// synced). Call it before the index is shared.
func (ix *Index) SetSynced(fn func() bool) { ix.synced = fn }

// Synced reports whether the index holds every Service and EndpointSlice
// of the cluster and this node's Node, so that what is absent from it is
// absent from the API: a judgment that something should not exist (kube-
// proxy drift) waits for it. An index filled by hand is synced; a nil one
// is not.
func (ix *Index) Synced() bool {
	if ix == nil {
		return false
	}
	return ix.synced == nil || ix.synced()
}

// NodeKnown reports whether this node's Node object has been seen.
func (ix *Index) NodeKnown() bool {
	if ix == nil {
		return false
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return ix.nodeKnown
}

// PodByIP finds the pod of this node that has ip in status.podIPs.
// hostNetwork pods share the node's addresses and are not indexed by IP.
func (ix *Index) PodByIP(ip netip.Addr) (PodRef, bool) {
	if ix == nil {
		return PodRef{}, false
	}
	ip = ip.Unmap()
	ix.mu.RLock()
	ref, ok := ix.podByIP[ip]
	ix.mu.RUnlock()
	return ref, ok
}

// EndpointPodByIP finds the pod (on any node) that an EndpointSlice endpoint
// with address ip refers to through its targetRef.
func (ix *Index) EndpointPodByIP(ip netip.Addr) (PodRef, bool) {
	if ix == nil {
		return PodRef{}, false
	}
	ip = ip.Unmap()
	ix.mu.RLock()
	e, ok := ix.endpointByIP[ip]
	ix.mu.RUnlock()
	if !ok || !e.hasPod() {
		return PodRef{}, false
	}
	return e.ref, true
}

// ServiceByAddrPort finds the service port reached at ip:port over protocol
// (lower case "tcp", "udp", "sctp") through a ClusterIP, an external IP or a
// load-balancer ingress IP.
func (ix *Index) ServiceByAddrPort(protocol string, ip netip.Addr, port uint16) (ServicePortRef, bool) {
	if ix == nil {
		return ServicePortRef{}, false
	}
	k := addrPortKey{addr: ip.Unmap(), port: port, proto: protoKey(protocol)}
	ix.mu.RLock()
	ref, ok := ix.svcByAddrPort[k]
	ix.mu.RUnlock()
	return ref, ok
}

// ServiceByNodePort finds the service port that owns a node port.
func (ix *Index) ServiceByNodePort(protocol string, port uint16) (ServicePortRef, bool) {
	if ix == nil {
		return ServicePortRef{}, false
	}
	ix.mu.RLock()
	ref, ok := ix.svcByNodePort[nodePortKey{port: port, proto: protoKey(protocol)}]
	ix.mu.RUnlock()
	return ref, ok
}

// Services returns every Service with its ports, addresses and ready
// endpoint counts, sorted by namespace and name. The result is a copy.
func (ix *Index) Services() []ServiceInfo {
	if ix == nil {
		return nil
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	out := make([]ServiceInfo, 0, len(ix.services))
	for k, s := range ix.services {
		info := s.info
		info.Ports = append([]ServicePortInfo(nil), s.info.Ports...)
		info.ReadyEndpoints = ix.readyEndpointsLocked(k, info.Ports)
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Endpoints returns the endpoints of one Service from all its EndpointSlices.
func (ix *Index) Endpoints(namespace, service string) []EndpointInfo {
	if ix == nil {
		return nil
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	var out []EndpointInfo
	for name := range ix.slicesBySvc[objKey{namespace, service}] {
		if sd := ix.slices[objKey{namespace, name}]; sd != nil {
			out = append(out, sd.endpoints...)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out
}

// EachService calls fn for every Service (in no particular order) with the
// endpoints of each of its EndpointSlices, all under one read lock, without
// copying: fn must neither modify nor keep s or slices, and should be quick,
// as informer updates wait for it.
func (ix *Index) EachService(fn func(s *ServiceInfo, slices [][]EndpointInfo)) {
	if ix == nil {
		return
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	var slices [][]EndpointInfo
	for k, s := range ix.services {
		slices = slices[:0]
		for name := range ix.slicesBySvc[k] {
			if sd := ix.slices[objKey{k.namespace, name}]; sd != nil {
				slices = append(slices, sd.endpoints)
			}
		}
		fn(&s.info, slices)
	}
}

// Pods returns the pods of this node, sorted by namespace and name. The
// result is a copy.
func (ix *Index) Pods() []PodInfo {
	if ix == nil {
		return nil
	}
	ix.mu.RLock()
	out := make([]PodInfo, 0, len(ix.pods))
	for _, p := range ix.pods {
		out = append(out, *p)
	}
	ix.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Counts returns how many pods, services and EndpointSlices the index holds.
func (ix *Index) Counts() (pods, services, endpointSlices int) {
	if ix == nil {
		return 0, 0, 0
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return len(ix.pods), len(ix.services), len(ix.slices)
}

// readyEndpointsLocked counts distinct ready addresses of a service and fills
// each port's ReadyEndpoints. Call with ix.mu held.
func (ix *Index) readyEndpointsLocked(svc objKey, ports []ServicePortInfo) int {
	seen := map[netip.Addr]struct{}{}
	for name := range ix.slicesBySvc[svc] {
		sd := ix.slices[objKey{svc.namespace, name}]
		if sd == nil {
			continue
		}
		for _, ep := range sd.endpoints {
			if !ep.Ready {
				continue
			}
			seen[ep.IP] = struct{}{}
			for i := range ports {
				for _, p := range ep.Ports {
					if p.Name == ports[i].Name && protoKey(p.Protocol) == protoKey(ports[i].Protocol) {
						ports[i].ReadyEndpoints++
						break
					}
				}
			}
		}
	}
	return len(seen)
}

// SetPod adds or replaces a pod. Pods of other nodes are ignored.
func (ix *Index) SetPod(p PodInfo) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	k := objKey{p.Namespace, p.Name}
	ix.deletePodLocked(k)
	if p.Node != ix.node {
		return
	}
	cp := p
	ix.pods[k] = &cp
	if p.HostNetwork {
		return
	}
	ref := p.Ref()
	for _, ip := range p.IPs {
		ix.podByIP[ip.Unmap()] = ref
	}
}

// DeletePod removes a pod.
func (ix *Index) DeletePod(namespace, name string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.deletePodLocked(objKey{namespace, name})
}

func (ix *Index) deletePodLocked(k objKey) {
	old := ix.pods[k]
	if old == nil {
		return
	}
	delete(ix.pods, k)
	for _, ip := range old.IPs {
		ip = ip.Unmap()
		// Only drop the entry if it is still ours: a new pod may have taken
		// over the address already.
		if cur, ok := ix.podByIP[ip]; ok && cur.UID == old.UID && cur.Name == old.Name && cur.Namespace == old.Namespace {
			delete(ix.podByIP, ip)
		}
	}
}

// SetService adds or replaces a Service.
func (ix *Index) SetService(s ServiceInfo) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	k := objKey{s.Namespace, s.Name}
	ix.deleteServiceLocked(k)
	ix.services[k] = &svcEntry{info: s}
	for _, p := range s.Ports {
		ref := p.ref(s.Namespace, s.Name)
		proto := protoKey(p.Protocol)
		for _, list := range [][]netip.Addr{s.ClusterIPs, s.ExternalIPs, s.LoadBalancerIPs} {
			for _, ip := range list {
				ix.svcByAddrPort[addrPortKey{addr: ip.Unmap(), port: p.Port, proto: proto}] = ref
			}
		}
		if p.NodePort != 0 {
			ix.svcByNodePort[nodePortKey{port: p.NodePort, proto: proto}] = ref
		}
	}
}

// DeleteService removes a Service.
func (ix *Index) DeleteService(namespace, name string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.deleteServiceLocked(objKey{namespace, name})
}

func (ix *Index) deleteServiceLocked(k objKey) {
	old := ix.services[k]
	if old == nil {
		return
	}
	delete(ix.services, k)
	s := old.info
	for _, p := range s.Ports {
		proto := protoKey(p.Protocol)
		for _, list := range [][]netip.Addr{s.ClusterIPs, s.ExternalIPs, s.LoadBalancerIPs} {
			for _, ip := range list {
				ak := addrPortKey{addr: ip.Unmap(), port: p.Port, proto: proto}
				if cur, ok := ix.svcByAddrPort[ak]; ok && cur.Namespace == s.Namespace && cur.Service == s.Name {
					delete(ix.svcByAddrPort, ak)
				}
			}
		}
		if p.NodePort != 0 {
			nk := nodePortKey{port: p.NodePort, proto: proto}
			if cur, ok := ix.svcByNodePort[nk]; ok && cur.Namespace == s.Namespace && cur.Service == s.Name {
				delete(ix.svcByNodePort, nk)
			}
		}
	}
}

// SetEndpointSlice adds or replaces an EndpointSlice of service (in the
// slice's namespace).
func (ix *Index) SetEndpointSlice(namespace, name, service string, endpoints []EndpointInfo) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	k := objKey{namespace, name}
	ix.deleteSliceLocked(k)
	sd := &sliceData{service: objKey{namespace, service}, endpoints: endpoints}
	ix.slices[k] = sd
	if service != "" {
		set := ix.slicesBySvc[sd.service]
		if set == nil {
			set = map[string]struct{}{}
			ix.slicesBySvc[sd.service] = set
		}
		set[name] = struct{}{}
	}
	for _, ep := range endpoints {
		ip := ep.IP.Unmap()
		e := ix.endpointByIP[ip]
		e.count++
		if ep.Pod.Name != "" {
			e.ref = ep.Pod
		}
		ix.endpointByIP[ip] = e
		ix.endpointsCount++
	}
}

// DeleteEndpointSlice removes an EndpointSlice.
func (ix *Index) DeleteEndpointSlice(namespace, name string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.deleteSliceLocked(objKey{namespace, name})
}

func (ix *Index) deleteSliceLocked(k objKey) {
	old := ix.slices[k]
	if old == nil {
		return
	}
	delete(ix.slices, k)
	if set := ix.slicesBySvc[old.service]; set != nil {
		delete(set, k.name)
		if len(set) == 0 {
			delete(ix.slicesBySvc, old.service)
		}
	}
	for _, ep := range old.endpoints {
		ip := ep.IP.Unmap()
		e, ok := ix.endpointByIP[ip]
		if !ok {
			continue
		}
		e.count--
		ix.endpointsCount--
		if e.count <= 0 {
			delete(ix.endpointByIP, ip)
			continue
		}
		ix.endpointByIP[ip] = e
	}
}

// hasPod reports whether some slice endpoint with this address names a pod.
func (e epEntry) hasPod() bool { return e.ref.Name != "" }

// Lookup answers the Index's lookups while Batch holds its read lock, so a
// collector that resolves many addresses (a conntrack table scan) takes the
// lock once instead of once per address. A Lookup is valid only inside the
// Batch callback.
type Lookup struct{ ix *Index }

// Batch calls fn with a Lookup under one read lock. Keep fn short: writers
// (informer events) wait for it. A nil index gives a Lookup that finds
// nothing.
func (ix *Index) Batch(fn func(l Lookup)) {
	if ix == nil {
		fn(Lookup{})
		return
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	fn(Lookup{ix: ix})
}

// PodByIP is Index.PodByIP under the batch's lock.
func (l Lookup) PodByIP(ip netip.Addr) (PodRef, bool) {
	if l.ix == nil {
		return PodRef{}, false
	}
	ref, ok := l.ix.podByIP[ip.Unmap()]
	return ref, ok
}

// EndpointPodByIP is Index.EndpointPodByIP under the batch's lock.
func (l Lookup) EndpointPodByIP(ip netip.Addr) (PodRef, bool) {
	if l.ix == nil {
		return PodRef{}, false
	}
	e, ok := l.ix.endpointByIP[ip.Unmap()]
	if !ok || !e.hasPod() {
		return PodRef{}, false
	}
	return e.ref, true
}

// ServiceByAddrPort is Index.ServiceByAddrPort under the batch's lock.
func (l Lookup) ServiceByAddrPort(protocol string, ip netip.Addr, port uint16) (ServicePortRef, bool) {
	if l.ix == nil {
		return ServicePortRef{}, false
	}
	ref, ok := l.ix.svcByAddrPort[addrPortKey{addr: ip.Unmap(), port: port, proto: protoKey(protocol)}]
	return ref, ok
}

// ServiceByNodePort is Index.ServiceByNodePort under the batch's lock.
func (l Lookup) ServiceByNodePort(protocol string, port uint16) (ServicePortRef, bool) {
	if l.ix == nil {
		return ServicePortRef{}, false
	}
	ref, ok := l.ix.svcByNodePort[nodePortKey{port: port, proto: protoKey(protocol)}]
	return ref, ok
}
