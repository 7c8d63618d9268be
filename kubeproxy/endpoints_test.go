package kubeproxy_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/netinspect/netinspect/kube/index"

	. "github.com/netinspect/netinspect/kubeproxy"
)

const testNode, testZone = "node-a", "zone-a"

var httpPorts = []index.EndpointPort{{Name: "http", Port: 8080, Protocol: "tcp"}}

// ep is a ready, serving, not terminating endpoint on node, with the slice
// port "http" -> 8080; opts change it.
func ep(ip, node string, opts ...func(*index.EndpointInfo)) index.EndpointInfo {
	e := index.EndpointInfo{IP: netip.MustParseAddr(ip), Ready: true, Serving: true, Node: node, Ports: httpPorts}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func notReady(e *index.EndpointInfo) { e.Ready = false }

// terminating is an endpoint being deleted that still serves (what the
// endpoint controller writes: ready false, serving true, terminating true).
func terminating(e *index.EndpointInfo) { e.Ready, e.Serving, e.Terminating = false, true, true }

// terminatingNotServing is a terminating endpoint that failed its probe.
func terminatingNotServing(e *index.EndpointInfo) {
	e.Ready, e.Serving, e.Terminating = false, false, true
}

func zones(z ...string) func(*index.EndpointInfo) {
	return func(e *index.EndpointInfo) {
		if e.Hints == nil {
			e.Hints = &index.EndpointHints{}
		}
		e.Hints.ForZones = z
	}
}

func nodes(n ...string) func(*index.EndpointInfo) {
	return func(e *index.EndpointInfo) {
		if e.Hints == nil {
			e.Hints = &index.EndpointHints{}
		}
		e.Hints.ForNodes = n
	}
}

func ports(p ...index.EndpointPort) func(*index.EndpointInfo) {
	return func(e *index.EndpointInfo) { e.Ports = p }
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// svc is a ClusterIP Service "ns/web" with port http 80/tcp at 10.96.0.10.
func svc(opts ...func(*index.ServiceInfo)) index.ServiceInfo {
	s := index.ServiceInfo{Namespace: "ns", Name: "web", Type: "ClusterIP", ClusterIPs: addrs("10.96.0.10"),
		IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol},
		Ports:      []index.ServicePortInfo{{Name: "http", Port: 80, Protocol: "tcp"}}}
	for _, o := range opts {
		o(&s)
	}
	return s
}

func nodePort(s *index.ServiceInfo) {
	s.Type = "NodePort"
	for i := range s.Ports {
		s.Ports[i].NodePort = uint16(30080 + i)
	}
}
func itpLocal(s *index.ServiceInfo) { s.InternalTrafficLocal = true }
func etpLocal(s *index.ServiceInfo) { s.ExternalTrafficLocal = true }

// set parses "ip:port" endpoints into an EndpointSet.
func set(eps ...string) EndpointSet {
	var out EndpointSet
	for _, e := range eps {
		out = append(out, netip.MustParseAddrPort(e))
	}
	return out
}

// expect builds an index for testNode in testZone with s and one
// EndpointSlice per element of slices, and returns the expectation.
func expect(t *testing.T, zone string, s index.ServiceInfo, slices ...[]index.EndpointInfo) *Expectation {
	t.Helper()
	ix := index.NewIndex(testNode)
	ix.SetNodeZone(zone)
	ix.SetService(s)
	for i, sl := range slices {
		ix.SetEndpointSlice(s.Namespace, fmt.Sprintf("%s-%d", s.Name, i), s.Name, sl)
	}
	return Expect(ix)
}

func webHTTP(f IPFamily) ServicePortID {
	return ServicePortID{Family: f, Namespace: "ns", Name: "web", Port: "http", Protocol: "tcp"}
}

// want is what a test expects of one service port.
type want struct {
	cluster, local     EndpointSet
	internal, external Path
	ipvsIn, ipvsExt    EndpointSet
}

func check(t *testing.T, e *Expectation, id ServicePortID, w want) {
	t.Helper()
	p := e.Find(id)
	if p == nil {
		t.Fatalf("no expectation for %v; have %v", id, e.Ports)
	}
	if !p.Cluster.Equal(w.cluster) {
		t.Errorf("cluster endpoints %v, want %v", p.Cluster, w.cluster)
	}
	if !p.Local.Equal(w.local) {
		t.Errorf("local endpoints %v, want %v", p.Local, w.local)
	}
	if got := p.Internal(); !pathEqual(got, w.internal) {
		t.Errorf("internal path %+v, want %+v", got, w.internal)
	}
	if got := p.External(); !pathEqual(got, w.external) {
		t.Errorf("external path %+v, want %+v", got, w.external)
	}
	if got := p.IPVSInternal(); !got.Equal(w.ipvsIn) {
		t.Errorf("IPVS ClusterIP real servers %v, want %v", got, w.ipvsIn)
	}
	if got := p.IPVSExternal(); !got.Equal(w.ipvsExt) {
		t.Errorf("IPVS external real servers %v, want %v", got, w.ipvsExt)
	}
}

func pathEqual(a, b Path) bool {
	return a.Verdict == b.Verdict && a.Local == b.Local && a.Endpoints.Equal(b.Endpoints)
}

func fwd(s EndpointSet) Path      { return Path{Verdict: Forward, Endpoints: s} }
func fwdLocal(s EndpointSet) Path { return Path{Verdict: Forward, Local: true, Endpoints: s} }

var (
	rejected = Path{Verdict: Reject}
	dropped  = Path{Verdict: Drop}
	none     = Path{Verdict: NotExposed}
)

// TestExpectEndpointConditions: ready endpoints, and the serving
// terminating fallback when none is ready (CategorizeEndpoints).
func TestExpectEndpointConditions(t *testing.T) {
	for _, tc := range []struct {
		name string
		eps  []index.EndpointInfo
		want want
	}{
		{"ready endpoints only", []index.EndpointInfo{ep("10.244.1.1", "node-b"), ep("10.244.1.2", "node-c"), ep("10.244.1.3", "node-b", notReady)},
			want{cluster: set("10.244.1.1:8080", "10.244.1.2:8080"), internal: fwd(set("10.244.1.1:8080", "10.244.1.2:8080")), external: none,
				ipvsIn: set("10.244.1.1:8080", "10.244.1.2:8080"), ipvsExt: set("10.244.1.1:8080", "10.244.1.2:8080")}},
		{"terminating ignored while one is ready", []index.EndpointInfo{ep("10.244.1.1", "node-b"), ep("10.244.1.2", "node-b", terminating)},
			want{cluster: set("10.244.1.1:8080"), internal: fwd(set("10.244.1.1:8080")), external: none,
				ipvsIn: set("10.244.1.1:8080"), ipvsExt: set("10.244.1.1:8080")}},
		{"serving terminating when none is ready", []index.EndpointInfo{ep("10.244.1.2", "node-b", terminating), ep("10.244.1.3", "node-b", terminatingNotServing), ep("10.244.1.4", "node-b", notReady)},
			want{cluster: set("10.244.1.2:8080"), internal: fwd(set("10.244.1.2:8080")), external: none,
				ipvsIn: set("10.244.1.2:8080"), ipvsExt: set("10.244.1.2:8080")}},
		{"nothing usable: reject", []index.EndpointInfo{ep("10.244.1.3", "node-b", terminatingNotServing), ep("10.244.1.4", "node-b", notReady)},
			want{internal: rejected, external: none}},
		{"no endpoints: reject", nil, want{internal: rejected, external: none}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check(t, expect(t, testZone, svc(), tc.eps), webHTTP(IPv4), tc.want)
		})
	}
	t.Run("no EndpointSlice: reject", func(t *testing.T) {
		check(t, expect(t, testZone, svc()), webHTTP(IPv4), want{internal: rejected, external: none})
	})
}

