package index

import (
	"net/netip"
	"reflect"
	"testing"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestNilIndexFindsNothing(t *testing.T) {
	var ix *Index
	if _, ok := ix.PodByIP(netip.MustParseAddr("10.0.0.1")); ok {
		t.Error("nil index found a pod")
	}
	if _, ok := ix.EndpointPodByIP(netip.MustParseAddr("10.0.0.1")); ok {
		t.Error("nil index found an endpoint")
	}
	if _, ok := ix.ServiceByAddrPort("tcp", netip.MustParseAddr("10.0.0.1"), 80); ok {
		t.Error("nil index found a service")
	}
	if _, ok := ix.ServiceByNodePort("tcp", 30000); ok {
		t.Error("nil index found a node port")
	}
	if ix.Services() != nil || ix.Pods() != nil {
		t.Error("nil index listed objects")
	}
}

func TestIndexPods(t *testing.T) {
	ix := NewIndex("node-a")
	ix.SetPod(PodInfo{Namespace: "ns", Name: "web", UID: "u1", Node: "node-a", IPs: addrs("10.244.0.5", "fd00::5")})
	ix.SetPod(PodInfo{Namespace: "ns", Name: "other", UID: "u2", Node: "node-b", IPs: addrs("10.244.1.5")})
	ix.SetPod(PodInfo{Namespace: "kube-system", Name: "hostnet", UID: "u3", Node: "node-a", HostNetwork: true, IPs: addrs("192.168.0.10")})

	want := PodRef{Namespace: "ns", Name: "web", UID: "u1"}
	for _, ip := range []string{"10.244.0.5", "fd00::5", "::ffff:10.244.0.5"} {
		if got, ok := ix.PodByIP(netip.MustParseAddr(ip)); !ok || got != want {
			t.Errorf("PodByIP(%s) = %v, %v; want %v", ip, got, ok, want)
		}
	}
	if _, ok := ix.PodByIP(netip.MustParseAddr("10.244.1.5")); ok {
		t.Error("pod of another node indexed")
	}
	if _, ok := ix.PodByIP(netip.MustParseAddr("192.168.0.10")); ok {
		t.Error("hostNetwork pod indexed by IP")
	}
	if n := len(ix.Pods()); n != 2 {
		t.Errorf("Pods() has %d pods, want 2 (web, hostnet)", n)
	}

	// IP change: the old address goes, the new one resolves.
	ix.SetPod(PodInfo{Namespace: "ns", Name: "web", UID: "u1", Node: "node-a", IPs: addrs("10.244.0.6")})
	if _, ok := ix.PodByIP(netip.MustParseAddr("10.244.0.5")); ok {
		t.Error("old IP still resolves after update")
	}
	if _, ok := ix.PodByIP(netip.MustParseAddr("10.244.0.6")); !ok {
		t.Error("new IP does not resolve")
	}
	// A new pod takes the address before the old one's delete arrives.
	ix.SetPod(PodInfo{Namespace: "ns", Name: "web2", UID: "u4", Node: "node-a", IPs: addrs("10.244.0.6")})
	ix.DeletePod("ns", "web")
	if got, ok := ix.PodByIP(netip.MustParseAddr("10.244.0.6")); !ok || got.Name != "web2" {
		t.Errorf("PodByIP after reuse = %v, %v; want web2", got, ok)
	}
}

func TestIndexServices(t *testing.T) {
	ix := NewIndex("node-a")
	ix.SetService(ServiceInfo{
		Namespace: "ns", Name: "web", Type: "NodePort",
		ClusterIPs:      addrs("10.96.0.10", "fd00:10:96::10"),
		ExternalIPs:     addrs("203.0.113.7"),
		LoadBalancerIPs: addrs("198.51.100.9"),
		Ports: []ServicePortInfo{
			{Name: "http", Port: 80, Protocol: "tcp", NodePort: 30080},
			{Port: 53, Protocol: "udp"},
		},
	})
	for _, tc := range []struct {
		proto string
		ip    string
		port  uint16
		want  ServicePortRef
		ok    bool
	}{
		{"tcp", "10.96.0.10", 80, ServicePortRef{"ns", "web", "http"}, true},
		{"tcp", "fd00:10:96::10", 80, ServicePortRef{"ns", "web", "http"}, true},
		{"tcp", "203.0.113.7", 80, ServicePortRef{"ns", "web", "http"}, true},
		{"tcp", "198.51.100.9", 80, ServicePortRef{"ns", "web", "http"}, true},
		{"udp", "10.96.0.10", 53, ServicePortRef{"ns", "web", "53"}, true},
		{"udp", "10.96.0.10", 80, ServicePortRef{}, false},
		{"tcp", "10.96.0.11", 80, ServicePortRef{}, false},
	} {
		got, ok := ix.ServiceByAddrPort(tc.proto, netip.MustParseAddr(tc.ip), tc.port)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ServiceByAddrPort(%s, %s, %d) = %v, %v; want %v, %v", tc.proto, tc.ip, tc.port, got, ok, tc.want, tc.ok)
		}
	}
	if got, ok := ix.ServiceByNodePort("tcp", 30080); !ok || got != (ServicePortRef{"ns", "web", "http"}) {
		t.Errorf("ServiceByNodePort = %v, %v", got, ok)
	}

	ix.SetEndpointSlice("ns", "web-abc", "web", []EndpointInfo{
		{IP: netip.MustParseAddr("10.244.1.9"), Ready: true, Node: "node-b", Pod: PodRef{Namespace: "ns", Name: "web-1", UID: "p1"}, Ports: []EndpointPort{{Name: "http", Port: 8080, Protocol: "tcp"}}},
		{IP: netip.MustParseAddr("10.244.1.10"), Ready: false, Pod: PodRef{Namespace: "ns", Name: "web-2"}, Ports: []EndpointPort{{Name: "http", Port: 8080, Protocol: "tcp"}}},
	})
	if got, ok := ix.EndpointPodByIP(netip.MustParseAddr("10.244.1.9")); !ok || got.Name != "web-1" {
		t.Errorf("EndpointPodByIP = %v, %v", got, ok)
	}
	svcs := ix.Services()
	if len(svcs) != 1 || svcs[0].ReadyEndpoints != 1 || svcs[0].Ports[0].ReadyEndpoints != 1 || svcs[0].Ports[1].ReadyEndpoints != 0 {
		t.Errorf("Services() = %+v", svcs)
	}
	if eps := ix.Endpoints("ns", "web"); len(eps) != 2 {
		t.Errorf("Endpoints = %v", eps)
	}

	ix.DeleteEndpointSlice("ns", "web-abc")
	if _, ok := ix.EndpointPodByIP(netip.MustParseAddr("10.244.1.9")); ok {
		t.Error("endpoint still resolves after slice delete")
	}
	ix.DeleteService("ns", "web")
	if _, ok := ix.ServiceByAddrPort("tcp", netip.MustParseAddr("10.96.0.10"), 80); ok {
		t.Error("service still resolves after delete")
	}
	if _, ok := ix.ServiceByNodePort("tcp", 30080); ok {
		t.Error("node port still resolves after delete")
	}
	if !reflect.DeepEqual(ix.Services(), []ServiceInfo{}) {
		t.Errorf("Services() after delete = %v", ix.Services())
	}
}

