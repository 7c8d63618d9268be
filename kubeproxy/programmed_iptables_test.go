package kubeproxy_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/netinspect/netinspect/kube/index"

	. "github.com/netinspect/netinspect/kubeproxy"
)

// programmedAsExpected is the listing of a kube-proxy that programmed
// exactly what e expects for family f.
func programmedAsExpected(e *Expectation, f IPFamily) *IPTablesListing {
	l := &IPTablesListing{Services: map[string]*IPTablesServicePort{}, Rejected: map[string]int{}}
	for _, p := range e.Family(f) {
		s := &IPTablesServicePort{PortName: p.ID.String(), HasSVC: len(p.Cluster) > 0, HasSVL: len(p.Local) > 0, Endpoints: map[string]struct{}{}}
		if p.Internal().Verdict == Forward {
			s.Port = int(p.Port)
		}
		for _, ep := range p.Reachable() {
			s.Endpoints[EndpointChain(p.ID, ep)] = struct{}{}
		}
		if !p.HasEndpoints {
			l.Rejected[p.ID.String()] = int(p.Port)
		}
		l.Services[ServicePortHash(p.ID)] = s
	}
	return l
}

// TestHasherIsKubeProxys: the chain names are those the rule parser
// recomputes (PortProtoHash, itself checked against the real
// kube-proxy's chains).
func TestHasherIsKubeProxys(t *testing.T) {
	for _, id := range []ServicePortID{
		{Family: IPv4, Namespace: "default", Name: "kubernetes", Port: "https", Protocol: "tcp"},
		{Family: IPv6, Namespace: "kp", Name: "empty", Port: "", Protocol: "udp"},
	} {
		if got, want := ServicePortHash(id), PortProtoHash(id.String(), id.Protocol); got != want {
			t.Errorf("%v: hash %s, want %s", id, got, want)
		}
		for _, ep := range []string{"10.244.1.1:8080", "[fd00:10:244::1]:53"} {
			got := EndpointChain(id, netip.MustParseAddrPort(ep))
			if want := PrefixSEP + PortProtoHash(id.String(), id.Protocol+ep); got != want {
				t.Errorf("%v %s: chain %s, want %s", id, ep, got, want)
			}
		}
	}
}

// TestCompareIPTables: each kind of drift is told from the listing, and a
// listing programmed as expected is in sync.
func TestCompareIPTables(t *testing.T) {
	ix := index.NewIndex(testNode)
	ix.SetService(svc())
	ix.SetEndpointSlice("ns", "web-0", "web", []index.EndpointInfo{ep("10.244.1.1", "node-b"), ep("10.244.1.2", "node-b")})
	ix.SetService(svc(func(s *index.ServiceInfo) { s.Name, s.ClusterIPs = "empty", addrs("10.96.0.11") }))
	ix.SetService(svc(func(s *index.ServiceInfo) {
		s.Name, s.ClusterIPs, s.InternalTrafficLocal = "droponly", addrs("10.96.0.12"), true
	}))
	ix.SetEndpointSlice("ns", "droponly-0", "droponly", []index.EndpointInfo{ep("10.244.1.3", "node-b")})
	ix.SetService(svc(func(s *index.ServiceInfo) {
		s.Name, s.ClusterIPs, s.ExternalTrafficLocal = "etp", addrs("10.96.0.13"), true
		nodePort(s)
	}))
	ix.SetEndpointSlice("ns", "etp-0", "etp", []index.EndpointInfo{ep("10.244.0.4", testNode), ep("10.244.1.4", "node-b")})
	e := Expect(ix)
	web := ServicePortHash(webHTTP(IPv4))
	etpID := ServicePortID{Family: IPv4, Namespace: "ns", Name: "etp", Port: "http", Protocol: "tcp"}
	etp := ServicePortHash(etpID)
	sep := func(id ServicePortID, s string) string { return EndpointChain(id, netip.MustParseAddrPort(s)) }

	for _, tc := range []struct {
		name   string
		modify func(l *IPTablesListing)
		want   []Mismatch
		ports  int
	}{
		{"as expected", func(*IPTablesListing) {}, nil, 4},
		{"service port missing", func(l *IPTablesListing) { delete(l.Services, web) },
			[]Mismatch{{Key: key("web"), State: Missing}}, 4},
		{"an endpoint missing", func(l *IPTablesListing) { delete(l.Services[web].Endpoints, sep(webHTTP(IPv4), "10.244.1.2:8080")) },
			[]Mismatch{{Key: key("web"), State: EndpointsDiffer}}, 4},
		{"an endpoint too many", func(l *IPTablesListing) {
			l.Services[web].Endpoints[sep(webHTTP(IPv4), "10.244.1.9:8080")] = struct{}{}
		},
			[]Mismatch{{Key: key("web"), State: EndpointsDiffer}}, 4},
		{"ClusterIP rule on another port", func(l *IPTablesListing) { s := l.Services[web]; s.Port = 81; l.Services[web] = s },
			[]Mismatch{{Key: key("web"), State: EndpointsDiffer}}, 4},
		{"rejected though it has endpoints", func(l *IPTablesListing) { l.Rejected["ns/web:http"] = 80 },
			[]Mismatch{{Key: key("web"), State: EndpointsDiffer}}, 4},
		{"no REJECT for the port without endpoints", func(l *IPTablesListing) { delete(l.Rejected, "ns/empty:http") },
			[]Mismatch{{Key: key("empty"), State: Missing}}, 4},
		{"the drop-only port still sends to its old chain", func(l *IPTablesListing) {
			id := ServicePortID{Family: IPv4, Namespace: "ns", Name: "droponly", Port: "http", Protocol: "tcp"}
			old := &IPTablesServicePort{PortName: "ns/droponly:http", Port: 80, HasSVL: true,
				Endpoints: map[string]struct{}{sep(id, "10.244.1.3:8080"): {}}}
			l.Services[ServicePortHash(id)] = old
		}, []Mismatch{{Key: key("droponly"), State: EndpointsDiffer}}, 4},
		{"external Local without its local chain", func(l *IPTablesListing) { s := l.Services[etp]; s.HasSVL = false; l.Services[etp] = s },
			[]Mismatch{{Key: key("etp"), State: EndpointsDiffer}}, 4},
		{"a leftover chain, small cluster", func(l *IPTablesListing) {
			// The empty port's old KUBE-SVC- chain, no longer jumped to:
			// kube-proxy deletes it on its next sync in a small cluster.
			id := ServicePortID{Family: IPv4, Namespace: "ns", Name: "empty", Port: "http", Protocol: "tcp"}
			old := &IPTablesServicePort{PortName: "ns/empty:http", HasSVC: true,
				Endpoints: map[string]struct{}{sep(id, "10.244.1.5:8080"): {}}}
			l.Services[ServicePortHash(id)] = old
		}, []Mismatch{{Key: key("empty"), State: EndpointsDiffer}}, 4},
		{"stale service port", func(l *IPTablesListing) {
			l.Services["ABCDEFGHIJKLMNOP"] = &IPTablesServicePort{PortName: "old/gone:grpc", Port: 9000, HasSVC: true, Endpoints: map[string]struct{}{"KUBE-SEP-AAAAAAAAAAAAAAAA": {}}}
		}, []Mismatch{{Key: DriftKey{Family: IPv4, Namespace: "old", Service: "gone", Port: "grpc"}, State: Stale}}, 5},
		{"stale unreferenced chain is harmless", func(l *IPTablesListing) {
			l.Services["ABCDEFGHIJKLMNOP"] = &IPTablesServicePort{PortName: "old/gone:grpc", HasSVC: true}
		}, nil, 4},
		{"stale REJECT of an unnamed port", func(l *IPTablesListing) { l.Rejected["old/gone"] = 5353 },
			[]Mismatch{{Key: DriftKey{Family: IPv4, Namespace: "old", Service: "gone", Port: "5353"}, State: Stale}}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := programmedAsExpected(e, IPv4)
			tc.modify(l)
			c := e.CompareIPTables(IPv4, l)
			if fmt.Sprint(c.Mismatches) != fmt.Sprint(tc.want) || c.ServicePorts != tc.ports || c.Family != IPv4 {
				t.Errorf("got %d ports, %v; want %d, %v", c.ServicePorts, c.Mismatches, tc.ports, tc.want)
			}
		})
	}
	t.Run("other family", func(t *testing.T) {
		if c := e.CompareIPTables(IPv6, &IPTablesListing{}); c.ServicePorts != 0 || len(c.Mismatches) != 0 {
			t.Errorf("ipv6: %+v", c)
		}
	})
}