// TestExpectTrafficPolicies: internalTrafficPolicy / externalTrafficPolicy
// Local, with and without local endpoints.
func TestExpectTrafficPolicies(t *testing.T) {
	local, remote := ep("10.244.0.5", testNode), ep("10.244.1.5", "node-b")
	L, R, LR := set("10.244.0.5:8080"), set("10.244.1.5:8080"), set("10.244.0.5:8080", "10.244.1.5:8080")
	for _, tc := range []struct {
		name string
		svc  index.ServiceInfo
		eps  []index.EndpointInfo
		want want
	}{
		{"internal Local with a local endpoint", svc(itpLocal), []index.EndpointInfo{local, remote},
			want{local: L, internal: fwdLocal(L), external: none, ipvsIn: L, ipvsExt: nil}},
		{"internal Local without a local endpoint: drop", svc(itpLocal), []index.EndpointInfo{remote},
			// Not externally accessible: no Cluster chain either; IPVS's
			// ClusterIP virtual server falls back to the (empty) cluster list.
			want{internal: dropped, external: none}},
		{"internal Local, only a local terminating endpoint", svc(itpLocal), []index.EndpointInfo{ep("10.244.0.5", testNode, terminating), remote},
			want{local: L, internal: fwdLocal(L), external: none, ipvsIn: L}},
		{"internal Local on a NodePort without local endpoint", svc(itpLocal, nodePort), []index.EndpointInfo{remote},
			// The external path still uses Cluster policy.
			want{cluster: R, internal: dropped, external: fwd(R), ipvsIn: R, ipvsExt: R}},
		{"external Local with a local endpoint", svc(etpLocal, nodePort), []index.EndpointInfo{local, remote},
			want{cluster: LR, local: L, internal: fwd(LR), external: fwdLocal(L), ipvsIn: LR, ipvsExt: L}},
		{"external Local without a local endpoint: drop external", svc(etpLocal, nodePort), []index.EndpointInfo{remote},
			// IPVS routes external traffic to the cluster endpoints
			// (kubernetes#97081).
			want{cluster: R, internal: fwd(R), external: dropped, ipvsIn: R, ipvsExt: R}},
		{"external Local on a ClusterIP without external IPs is no policy", svc(etpLocal), []index.EndpointInfo{local, remote},
			want{cluster: LR, internal: fwd(LR), external: none, ipvsIn: LR, ipvsExt: LR}},
		{"both Local, local endpoint", svc(itpLocal, etpLocal, nodePort), []index.EndpointInfo{local, remote},
			want{cluster: LR, local: L, internal: fwdLocal(L), external: fwdLocal(L), ipvsIn: L, ipvsExt: L}},
		{"both Local, no local endpoint", svc(itpLocal, etpLocal, nodePort), []index.EndpointInfo{remote},
			want{cluster: R, internal: dropped, external: dropped, ipvsIn: R, ipvsExt: R}},
		{"Local policy, no endpoint anywhere: reject", svc(itpLocal, etpLocal, nodePort), nil,
			want{internal: rejected, external: rejected}},
		{"external Local: remote ready, local only terminating", svc(etpLocal, nodePort), []index.EndpointInfo{ep("10.244.0.5", testNode, terminating), remote},
			// Cluster takes the ready remote one; Local falls back to the
			// local serving terminating one on its own.
			want{cluster: R, local: L, internal: fwd(R), external: fwdLocal(L), ipvsIn: R, ipvsExt: L}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := expect(t, testZone, tc.svc, tc.eps)
			check(t, e, webHTTP(IPv4), tc.want)
			p := e.Find(webHTTP(IPv4))
			if got, want := p.Reachable(), Union(tc.want.cluster, tc.want.local); !got.Equal(want) {
				t.Errorf("reachable %v, want %v", got, want)
			}
		})
	}
	t.Run("no node name: nothing is local", func(t *testing.T) {
		ix := index.NewIndex("")
		ix.SetService(svc(itpLocal))
		ix.SetEndpointSlice("ns", "web-0", "web", []index.EndpointInfo{ep("10.244.0.5", "")})
		check(t, Expect(ix), webHTTP(IPv4), want{internal: dropped, external: none})
	})
}

