package kubeproxy_test

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/netinspect/netinspect/kube/index"

	. "github.com/netinspect/netinspect/kubeproxy"
)

var dnsPorts = []index.EndpointPort{{Name: "dns", Port: 5353, Protocol: "udp"}, {Name: "dns-tcp", Port: 5353, Protocol: "tcp"}}

// dnsSvc is a Service "kube-system/kube-dns" at 10.96.0.10 with ports dns
// 53/udp and dns-tcp 53/tcp, both to target port 5353; opts change it.
func dnsSvc(opts ...func(*index.ServiceInfo)) index.ServiceInfo {
	s := index.ServiceInfo{Namespace: "kube-system", Name: "kube-dns", Type: "ClusterIP", ClusterIPs: addrs("10.96.0.10"),
		IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol},
		Ports:      []index.ServicePortInfo{{Name: "dns", Port: 53, Protocol: "udp"}, {Name: "dns-tcp", Port: 53, Protocol: "tcp"}}}
	for _, o := range opts {
		o(&s)
	}
	return s
}

func dnsEP(ip string, opts ...func(*index.EndpointInfo)) index.EndpointInfo {
	return ep(ip, "node-b", append([]func(*index.EndpointInfo){ports(dnsPorts...)}, opts...)...)
}

func cleanup(t *testing.T, services []index.ServiceInfo, slices map[string][]index.EndpointInfo) *ConntrackCleanup {
	t.Helper()
	ix := index.NewIndex(testNode)
	for _, s := range services {
		ix.SetService(s)
	}
	n := 0
	for svc, eps := range slices {
		n++
		ix.SetEndpointSlice("kube-system", fmt.Sprintf("%s-%d", svc, n), svc, eps)
	}
	return BuildConntrackCleanup(ix)
}

// TestConntrackCleanupMirrorsCleanStaleEntries checks, entry by entry, the
// cases of kube-proxy v1.37.2's CleanStaleEntries.
func TestConntrackCleanupMirrorsCleanStaleEntries(t *testing.T) {
	dnsID := ServicePortID{Family: IPv4, Namespace: "kube-system", Name: "kube-dns", Port: "dns", Protocol: "udp"}
	type entry struct {
		name              string
		origDst, replySrc string
		stale             bool
	}
	for _, tc := range []struct {
		name     string
		services []index.ServiceInfo
		eps      []index.EndpointInfo
		entries  []entry
	}{
		{
			name:     "serving endpoints: ready, serving while terminating, serving but not ready",
			services: []index.ServiceInfo{dnsSvc()},
			eps: []index.EndpointInfo{dnsEP("10.244.1.1"), dnsEP("10.244.1.2", terminating), dnsEP("10.244.1.3", notReady),
				dnsEP("10.244.1.4", terminatingNotServing), dnsEP("10.244.1.5", func(e *index.EndpointInfo) { e.Serving, e.Ready = false, false })},
			entries: []entry{
				{"to a ready endpoint", "10.96.0.10:53", "10.244.1.1:5353", false},
				{"to a terminating endpoint that still serves", "10.96.0.10:53", "10.244.1.2:5353", false},
				{"to an endpoint serving but not ready (IsServing ignores ready)", "10.96.0.10:53", "10.244.1.3:5353", false},
				{"to a terminating endpoint that no longer serves", "10.96.0.10:53", "10.244.1.4:5353", true},
				{"to an endpoint neither ready nor serving", "10.96.0.10:53", "10.244.1.5:5353", true},
				{"to an address no endpoint has", "10.96.0.10:53", "10.244.9.9:5353", true},
				{"to a serving address on another port", "10.96.0.10:53", "10.244.1.1:53", true},
				{"never DNATed (reply from the ClusterIP itself)", "10.96.0.10:53", "10.96.0.10:53", true},
				{"to another port of the ClusterIP", "10.96.0.10:54", "10.244.9.9:5353", false},
				{"to an address that is no frontend", "10.96.0.11:53", "10.244.9.9:5353", false},
			},
		},
		{
			name:     "a Service without endpoints: every entry to its frontends",
			services: []index.ServiceInfo{dnsSvc(nodePort)},
			entries: []entry{
				{"to the ClusterIP", "10.96.0.10:53", "10.244.1.1:5353", true},
				{"to the node port: skipped while the Service has no serving endpoint", "192.168.1.10:30080", "10.244.1.1:5353", false},
			},
		},
		{
			name:     "node ports match the port alone",
			services: []index.ServiceInfo{dnsSvc(nodePort)},
			eps:      []index.EndpointInfo{dnsEP("10.244.1.1")},
			entries: []entry{
				{"to a node IP, DNATed to a serving endpoint", "192.168.1.10:30080", "10.244.1.1:5353", false},
				{"to a node IP, DNATed elsewhere", "192.168.1.10:30080", "10.244.1.7:5353", true},
				{"to any address on the node port", "203.0.113.9:30080", "203.0.113.9:30080", true},
				{"to the TCP port's node port (not UDP)", "192.168.1.10:30081", "10.244.1.7:5353", false},
			},
		},
		{
			name: "external IPs and load-balancer VIPs are frontends",
			services: []index.ServiceInfo{dnsSvc(func(s *index.ServiceInfo) {
				s.Type = "LoadBalancer"
				s.ExternalIPs = addrs("198.51.100.7")
				s.LoadBalancerIPs = addrs("203.0.113.1", "203.0.113.2")
				s.LoadBalancerVIPs = addrs("203.0.113.1") // .2 is in ipMode Proxy
			})},
			eps: []index.EndpointInfo{dnsEP("10.244.1.1")},
			entries: []entry{
				{"external IP, to a serving endpoint", "198.51.100.7:53", "10.244.1.1:5353", false},
				{"external IP, elsewhere", "198.51.100.7:53", "10.244.1.8:5353", true},
				{"VIP, elsewhere", "203.0.113.1:53", "10.244.1.8:5353", true},
				{"load-balancer IP in proxy mode: no frontend", "203.0.113.2:53", "10.244.1.8:5353", false},
			},
		},
		{
			name: "Services kube-proxy does not serve have no frontends",
			services: []index.ServiceInfo{
				dnsSvc(func(s *index.ServiceInfo) { s.ServiceProxyName = true }),
				dnsSvc(func(s *index.ServiceInfo) { s.Name, s.ClusterIPs, s.IPFamilies = "headless", nil, nil }),
			},
			entries: []entry{{"to the ClusterIP of a Service with service-proxy-name", "10.96.0.10:53", "10.244.1.1:5353", false}},
		},
		{
			name: "IPv6",
			services: []index.ServiceInfo{dnsSvc(func(s *index.ServiceInfo) {
				s.ClusterIPs = addrs("10.96.0.10", "fd00:10:96::a")
				s.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
			})},
			eps: []index.EndpointInfo{dnsEP("fd00:10:244:1::1"), dnsEP("10.244.1.1")},
			entries: []entry{
				{"to a serving endpoint", "[fd00:10:96::a]:53", "[fd00:10:244:1::1]:5353", false},
				{"elsewhere", "[fd00:10:96::a]:53", "[fd00:10:244:1::2]:5353", true},
				{"IPv4 still serving", "10.96.0.10:53", "10.244.1.1:5353", false},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			slices := map[string][]index.EndpointInfo{}
			if tc.eps != nil {
				slices["kube-dns"] = tc.eps
			}
			c := cleanup(t, tc.services, slices)
			for _, e := range tc.entries {
				target, stale := c.Stale(netip.MustParseAddrPort(e.origDst), netip.MustParseAddrPort(e.replySrc))
				if stale != e.stale {
					t.Errorf("%s: %s -> %s stale = %v, want %v", e.name, e.origDst, e.replySrc, stale, e.stale)
					continue
				}
				if !stale {
					continue
				}
				id := c.Targets[target].ID
				want := dnsID
				if netip.MustParseAddrPort(e.origDst).Addr().Is6() {
					want.Family = IPv6
				}
				if id != want {
					t.Errorf("%s: stale for %v, want %v", e.name, id, want)
				}
			}
		})
	}
}

