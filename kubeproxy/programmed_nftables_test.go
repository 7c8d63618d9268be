package kubeproxy_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/netinspect/netinspect/kube/index"

	. "github.com/netinspect/netinspect/kubeproxy"
)

// nftProgrammed is the listing of a kube-proxy that programmed e for
// family f, written from pkg/proxy/nftables/proxier.go's syncProxyRules
// (v1.37.2): service-ips and no-endpoint-services elements per
// destination, service-nodeports and no-endpoint-nodeports per node port,
// the policy chains' DNATs (endpoint chains with session affinity) and the
// external chain's gotos.
func nftProgrammed(e *Expectation, f IPFamily) *NFTablesListing {
	l := &NFTablesListing{ServiceIPs: map[NFTAddrKey]string{}, NodePorts: map[NFTPortKey]string{},
		NoEndpoints: map[NFTAddrKey]NFTNoEndpoint{}, NoEndpointNodePorts: map[NFTPortKey]NFTNoEndpoint{},
		Chains: map[string]NFTChainTargets{}}
	for _, p := range e.Family(f) {
		cluster, local, external := NFTChains(p.ID)
		key := func(a netip.Addr) NFTAddrKey { return NFTAddrKey{Addr: a, Protocol: p.ID.Protocol, Port: p.Port} }
		policyChain := func(chain string, eps EndpointSet) {
			if len(eps) == 0 {
				return
			}
			if !p.SessionAffinity {
				l.Chains[chain] = NFTChainTargets{DNAT: eps}
				return
			}
			var gotos []string
			for _, ep := range eps {
				name := fmt.Sprintf("endpoint-XXXXXXXX-%s/%s/%s/%s__%s/%d", p.ID.Namespace, p.ID.Name, p.ID.Protocol, p.ID.Port, ep.Addr(), ep.Port())
				l.Chains[name] = NFTChainTargets{DNAT: []netip.AddrPort{ep}}
				gotos = append(gotos, name, name) // affinity rule and vmap
			}
			l.Chains[chain] = NFTChainTargets{Gotos: gotos}
		}
		policyChain(cluster, p.Cluster)
		policyChain(local, p.Local)
		comment := p.ID.String()
		in := p.Internal()
		if in.Verdict == Forward {
			l.ServiceIPs[key(p.ClusterIP)] = map[bool]string{false: cluster, true: local}[in.Local]
		} else {
			l.NoEndpoints[key(p.ClusterIP)] = NFTNoEndpoint{Reject: in.Verdict == Reject, Comment: comment}
		}
		ext := p.External()
		var dests []netip.Addr
		dests = append(append(dests, p.ExternalIPs...), p.LoadBalancerVIPs...)
		for _, a := range dests {
			if p.HasEndpoints {
				l.ServiceIPs[key(a)] = external
			}
			if ext.Verdict != Forward {
				l.NoEndpoints[key(a)] = NFTNoEndpoint{Reject: ext.Verdict == Reject, Comment: comment}
			}
		}
		if p.NodePort != 0 {
			np := NFTPortKey{Protocol: p.ID.Protocol, Port: p.NodePort}
			if p.HasEndpoints {
				l.NodePorts[np] = external
			}
			if ext.Verdict != Forward {
				l.NoEndpointNodePorts[np] = NFTNoEndpoint{Reject: ext.Verdict == Reject, Comment: comment}
			}
		}
		if p.ExternalChain() {
			var gotos []string
			if p.ExternalLocal {
				gotos = append(gotos, cluster, cluster) // short-circuit pod and local traffic
			}
			if ext.Verdict == Forward {
				gotos = append(gotos, map[bool]string{false: cluster, true: local}[ext.Local])
			}
			l.Chains[external] = NFTChainTargets{Gotos: gotos}
		}
	}
	return l
}