// TestExpectTopology: hints for this node's zone (PreferSameZone,
// PreferClose) and name (PreferSameNode), and when kube-proxy ignores them.
func TestExpectTopology(t *testing.T) {
	a1, a2 := ep("10.244.1.1", "node-b", zones("zone-a")), ep("10.244.1.2", "node-c", zones("zone-a"))
	b1 := ep("10.244.2.1", "node-d", zones("zone-b"))
	all := set("10.244.1.1:8080", "10.244.1.2:8080", "10.244.2.1:8080")
	sameZone := set("10.244.1.1:8080", "10.244.1.2:8080")
	for _, tc := range []struct {
		name    string
		zone    string
		eps     []index.EndpointInfo
		cluster EndpointSet
	}{
		{"zone hints for this zone", testZone, []index.EndpointInfo{a1, a2, b1}, sameZone},
		{"zone hints, another zone's node", "zone-b", []index.EndpointInfo{a1, a2, b1}, set("10.244.2.1:8080")},
		{"no endpoint hinted for this zone: ignored", "zone-c", []index.EndpointInfo{a1, a2, b1}, all},
		{"node without zone label: ignored", "", []index.EndpointInfo{a1, a2, b1}, all},
		{"one ready endpoint without hints: ignored", testZone, []index.EndpointInfo{a1, a2, ep("10.244.2.1", "node-d")}, all},
		{"a not-ready endpoint without hints does not count", testZone, []index.EndpointInfo{a1, a2, ep("10.244.2.1", "node-d", notReady)}, sameZone},
		{"an endpoint hinted for two zones", "zone-b", []index.EndpointInfo{ep("10.244.1.1", "node-b", zones("zone-a", "zone-b")), a2, b1},
			set("10.244.1.1:8080", "10.244.2.1:8080")},
		{"node hints for this node", testZone, []index.EndpointInfo{
			ep("10.244.0.1", testNode, zones("zone-a"), nodes(testNode)), ep("10.244.1.1", "node-b", zones("zone-a"), nodes("node-b")), ep("10.244.2.1", "node-d", zones("zone-b"), nodes("node-d"))},
			set("10.244.0.1:8080")},
		{"node hints, none for this node: zone hints", testZone, []index.EndpointInfo{
			ep("10.244.1.1", "node-b", zones("zone-a"), nodes("node-b")), ep("10.244.2.1", "node-d", zones("zone-b"), nodes("node-d"))},
			set("10.244.1.1:8080")},
		{"node hints on some only: zone hints", testZone, []index.EndpointInfo{
			ep("10.244.0.1", testNode, zones("zone-a"), nodes(testNode)), ep("10.244.1.1", "node-b", zones("zone-a")), b1},
			set("10.244.0.1:8080", "10.244.1.1:8080")},
		{"node hints without zone hints, none for this node: ignored", testZone, []index.EndpointInfo{
			ep("10.244.1.1", "node-b", nodes("node-b")), ep("10.244.2.1", "node-d", nodes("node-d"))},
			set("10.244.1.1:8080", "10.244.2.1:8080")},
		{"hinted endpoints not ready: terminating fallback ignores hints", testZone, []index.EndpointInfo{
			ep("10.244.1.1", "node-b", zones("zone-b"), terminating), ep("10.244.2.1", "node-d", zones("zone-b"), terminating)},
			set("10.244.1.1:8080", "10.244.2.1:8080")},
		{"this zone's endpoint only terminating: other zone's ready ones", testZone, []index.EndpointInfo{
			ep("10.244.1.1", "node-b", zones("zone-a"), terminating), b1},
			// The only ready endpoint is hinted for zone-b: no ready one for
			// this zone, hints ignored, all ready ones used.
			set("10.244.2.1:8080")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check(t, expect(t, tc.zone, svc(), tc.eps), webHTTP(IPv4), want{cluster: tc.cluster, internal: fwd(tc.cluster), external: none, ipvsIn: tc.cluster, ipvsExt: tc.cluster})
		})
	}
	t.Run("Local policy ignores topology", func(t *testing.T) {
		e := expect(t, "zone-b", svc(etpLocal, nodePort), []index.EndpointInfo{ep("10.244.0.1", testNode, zones("zone-a")), b1})
		// Cluster: zone-b's endpoint; Local: this node's, hinted elsewhere.
		check(t, e, webHTTP(IPv4), want{cluster: set("10.244.2.1:8080"), local: set("10.244.0.1:8080"),
			internal: fwd(set("10.244.2.1:8080")), external: fwdLocal(set("10.244.0.1:8080")), ipvsIn: set("10.244.2.1:8080"), ipvsExt: set("10.244.0.1:8080")})
		if r := e.Find(webHTTP(IPv4)).Reachable(); !r.Equal(set("10.244.0.1:8080", "10.244.2.1:8080")) {
			t.Errorf("reachable %v: want both chains' endpoints", r)
		}
	})
}