// TestConntrackCleanupFallsThroughToNodePorts: kube-proxy checks an entry
// whose frontend's endpoints serve it against the node ports too, so a
// service port numbered like another Service's node port can make it
// stale.
func TestConntrackCleanupFallsThroughToNodePorts(t *testing.T) {
	a := dnsSvc(func(s *index.ServiceInfo) {
		s.Ports = []index.ServicePortInfo{{Name: "dns", Port: 30080, Protocol: "udp"}}
	})
	b := dnsSvc(nodePort, func(s *index.ServiceInfo) { s.Name, s.ClusterIPs = "other", addrs("10.96.0.20") })
	c := cleanup(t, []index.ServiceInfo{a, b}, map[string][]index.EndpointInfo{
		"kube-dns": {dnsEP("10.244.1.1")}, "other": {dnsEP("10.244.1.2")},
	})
	target, stale := c.Stale(netip.MustParseAddrPort("10.96.0.10:30080"), netip.MustParseAddrPort("10.244.1.1:5353"))
	if !stale || c.Targets[target].ID.Name != "other" {
		t.Fatalf("stale = %v for %+v, want stale for kube-system/other's node port", stale, c.Targets[target].ID)
	}
}

// TestConntrackCleanupRebuild: a rebuild forgets what was removed.
func TestConntrackCleanupRebuild(t *testing.T) {
	ix := index.NewIndex(testNode)
	ix.SetService(dnsSvc())
	ix.SetEndpointSlice("kube-system", "kube-dns-1", "kube-dns", []index.EndpointInfo{dnsEP("10.244.1.1")})
	c := BuildConntrackCleanup(ix)
	dst, be := netip.MustParseAddrPort("10.96.0.10:53"), netip.MustParseAddrPort("10.244.1.1:5353")
	if _, stale := c.Stale(dst, be); stale {
		t.Fatal("stale before the endpoint left")
	}
	ix.SetEndpointSlice("kube-system", "kube-dns-1", "kube-dns", nil)
	c.Rebuild(ix)
	if _, stale := c.Stale(dst, be); !stale {
		t.Fatal("not stale after the endpoint left")
	}
	ix.DeleteService("kube-system", "kube-dns")
	c.Rebuild(ix)
	if _, stale := c.Stale(dst, be); stale || len(c.Targets) != 0 {
		t.Fatalf("stale after the Service was deleted (targets %v)", c.Targets)
	}
}

func TestConntrackCleanupStaleDoesNotAllocate(t *testing.T) {
	c := cleanup(t, []index.ServiceInfo{dnsSvc(nodePort)}, map[string][]index.EndpointInfo{"kube-dns": {dnsEP("10.244.1.1")}})
	dst, be := netip.MustParseAddrPort("10.96.0.10:53"), netip.MustParseAddrPort("10.244.1.9:5353")
	np := netip.MustParseAddrPort("192.168.1.10:30080")
	if n := testing.AllocsPerRun(100, func() {
		c.Stale(dst, be)
		c.Stale(np, be)
	}); n != 0 {
		t.Errorf("Stale allocates %v times, want 0", n)
	}
}