// TestCompareIPTablesLargeCluster: above 1000 endpoints kube-proxy keeps
// unused chains until its next cleanup; they are not drift, but a missing
// endpoint still is.
func TestCompareIPTablesLargeCluster(t *testing.T) {
	ix := index.NewIndex(testNode)
	var eps []index.EndpointInfo
	for i := range 1001 {
		eps = append(eps, ep(fmt.Sprintf("10.244.%d.%d", i/256, i%256), "node-b"))
	}
	ix.SetService(svc())
	ix.SetEndpointSlice("ns", "web-0", "web", eps)
	e := Expect(ix)
	if n := e.TotalEndpoints(IPv4); n != 1001 {
		t.Fatalf("total endpoints %d", n)
	}
	web := ServicePortHash(webHTTP(IPv4))
	l := programmedAsExpected(e, IPv4)
	s := l.Services[web]
	s.HasSVL = true // a leftover Local chain
	s.Endpoints[EndpointChain(webHTTP(IPv4), netip.MustParseAddrPort("10.99.0.1:8080"))] = struct{}{}
	l.Services[web] = s
	if c := e.CompareIPTables(IPv4, l); len(c.Mismatches) != 0 {
		t.Errorf("leftover chain judged as drift: %v", c.Mismatches)
	}
	delete(s.Endpoints, EndpointChain(webHTTP(IPv4), netip.MustParseAddrPort("10.244.0.7:8080")))
	if c := e.CompareIPTables(IPv4, l); fmt.Sprint(c.Mismatches) != fmt.Sprint([]Mismatch{{Key: key("web"), State: EndpointsDiffer}}) {
		t.Errorf("missing endpoint: %v", c.Mismatches)
	}
}

// TestCompareIPTablesLargeService: one Service of 10,000 endpoints.
func TestCompareIPTablesLargeService(t *testing.T) {
	ix := index.NewIndex(testNode)
	var eps []index.EndpointInfo
	for i := range 10000 {
		eps = append(eps, ep(fmt.Sprintf("10.%d.%d.%d", 64+i/65536, (i/256)%256, i%256), "node-b"))
	}
	ix.SetService(svc())
	ix.SetEndpointSlice("ns", "web-0", "web", eps)
	e := Expect(ix)
	l := programmedAsExpected(e, IPv4)
	if c := e.CompareIPTables(IPv4, l); len(c.Mismatches) != 0 || c.ServicePorts != 1 {
		t.Errorf("%+v", c)
	}
	delete(l.Services[ServicePortHash(webHTTP(IPv4))].Endpoints, EndpointChain(webHTTP(IPv4), netip.MustParseAddrPort("10.64.39.15:8080")))
	if c := e.CompareIPTables(IPv4, l); len(c.Mismatches) != 1 {
		t.Errorf("one endpoint of 10,000 missing: %+v", c)
	}
}