// TestExpectServiceKinds: what is programmed at all, per family, and for
// which destinations.
func TestExpectServiceKinds(t *testing.T) {
	eps := []index.EndpointInfo{ep("10.244.1.1", "node-b")}
	one := set("10.244.1.1:8080")
	t.Run("not proxied", func(t *testing.T) {
		for name, s := range map[string]index.ServiceInfo{
			"headless":        svc(func(s *index.ServiceInfo) { s.ClusterIPs = nil }),
			"ExternalName":    svc(func(s *index.ServiceInfo) { s.Type = "ExternalName" }),
			"another proxy's": svc(func(s *index.ServiceInfo) { s.ServiceProxyName = true }),
		} {
			if e := expect(t, testZone, s, eps); len(e.Ports) != 0 {
				t.Errorf("%s Service: programmed %+v", name, e.Ports)
			}
		}
	})
	t.Run("session affinity does not change the set", func(t *testing.T) {
		e := expect(t, testZone, svc(func(s *index.ServiceInfo) { s.SessionAffinityClientIP = true }), eps)
		check(t, e, webHTTP(IPv4), want{cluster: one, internal: fwd(one), external: none, ipvsIn: one, ipvsExt: one})
		if !e.Find(webHTTP(IPv4)).SessionAffinity {
			t.Error("affinity not recorded")
		}
	})
	t.Run("external destinations", func(t *testing.T) {
		s := svc(func(s *index.ServiceInfo) {
			s.Type = "LoadBalancer"
			s.Ports[0].NodePort = 30080
			s.ExternalIPs = addrs("192.0.2.7", "2001:db8::7")
			s.LoadBalancerIPs = addrs("198.51.100.1", "198.51.100.2")
			s.LoadBalancerVIPs = addrs("198.51.100.1") // .2 is ipMode Proxy
		})
		e := expect(t, testZone, s, eps)
		p := e.Find(webHTTP(IPv4))
		check(t, e, webHTTP(IPv4), want{cluster: one, internal: fwd(one), external: fwd(one), ipvsIn: one, ipvsExt: one})
		if p.NodePort != 30080 || fmt.Sprint(p.ExternalIPs) != "[192.0.2.7]" || fmt.Sprint(p.LoadBalancerVIPs) != "[198.51.100.1]" || !p.ExternalChain() {
			t.Errorf("destinations: node port %d, external IPs %v, VIPs %v, external chain %v", p.NodePort, p.ExternalIPs, p.LoadBalancerVIPs, p.ExternalChain())
		}
	})
	t.Run("external IP of the other family only", func(t *testing.T) {
		s := svc(func(s *index.ServiceInfo) { s.ExternalIPs = addrs("2001:db8::7") })
		check(t, expect(t, testZone, s, eps), webHTTP(IPv4), want{cluster: one, internal: fwd(one), external: none, ipvsIn: one, ipvsExt: one})
	})
	t.Run("external IPs with no endpoints: reject", func(t *testing.T) {
		s := svc(func(s *index.ServiceInfo) { s.ExternalIPs = addrs("192.0.2.7") })
		e := expect(t, testZone, s)
		check(t, e, webHTTP(IPv4), want{internal: rejected, external: rejected})
		if e.Find(webHTTP(IPv4)).ExternalChain() {
			t.Error("external chain without endpoints")
		}
	})
}