func TestLookupsDoNotAllocate(t *testing.T) {
	ix := NewIndex("n")
	ix.SetPod(PodInfo{Namespace: "ns", Name: "p", UID: "u", Node: "n", IPs: addrs("10.244.0.5")})
	ix.SetService(ServiceInfo{Namespace: "ns", Name: "s", ClusterIPs: addrs("10.96.0.10"), Ports: []ServicePortInfo{{Name: "http", Port: 80, Protocol: "tcp", NodePort: 30080}}})
	ix.SetEndpointSlice("ns", "s-1", "s", []EndpointInfo{{IP: netip.MustParseAddr("10.244.0.5"), Ready: true, Pod: PodRef{Namespace: "ns", Name: "p"}}})
	pod, svc := netip.MustParseAddr("10.244.0.5"), netip.MustParseAddr("10.96.0.10")
	allocs := testing.AllocsPerRun(1000, func() {
		ix.PodByIP(pod)
		ix.EndpointPodByIP(pod)
		ix.ServiceByAddrPort("tcp", svc, 80)
		ix.ServiceByNodePort("tcp", 30080)
	})
	if allocs != 0 {
		t.Errorf("lookups allocate %v times per run, want 0", allocs)
	}
	batchAllocs := testing.AllocsPerRun(1000, func() {
		ix.Batch(func(l Lookup) {
			if _, ok := l.PodByIP(pod); !ok {
				t.Error("batch PodByIP missed")
			}
			l.EndpointPodByIP(pod)
			if _, ok := l.ServiceByAddrPort("tcp", svc, 80); !ok {
				t.Error("batch ServiceByAddrPort missed")
			}
			l.ServiceByNodePort("tcp", 30080)
		})
	})
	if batchAllocs != 0 {
		t.Errorf("batch lookups allocate %v times per run, want 0", batchAllocs)
	}
	var nilIndex *Index
	nilIndex.Batch(func(l Lookup) {
		if _, ok := l.PodByIP(pod); ok {
			t.Error("nil index batch found a pod")
		}
	})
}

func TestEachServiceGivesEverySliceOfAService(t *testing.T) {
	ix := NewIndex("n")
	ix.SetService(ServiceInfo{Namespace: "ns", Name: "a", ClusterIPs: addrs("10.96.0.1"), Ports: []ServicePortInfo{{Name: "http", Port: 80, Protocol: "tcp"}}})
	ix.SetService(ServiceInfo{Namespace: "ns", Name: "b", ClusterIPs: addrs("10.96.0.2")})
	ix.SetEndpointSlice("ns", "a-v4", "a", []EndpointInfo{{IP: netip.MustParseAddr("10.244.0.1"), Ready: true}})
	ix.SetEndpointSlice("ns", "a-v6", "a", []EndpointInfo{{IP: netip.MustParseAddr("fd00::1"), Ready: true}, {IP: netip.MustParseAddr("fd00::2")}})
	ix.SetEndpointSlice("ns", "orphan", "gone", []EndpointInfo{{IP: netip.MustParseAddr("10.244.0.9")}})
	got := map[string]int{}
	ix.EachService(func(s *ServiceInfo, slices [][]EndpointInfo) {
		n := 0
		for _, sl := range slices {
			n += len(sl)
		}
		got[s.Name] = n
	})
	if !reflect.DeepEqual(got, map[string]int{"a": 3, "b": 0}) {
		t.Errorf("endpoints per service = %v", got)
	}
	var nilIndex *Index
	nilIndex.EachService(func(*ServiceInfo, [][]EndpointInfo) { t.Error("nil index has services") })
	if nilIndex.NodeZone() != "" {
		t.Error("nil index has a zone")
	}
	ix.SetNodeZone("zone-a")
	if ix.NodeZone() != "zone-a" {
		t.Errorf("NodeZone() = %q", ix.NodeZone())
	}
}
