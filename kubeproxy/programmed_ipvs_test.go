package kubeproxy_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/netinspect/netinspect/kube/index"

	. "github.com/netinspect/netinspect/kubeproxy"
)

// ipvsNodeAddr is the node address of the IPVS tests' node-port virtual
// servers.
var ipvsNodeAddr = netip.MustParseAddr("192.168.1.10")

// ipvsProgrammed is the listing of a kube-proxy that programmed e for
// family f, written from pkg/proxy/ipvs/proxier.go's syncProxyRules and
// syncEndpoint (v1.37.2): a virtual server per ClusterIP, external IP,
// load-balancer VIP and node address x node port, with the cluster
// endpoints, or for a Local policy the local ones unless there are none.
func ipvsProgrammed(e *Expectation, f IPFamily) *IPVSListing {
	l := &IPVSListing{VirtualServers: map[IPVSVirtualServer]EndpointSet{}, NodeAddrs: map[netip.Addr]bool{ipvsNodeAddr: true}}
	for _, p := range e.Family(f) {
		pick := func(local bool) EndpointSet {
			if local && len(p.Local) > 0 {
				return p.Local
			}
			return p.Cluster
		}
		vs := func(a netip.Addr, port uint16) IPVSVirtualServer {
			return IPVSVirtualServer{Protocol: p.ID.Protocol, Addr: a, Port: port}
		}
		l.VirtualServers[vs(p.ClusterIP, p.Port)] = pick(p.InternalLocal)
		for _, a := range append(append([]netip.Addr(nil), p.ExternalIPs...), p.LoadBalancerVIPs...) {
			l.VirtualServers[vs(a, p.Port)] = pick(p.ExternalLocal)
		}
		if p.NodePort != 0 {
			l.VirtualServers[vs(ipvsNodeAddr, p.NodePort)] = pick(p.ExternalLocal)
		}
	}
	return l
}