// TestExpectFamilies: dual-stack Services, the family list against the
// ClusterIPs, and slices of each address type.
func TestExpectFamilies(t *testing.T) {
	v4, v6 := ep("10.244.1.1", "node-b"), ep("fd00:10:244::1", "node-b")
	dual := func(s *index.ServiceInfo) {
		s.ClusterIPs = addrs("10.96.0.10", "fd00:10:96::a")
		s.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	}
	t.Run("dual-stack", func(t *testing.T) {
		e := expect(t, testZone, svc(dual), []index.EndpointInfo{v4}, []index.EndpointInfo{v6})
		check(t, e, webHTTP(IPv4), want{cluster: set("10.244.1.1:8080"), internal: fwd(set("10.244.1.1:8080")), external: none,
			ipvsIn: set("10.244.1.1:8080"), ipvsExt: set("10.244.1.1:8080")})
		v6set := set("[fd00:10:244::1]:8080")
		check(t, e, webHTTP(IPv6), want{cluster: v6set, internal: fwd(v6set), external: none, ipvsIn: v6set, ipvsExt: v6set})
		if p := e.Find(webHTTP(IPv6)); p.ClusterIP != netip.MustParseAddr("fd00:10:96::a") {
			t.Errorf("IPv6 cluster IP %v", p.ClusterIP)
		}
		if n4, n6 := len(e.Family(IPv4)), len(e.Family(IPv6)); n4 != 1 || n6 != 1 {
			t.Errorf("ports per family: %d, %d", n4, n6)
		}
	})
	t.Run("dual-stack, IPv6 endpoints missing: IPv6 rejects", func(t *testing.T) {
		e := expect(t, testZone, svc(dual), []index.EndpointInfo{v4})
		check(t, e, webHTTP(IPv6), want{internal: rejected, external: none})
	})
	t.Run("IPv6 first", func(t *testing.T) {
		e := expect(t, testZone, svc(func(s *index.ServiceInfo) {
			s.ClusterIPs = addrs("fd00:10:96::a", "10.96.0.10")
			s.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
		}), []index.EndpointInfo{v4, v6})
		if e.Find(webHTTP(IPv4)).ClusterIP != netip.MustParseAddr("10.96.0.10") || e.Find(webHTTP(IPv6)).ClusterIP != netip.MustParseAddr("fd00:10:96::a") {
			t.Errorf("cluster IPs by family: %+v", e.Ports)
		}
	})
	t.Run("families listed beyond the ClusterIPs", func(t *testing.T) {
		// GetClusterIPByFamily: a family without a ClusterIP at its index
		// is not programmed.
		e := expect(t, testZone, svc(func(s *index.ServiceInfo) {
			s.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
		}), []index.EndpointInfo{v4, v6})
		if e.Find(webHTTP(IPv6)) != nil || e.Find(webHTTP(IPv4)) == nil {
			t.Errorf("ports %+v: want IPv4 only", e.Ports)
		}
	})
	t.Run("object from before dual-stack", func(t *testing.T) {
		e := expect(t, testZone, svc(func(s *index.ServiceInfo) { s.IPFamilies = nil }), []index.EndpointInfo{v4})
		if e.Find(webHTTP(IPv4)) == nil || len(e.Ports) != 1 {
			t.Errorf("ports %+v", e.Ports)
		}
	})
}