// TestCompareNFTables: each kind of drift is told from the listing, and a
// listing programmed as kube-proxy does is in sync.
func TestCompareNFTables(t *testing.T) {
	ix := index.NewIndex(testNode)
	ix.SetService(svc(func(s *index.ServiceInfo) { nodePort(s); s.ExternalIPs = addrs("192.0.2.10") }))
	ix.SetEndpointSlice("ns", "web-0", "web", []index.EndpointInfo{ep("10.244.1.1", "node-b"), ep("10.244.1.2", "node-b")})
	ix.SetService(svc(func(s *index.ServiceInfo) {
		s.Name, s.ClusterIPs = "empty", addrs("10.96.0.11")
		nodePort(s)
		s.Ports[0].NodePort = 30081
	}))
	ix.SetService(svc(func(s *index.ServiceInfo) {
		s.Name, s.ClusterIPs, s.InternalTrafficLocal = "droponly", addrs("10.96.0.12"), true
	}))
	ix.SetEndpointSlice("ns", "droponly-0", "droponly", []index.EndpointInfo{ep("10.244.1.3", "node-b")})
	ix.SetService(svc(func(s *index.ServiceInfo) {
		s.Name, s.ClusterIPs, s.ExternalTrafficLocal = "etp", addrs("10.96.0.13"), true
		nodePort(s)
		s.Ports[0].NodePort = 30082
	}))
	ix.SetEndpointSlice("ns", "etp-0", "etp", []index.EndpointInfo{ep("10.244.0.4", testNode), ep("10.244.1.4", "node-b")})
	ix.SetService(svc(func(s *index.ServiceInfo) {
		s.Name, s.ClusterIPs, s.SessionAffinityClientIP = "sticky", addrs("10.96.0.14"), true
	}))
	ix.SetEndpointSlice("ns", "sticky-0", "sticky", []index.EndpointInfo{ep("10.244.1.5", "node-b"), ep("10.244.1.6", "node-b")})
	e := Expect(ix)
	id := func(name string) ServicePortID {
		return ServicePortID{Family: IPv4, Namespace: "ns", Name: name, Port: "http", Protocol: "tcp"}
	}
	webKey := NFTAddrKey{Addr: netip.MustParseAddr("10.96.0.10"), Protocol: "tcp", Port: 80}
	webCluster, _, webExternal := NFTChains(id("web"))
	_, etpLocalChain, etpExternal := NFTChains(id("etp"))
	stickyCluster, _, _ := NFTChains(id("sticky"))

	for _, tc := range []struct {
		name   string
		modify func(l *NFTablesListing)
		want   []Mismatch
		ports  int
	}{
		{"as programmed", func(*NFTablesListing) {}, nil, 5},
		{"ClusterIP not programmed", func(l *NFTablesListing) { delete(l.ServiceIPs, webKey) },
			[]Mismatch{{Key: key("web"), State: Missing}}, 5},
		{"an endpoint missing", func(l *NFTablesListing) {
			l.Chains[webCluster] = NFTChainTargets{DNAT: set("10.244.1.1:8080")}
		}, []Mismatch{{Key: key("web"), State: EndpointsDiffer}}, 5},
		{"an endpoint replaced", func(l *NFTablesListing) {
			l.Chains[webCluster] = NFTChainTargets{DNAT: set("10.244.1.1:8080", "10.244.1.9:8080")}
		}, []Mismatch{{Key: key("web"), State: EndpointsDiffer}}, 5},
		{"rejected though it has endpoints", func(l *NFTablesListing) {
			delete(l.ServiceIPs, webKey)
			l.NoEndpoints[webKey] = NFTNoEndpoint{Reject: true, Comment: "ns/web:http"}
		}, []Mismatch{{Key: key("web"), State: EndpointsDiffer}}, 5},
		{"the port without endpoints forwarded to an old chain", func(l *NFTablesListing) {
			k := NFTAddrKey{Addr: netip.MustParseAddr("10.96.0.11"), Protocol: "tcp", Port: 80}
			delete(l.NoEndpoints, k)
			l.ServiceIPs[k], _, _ = NFTChains(id("empty"))
		}, []Mismatch{{Key: key("empty"), State: EndpointsDiffer}}, 5},
		{"drop turned into reject", func(l *NFTablesListing) {
			k := NFTAddrKey{Addr: netip.MustParseAddr("10.96.0.12"), Protocol: "tcp", Port: 80}
			l.NoEndpoints[k] = NFTNoEndpoint{Reject: true}
		}, []Mismatch{{Key: key("droponly"), State: EndpointsDiffer}}, 5},
		{"node port not programmed", func(l *NFTablesListing) { delete(l.NodePorts, NFTPortKey{Protocol: "tcp", Port: 30080}) },
			[]Mismatch{{Key: key("web"), State: EndpointsDiffer}}, 5},
		{"external IP to the wrong chain", func(l *NFTablesListing) {
			l.ServiceIPs[NFTAddrKey{Addr: netip.MustParseAddr("192.0.2.10"), Protocol: "tcp", Port: 80}] = webCluster
		}, []Mismatch{{Key: key("web"), State: EndpointsDiffer}}, 5},
		{"external chain without its goto", func(l *NFTablesListing) { l.Chains[webExternal] = NFTChainTargets{} },
			[]Mismatch{{Key: key("web"), State: EndpointsDiffer}}, 5},
		{"external Local without its local chain", func(l *NFTablesListing) { delete(l.Chains, etpLocalChain) },
			[]Mismatch{{Key: key("etp"), State: EndpointsDiffer}}, 5},
		{"external Local going to the cluster chain only", func(l *NFTablesListing) {
			c, _, _ := NFTChains(id("etp"))
			l.Chains[etpExternal] = NFTChainTargets{Gotos: []string{c}}
		}, []Mismatch{{Key: key("etp"), State: EndpointsDiffer}}, 5},
		{"affinity endpoint chain lost", func(l *NFTablesListing) {
			ch := l.Chains[stickyCluster]
			ch.Gotos = ch.Gotos[2:]
			l.Chains[stickyCluster] = ch
		}, []Mismatch{{Key: key("sticky"), State: EndpointsDiffer}}, 5},
		{"a flushed chain nothing refers to is harmless", func(l *NFTablesListing) {
			l.Chains["service-ZZZZZZZZ-old/gone/tcp/grpc"] = NFTChainTargets{}
		}, nil, 5},
		{"stale service port", func(l *NFTablesListing) {
			l.ServiceIPs[NFTAddrKey{Addr: netip.MustParseAddr("10.96.0.99"), Protocol: "tcp", Port: 9000}] = "service-ZZZZZZZZ-old/gone/tcp/grpc"
		}, []Mismatch{{Key: DriftKey{Family: IPv4, Namespace: "old", Service: "gone", Port: "grpc"}, State: Stale}}, 6},
		{"stale unnamed port without endpoints", func(l *NFTablesListing) {
			l.NoEndpoints[NFTAddrKey{Addr: netip.MustParseAddr("10.96.0.98"), Protocol: "udp", Port: 5353}] = NFTNoEndpoint{Reject: true, Comment: "old/dns"}
		}, []Mismatch{{Key: DriftKey{Family: IPv4, Namespace: "old", Service: "dns", Port: "5353"}, State: Stale}}, 6},
		{"an old node port of an expected port", func(l *NFTablesListing) {
			l.NodePorts[NFTPortKey{Protocol: "tcp", Port: 31000}] = webExternal
		}, []Mismatch{{Key: key("web"), State: Stale}}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := nftProgrammed(e, IPv4)
			tc.modify(l)
			c := e.CompareNFTables(IPv4, l)
			if fmt.Sprint(c.Mismatches) != fmt.Sprint(tc.want) || c.ServicePorts != tc.ports || c.Family != IPv4 {
				t.Errorf("got %d ports, %v; want %d, %v", c.ServicePorts, c.Mismatches, tc.ports, tc.want)
			}
		})
	}
	t.Run("other family", func(t *testing.T) {
		if c := e.CompareNFTables(IPv6, &NFTablesListing{}); c.ServicePorts != 0 || len(c.Mismatches) != 0 {
			t.Errorf("ipv6: %+v", c)
		}
	})
}

// TestNFTChainNamesAreKubeProxys: the names are those kube-proxy 1.37.2
// gave the real chains TestNFTablesDrift* lists ("service-" + the first 8
// characters of base32(sha256("ns/name/proto/port")) + "-" + that).
func TestNFTChainNamesAreKubeProxys(t *testing.T) {
	cluster, local, external := NFTChains(ServicePortID{Family: IPv4, Namespace: "default", Name: "kubernetes", Port: "https", Protocol: "tcp"})
	if cluster != "service-2QRHZV4L-default/kubernetes/tcp/https" || local != "local-2QRHZV4L-default/kubernetes/tcp/https" ||
		external != "external-2QRHZV4L-default/kubernetes/tcp/https" {
		t.Errorf("%s %s %s", cluster, local, external)
	}
}