// TestCompareIPVS: each kind of drift is told from the virtual servers, a
// table programmed as kube-proxy does is in sync, and a stale virtual
// server keeps the name of the service port it was made for.
func TestCompareIPVS(t *testing.T) {
	ix := index.NewIndex(testNode)
	ix.SetService(svc(func(s *index.ServiceInfo) { nodePort(s); s.ExternalIPs = addrs("192.0.2.10") }))
	ix.SetEndpointSlice("ns", "web-0", "web", []index.EndpointInfo{ep("10.244.1.1", "node-b"), ep("10.244.1.2", "node-b")})
	ix.SetService(svc(func(s *index.ServiceInfo) { s.Name, s.ClusterIPs = "empty", addrs("10.96.0.11") }))
	ix.SetService(svc(func(s *index.ServiceInfo) {
		s.Name, s.ClusterIPs, s.ExternalTrafficLocal = "etp", addrs("10.96.0.13"), true
		nodePort(s)
		s.Ports[0].NodePort = 30082
	}))
	ix.SetEndpointSlice("ns", "etp-0", "etp", []index.EndpointInfo{ep("10.244.0.4", testNode), ep("10.244.1.4", "node-b")})
	e := Expect(ix)
	vs := func(a string, port uint16) IPVSVirtualServer {
		return IPVSVirtualServer{Protocol: "tcp", Addr: netip.MustParseAddr(a), Port: port}
	}

	for _, tc := range []struct {
		name   string
		modify func(l *IPVSListing)
		want   []Mismatch
		ports  int
	}{
		{"as programmed", func(*IPVSListing) {}, nil, 3},
		{"ClusterIP virtual server missing", func(l *IPVSListing) { delete(l.VirtualServers, vs("10.96.0.10", 80)) },
			[]Mismatch{{Key: key("web"), State: Missing}}, 3},
		{"a real server missing", func(l *IPVSListing) { l.VirtualServers[vs("10.96.0.10", 80)] = set("10.244.1.1:8080") },
			[]Mismatch{{Key: key("web"), State: EndpointsDiffer}}, 3},
		{"a real server left for the port without endpoints", func(l *IPVSListing) {
			l.VirtualServers[vs("10.96.0.11", 80)] = set("10.244.1.9:8080")
		}, []Mismatch{{Key: key("empty"), State: EndpointsDiffer}}, 3},
		{"external IP virtual server missing", func(l *IPVSListing) { delete(l.VirtualServers, vs("192.0.2.10", 80)) },
			[]Mismatch{{Key: key("web"), State: EndpointsDiffer}}, 3},
		{"node port with the cluster's endpoints under policy Local", func(l *IPVSListing) {
			l.VirtualServers[vs(ipvsNodeAddr.String(), 30082)] = set("10.244.0.4:8080", "10.244.1.4:8080")
		}, []Mismatch{{Key: key("etp"), State: EndpointsDiffer}}, 3},
		{"a node port on one node address only is not judged missing", func(l *IPVSListing) {
			l.NodeAddrs[netip.MustParseAddr("192.168.2.10")] = true
		}, nil, 3},
		{"stale virtual server of an unknown Service", func(l *IPVSListing) { l.VirtualServers[vs("10.96.0.99", 9000)] = set("10.244.1.7:8080") },
			[]Mismatch{{Key: DriftKey{Family: IPv4, Port: "9000"}, State: Stale}}, 4},
		{"old node port of an expected port", func(l *IPVSListing) {
			l.VirtualServers[vs(ipvsNodeAddr.String(), 31000)] = set("10.244.1.1:8080")
		}, []Mismatch{{Key: DriftKey{Family: IPv4, Port: "31000"}, State: Stale}}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := ipvsProgrammed(e, IPv4)
			tc.modify(l)
			c := e.CompareIPVS(IPv4, l, nil)
			if fmt.Sprint(c.Mismatches) != fmt.Sprint(tc.want) || c.ServicePorts != tc.ports || c.Family != IPv4 {
				t.Errorf("got %d ports, %v; want %d, %v", c.ServicePorts, c.Mismatches, tc.ports, tc.want)
			}
		})
	}

	t.Run("a stale virtual server keeps its Service's name", func(t *testing.T) {
		var names IPVSNames
		l := ipvsProgrammed(e, IPv4)
		if c := e.CompareIPVS(IPv4, l, &names); len(c.Mismatches) != 0 {
			t.Fatalf("in sync: %v", c.Mismatches)
		}
		// The Service web is deleted; kube-proxy has not removed its
		// virtual servers.
		ix.DeleteService("ns", "web")
		after := Expect(ix)
		for range 2 {
			c := after.CompareIPVS(IPv4, l, &names)
			if want := []Mismatch{{Key: key("web"), State: Stale}}; fmt.Sprint(c.Mismatches) != fmt.Sprint(want) || c.ServicePorts != 3 {
				t.Errorf("after the deletion: %d ports, %v; want 3, %v", c.ServicePorts, c.Mismatches, want)
			}
		}
		// kube-proxy catches up: nothing stale, and the names are
		// forgotten.
		l = ipvsProgrammed(after, IPv4)
		if c := after.CompareIPVS(IPv4, l, &names); len(c.Mismatches) != 0 || c.ServicePorts != 2 {
			t.Errorf("caught up: %d ports, %v", c.ServicePorts, c.Mismatches)
		}
		l.VirtualServers[vs("10.96.0.10", 80)] = nil
		if c := after.CompareIPVS(IPv4, l, &names); fmt.Sprint(c.Mismatches) != fmt.Sprint([]Mismatch{{Key: DriftKey{Family: IPv4, Port: "80"}, State: Stale}}) {
			t.Errorf("a name outlived its virtual server: %v", c.Mismatches)
		}
		ix.SetService(svc(func(s *index.ServiceInfo) { nodePort(s); s.ExternalIPs = addrs("192.0.2.10") }))
	})
}