// TestExpectPortResolution: endpoints are found by the slice's port name and
// protocol, their number is the slice's.
func TestExpectPortResolution(t *testing.T) {
	multi := func(s *index.ServiceInfo) {
		s.Ports = []index.ServicePortInfo{{Name: "http", Port: 80, Protocol: "tcp"}, {Name: "metrics", Port: 9090, Protocol: "tcp"}, {Name: "dns", Port: 53, Protocol: "udp"}}
	}
	slicePorts := ports(index.EndpointPort{Name: "metrics", Port: 19090, Protocol: "tcp"}, index.EndpointPort{Name: "http", Port: 8080, Protocol: "tcp"},
		index.EndpointPort{Name: "dns", Port: 5353, Protocol: "tcp"})
	e := expect(t, testZone, svc(multi), []index.EndpointInfo{ep("10.244.1.1", "node-b", slicePorts), ep("10.244.1.2", "node-b", slicePorts)})
	id := func(port, proto string) ServicePortID {
		return ServicePortID{Family: IPv4, Namespace: "ns", Name: "web", Port: port, Protocol: proto}
	}
	s := set("10.244.1.1:19090", "10.244.1.2:19090")
	check(t, e, id("metrics", "tcp"), want{cluster: s, internal: fwd(s), external: none, ipvsIn: s, ipvsExt: s})
	s = set("10.244.1.1:8080", "10.244.1.2:8080")
	check(t, e, id("http", "tcp"), want{cluster: s, internal: fwd(s), external: none, ipvsIn: s, ipvsExt: s})
	// The slice's "dns" is TCP, the Service's UDP: no endpoint.
	check(t, e, id("dns", "udp"), want{internal: rejected, external: none})

	unnamed := func(s *index.ServiceInfo) { s.Ports = []index.ServicePortInfo{{Port: 5353, Protocol: "udp"}} }
	e = expect(t, testZone, svc(unnamed), []index.EndpointInfo{ep("10.244.1.1", "node-b", ports(index.EndpointPort{Port: 53, Protocol: "udp"}))})
	s = set("10.244.1.1:53")
	check(t, e, id("", "udp"), want{cluster: s, internal: fwd(s), external: none, ipvsIn: s, ipvsExt: s})
	if l := e.Find(id("", "udp")).PortLabel(); l != "5353" {
		t.Errorf("unnamed port's label %q, want its number", l)
	}

	// kube-proxy ignores a slice port with a nil name or port 0.
	for name, p := range map[string]index.EndpointPort{
		"nil name": {Port: 53, Protocol: "udp", NilName: true},
		"port 0":   {Protocol: "udp"},
	} {
		e = expect(t, testZone, svc(unnamed), []index.EndpointInfo{ep("10.244.1.1", "node-b", ports(p))})
		if got := e.Find(id("", "udp")).Internal(); got.Verdict != Reject {
			t.Errorf("%s: internal path %+v, want reject", name, got)
		}
	}
}

