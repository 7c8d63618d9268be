package index

import "github.com/netinspect/netinspect/kubeproxy"

// EachProxyService calls fn for every Service with its EndpointSlices as
// kube-proxy's informers and caches see them (it makes *Index a
// kubeproxy.Source): without the slices kube-proxy does not watch or the
// addresses it does not read (EndpointInfo.NotProxied), without the slice
// ports it ignores (nil name, no number). All under one read lock, with
// buffers reused from one Service to the next: fn must not keep what it is
// given, and should be quick, as informer updates wait for it.
func (ix *Index) EachProxyService(fn func(s *kubeproxy.Service, slices []kubeproxy.EndpointSlice)) {
	if ix == nil {
		return
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	var c proxyConverter
	for k, s := range ix.services {
		c.reset()
		svc := c.service(&s.info)
		for name := range ix.slicesBySvc[k] {
			if sd := ix.slices[objKey{k.namespace, name}]; sd != nil {
				c.slice(sd.endpoints)
			}
		}
		fn(svc, c.slices)
	}
}

// proxyConverter holds the buffers of EachProxyService.
type proxyConverter struct {
	svc      kubeproxy.Service
	families []string
	ports    []kubeproxy.ServicePort
	slices   []kubeproxy.EndpointSlice
	sports   []kubeproxy.SlicePort
	eps      []kubeproxy.Endpoint
}

func (c *proxyConverter) reset() {
	c.families, c.ports, c.slices, c.sports, c.eps = c.families[:0], c.ports[:0], c.slices[:0], c.sports[:0], c.eps[:0]
}

func (c *proxyConverter) service(s *ServiceInfo) *kubeproxy.Service {
	for _, f := range s.IPFamilies {
		c.families = append(c.families, string(f))
	}
	for _, p := range s.Ports {
		c.ports = append(c.ports, kubeproxy.ServicePort{Name: p.Name, Port: p.Port, NodePort: p.NodePort, Protocol: p.Protocol})
	}
	c.svc = kubeproxy.Service{
		Namespace: s.Namespace, Name: s.Name, Type: s.Type,
		ClusterIPs: s.ClusterIPs, IPFamilies: c.families,
		ExternalIPs: s.ExternalIPs, LoadBalancerVIPs: s.LoadBalancerVIPs,
		Ports:                c.ports,
		InternalTrafficLocal: s.InternalTrafficLocal, ExternalTrafficLocal: s.ExternalTrafficLocal,
		SessionAffinity: s.SessionAffinityClientIP, ServiceProxyName: s.ServiceProxyName,
	}
	return &c.svc
}

// slice converts one EndpointSlice's endpoints. They share the slice's
// port list (EndpointsFromSlice); endpoints given other lists
// (SetEndpointSlice's callers may) become slices of their own.
func (c *proxyConverter) slice(eps []EndpointInfo) {
	for start := 0; start < len(eps); {
		end := start + 1
		for end < len(eps) && samePorts(eps[end].Ports, eps[start].Ports) {
			end++
		}
		c.run(eps[start:end])
		start = end
	}
}

func samePorts(a, b []EndpointPort) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

func (c *proxyConverter) run(eps []EndpointInfo) {
	p0 := len(c.sports)
	for _, p := range eps[0].Ports {
		if !p.NilName && p.Port != 0 {
			c.sports = append(c.sports, kubeproxy.SlicePort{Name: p.Name, Port: p.Port, Protocol: p.Protocol})
		}
	}
	if len(c.sports) == p0 {
		return // no port kube-proxy reads: no endpoint of any service port
	}
	e0 := len(c.eps)
	for i := range eps {
		e := &eps[i]
		if e.NotProxied {
			continue
		}
		ke := kubeproxy.Endpoint{Addr: e.IP, Ready: e.Ready, Serving: e.Serving, Terminating: e.Terminating, Node: e.Node}
		if e.Hints != nil {
			ke.ZoneHints, ke.NodeHints = e.Hints.ForZones, e.Hints.ForNodes
		}
		c.eps = append(c.eps, ke)
	}
	c.slices = append(c.slices, kubeproxy.EndpointSlice{Ports: c.sports[p0:len(c.sports):len(c.sports)], Endpoints: c.eps[e0:len(c.eps):len(c.eps)]})
}

// interface check: the index is the mirror's source.
var _ kubeproxy.Source = (*Index)(nil)
