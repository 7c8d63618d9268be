package index

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/netinspect/netinspect/kubeproxy"
)

// TestEachProxyServiceIsWhatKubeProxyReads: the Service fields, and each
// slice's endpoints without those kube-proxy does not read, with only the
// ports it reads.
func TestEachProxyServiceIsWhatKubeProxyReads(t *testing.T) {
	ix := NewIndex("node-a")
	ix.SetNodeZone("zone-a")
	ix.SetService(ServiceInfo{Namespace: "ns", Name: "web", Type: "NodePort", ClusterIPs: addrs("10.96.0.1", "fd00::1"),
		IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}, ExternalIPs: addrs("192.0.2.1"),
		LoadBalancerIPs: addrs("192.0.2.2", "192.0.2.3"), LoadBalancerVIPs: addrs("192.0.2.2"),
		Ports:                []ServicePortInfo{{Name: "http", Port: 80, Protocol: "tcp", NodePort: 30080}},
		InternalTrafficLocal: true, SessionAffinityClientIP: true})
	ports := []EndpointPort{{Name: "http", Port: 8080, Protocol: "tcp"}, {Port: 9, Protocol: "tcp", NilName: true}, {Name: "zero", Protocol: "tcp"}}
	other := []EndpointPort{{Name: "http", Port: 8081, Protocol: "tcp"}}
	ix.SetEndpointSlice("ns", "web-1", "web", []EndpointInfo{
		{IP: netip.MustParseAddr("10.244.0.1"), Ready: true, Serving: true, Node: "node-a", Hints: &EndpointHints{ForZones: []string{"zone-a"}, ForNodes: []string{"node-a"}}, Ports: ports},
		{IP: netip.MustParseAddr("10.244.0.2"), Serving: true, Terminating: true, Ports: ports},
		{IP: netip.MustParseAddr("10.244.0.3"), Ready: true, NotProxied: true, Ports: ports},
		{IP: netip.MustParseAddr("10.244.0.4"), Ready: true, Ports: other},
		{IP: netip.MustParseAddr("10.244.0.5"), Ready: true},
	})
	n := 0
	ix.EachProxyService(func(s *kubeproxy.Service, slices []kubeproxy.EndpointSlice) {
		n++
		got := fmt.Sprintf("%s/%s %s %v %v %v %v %+v itp=%v etp=%v affinity=%v", s.Namespace, s.Name, s.Type, s.ClusterIPs, s.IPFamilies,
			s.ExternalIPs, s.LoadBalancerVIPs, s.Ports, s.InternalTrafficLocal, s.ExternalTrafficLocal, s.SessionAffinity)
		want := "ns/web NodePort [10.96.0.1 fd00::1] [IPv4 IPv6] [192.0.2.1] [192.0.2.2] [{Name:http Port:80 NodePort:30080 Protocol:tcp}] itp=true etp=false affinity=true"
		if got != want {
			t.Errorf("service\n got %s\nwant %s", got, want)
		}
		if len(slices) != 2 {
			t.Fatalf("%d slices, want 2 (one per port list with a usable port): %+v", len(slices), slices)
		}
		if got := fmt.Sprintf("%+v", slices[0]); got != "{Ports:[{Name:http Port:8080 Protocol:tcp}] Endpoints:["+
			"{Addr:10.244.0.1 Ready:true Serving:true Terminating:false Node:node-a ZoneHints:[zone-a] NodeHints:[node-a]} "+
			"{Addr:10.244.0.2 Ready:false Serving:true Terminating:true Node: ZoneHints:[] NodeHints:[]}]}" {
			t.Errorf("first slice %s", got)
		}
		if got := fmt.Sprintf("%v %v", slices[1].Ports, slices[1].Endpoints[0].Addr); got != "[{http 8081 tcp}] 10.244.0.4" {
			t.Errorf("second slice %s", got)
		}
	})
	if n != 1 {
		t.Errorf("%d services", n)
	}
	var src kubeproxy.Source = ix
	if src.Node() != "node-a" || src.NodeZone() != "zone-a" {
		t.Errorf("node %q zone %q", src.Node(), src.NodeZone())
	}
	var nilIndex *Index
	nilIndex.EachProxyService(func(*kubeproxy.Service, []kubeproxy.EndpointSlice) { t.Error("nil index has services") })
}