// TestExpectEndpointIdentity: duplicates across slices, and the addresses
// kube-proxy never reads.
func TestExpectEndpointIdentity(t *testing.T) {
	t.Run("a terminating duplicate does not replace a running one", func(t *testing.T) {
		e := expect(t, testZone, svc(itpLocal),
			[]index.EndpointInfo{ep("10.244.0.5", testNode)},
			[]index.EndpointInfo{ep("10.244.0.5", "node-b", terminating)})
		// Whatever order the slices are read in, the running one (local) wins.
		check(t, e, webHTTP(IPv4), want{local: set("10.244.0.5:8080"), internal: fwdLocal(set("10.244.0.5:8080")), external: none, ipvsIn: set("10.244.0.5:8080")})
	})
	t.Run("not proxied addresses", func(t *testing.T) {
		e := expect(t, testZone, svc(), []index.EndpointInfo{ep("10.244.1.1", "node-b"), ep("10.244.1.2", "node-b", func(e *index.EndpointInfo) { e.NotProxied = true })})
		s := set("10.244.1.1:8080")
		check(t, e, webHTTP(IPv4), want{cluster: s, internal: fwd(s), external: none, ipvsIn: s, ipvsExt: s})
	})
}

// TestExpectLargeService: a Service with 10,000 endpoints, plus duplicates.
func TestExpectLargeService(t *testing.T) {
	var eps []index.EndpointInfo
	for i := range 10000 {
		eps = append(eps, ep(fmt.Sprintf("10.%d.%d.%d", 64+i/65536, (i/256)%256, i%256), "node-b"))
	}
	e := expect(t, testZone, svc(), eps, eps[:100])
	p := e.Find(webHTTP(IPv4))
	if len(p.Cluster) != 10000 || !strings.HasPrefix(p.Cluster[0].String(), "10.64.0.0:") {
		t.Fatalf("%d cluster endpoints, first %v", len(p.Cluster), p.Cluster[0])
	}
	for i := 1; i < len(p.Cluster); i++ {
		if p.Cluster[i-1].Compare(p.Cluster[i]) >= 0 {
			t.Fatalf("set not sorted or not distinct at %d: %v %v", i, p.Cluster[i-1], p.Cluster[i])
		}
	}
}

// TestExpectIntoReuses: once warm, recomputing the expectation allocates a
// few buffers per round, not per Service.
func TestExpectIntoReuses(t *testing.T) {
	allocs := func(n int) float64 {
		ix := index.NewIndex(testNode)
		for i := range n {
			ix.SetService(svc(func(s *index.ServiceInfo) {
				s.Name = fmt.Sprintf("svc-%04d", i)
				s.ClusterIPs = addrs(fmt.Sprintf("10.96.%d.%d", i/256, i%256))
			}))
			ix.SetEndpointSlice("ns", fmt.Sprintf("svc-%04d-0", i), fmt.Sprintf("svc-%04d", i),
				[]index.EndpointInfo{ep(fmt.Sprintf("10.244.%d.%d", i/256, i%256), "node-b"), ep(fmt.Sprintf("10.245.%d.%d", i/256, i%256), "node-b")})
		}
		var e Expectation
		ExpectInto(&e, ix)
		a := testing.AllocsPerRun(10, func() { ExpectInto(&e, ix) })
		if len(e.Ports) != n || e.Ports[0].ID.Name != "svc-0000" || len(e.Ports[n-1].Cluster) != 2 {
			t.Fatalf("%d ports, first %v", len(e.Ports), e.Ports[0].ID)
		}
		return a
	}
	small, large := allocs(100), allocs(2000)
	if large > small+8 {
		t.Errorf("ExpectInto allocates %v times for 100 services, %v for 2,000", small, large)
	}
}
