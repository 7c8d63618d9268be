// Package kpfixture is a cluster for the tests that run the real kube-proxy
// against netinspect's mirror of it (kubeproxy) and against the rule
// collectors' drift: Services of every kind kube-proxy treats differently,
// with their EndpointSlices, created in a test control plane, and the node
// kube-proxy runs for.
//
// The node is Node (zone Zone) with addresses NodeIPv4 and NodeIPv6; other
// endpoints live on node-2 (zone-a) and node-3 (zone-b).
package kpfixture

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	cpl "github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// The node kube-proxy serves.
const (
	Namespace = "kp"
	Node      = "node-1"
	NodeIPv4  = "10.99.1.2"
	NodeIPv6  = "fd00:99::2"
	Zone      = "zone-a"
)

// Endpoint is an endpoint of a fixture Service.
type Endpoint struct {
	IP, Node                    string
	Ready, Serving, Terminating bool
	Zones, Nodes                []string // hints
}

// Ready is a ready endpoint on node.
func Ready(ip, node string) Endpoint {
	return Endpoint{IP: ip, Node: node, Ready: true, Serving: true}
}

// Terminating is an endpoint being deleted that still serves.
func Terminating(ip, node string) Endpoint {
	return Endpoint{IP: ip, Node: node, Serving: true, Terminating: true}
}

// Hinted is e with hints for zones and nodes.
func (e Endpoint) Hinted(zones []string, nodes ...string) Endpoint {
	e.Zones, e.Nodes = zones, nodes
	return e
}

// Slice is an EndpointSlice of a fixture Service.
type Slice struct {
	Family discoveryv1.AddressType
	// Ports default to the Service's ports, named alike, number+8000.
	Ports     []discoveryv1.EndpointPort
	Endpoints []Endpoint
	Headless  bool
}

// Service is a fixture Service with its slices, and, for some, what the
// mirror must find (proof that a comparison is not vacuous: the real
// kube-proxy agreeing with a trivial expectation would prove nothing).
type Service struct {
	Name   string
	Labels map[string]string
	Spec   corev1.ServiceSpec
	Status []corev1.LoadBalancerIngress
	Slices []Slice
	// Reachable, when set, is the IPv4 endpoint set of the first port
	// (kubeproxy's Reachable), and Chains which policy chains exist:
	// "svc", "svl", "svc+svl", "reject" or "none".
	Reachable []string
	Chains    string
}

// Ports are TCP ports named names, numbered from 80, target port from 8080.
func Ports(names ...string) []corev1.ServicePort {
	var out []corev1.ServicePort
	for i, n := range names {
		out = append(out, corev1.ServicePort{Name: n, Port: int32(80 + i), Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(int32(8080 + i))})
	}
	return out
}

// SlicePort is a TCP EndpointSlice port.
func SlicePort(name string, port int32) discoveryv1.EndpointPort {
	proto := corev1.ProtocolTCP
	return discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &proto}
}

// Services covers every case of the mirror: ready endpoints, the
// terminating fallback, traffic policies Local with and without local
// endpoints, topology hints for this node's zone, another zone and this
// node, hints kube-proxy must ignore, session affinity, NodePort,
// LoadBalancer VIPs and Proxy-mode ingress, external IPs, dual-stack,
// IPv6 only, no endpoints, a selector matching nothing, port resolution by
// name, duplicates across slices, and the Services kube-proxy does not
// proxy (headless, ExternalName, another proxy's).
func Services() []Service {
	v4 := discoveryv1.AddressTypeIPv4
	v6 := discoveryv1.AddressTypeIPv6
	local := corev1.ServiceInternalTrafficPolicyLocal
	dual := corev1.IPFamilyPolicyRequireDualStack
	single6 := corev1.IPFamilyPolicySingleStack
	noNodePorts := false
	proxyMode := corev1.LoadBalancerIPModeProxy
	za, zb := []string{"zone-a"}, []string{"zone-b"}
	slice := func(eps ...Endpoint) []Slice { return []Slice{{Family: v4, Endpoints: eps}} }
	return []Service{
		{Name: "web", Spec: corev1.ServiceSpec{Ports: Ports("http")},
			Slices:    slice(Ready("10.244.2.1", "node-2"), Ready("10.244.3.1", "node-3"), Endpoint{IP: "10.244.2.2", Node: "node-2"}),
			Reachable: []string{"10.244.2.1:8080", "10.244.3.1:8080"}, Chains: "svc"},
		{Name: "terminating", Spec: corev1.ServiceSpec{Ports: Ports("http")},
			Slices:    slice(Terminating("10.244.2.3", "node-2"), Endpoint{IP: "10.244.2.4", Node: "node-2", Terminating: true}),
			Reachable: []string{"10.244.2.3:8080"}, Chains: "svc"},
		{Name: "unusable", Spec: corev1.ServiceSpec{Ports: Ports("http")},
			Slices: slice(Endpoint{IP: "10.244.2.5", Node: "node-2", Terminating: true}), Chains: "reject"},
		{Name: "empty", Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 8081, Protocol: corev1.ProtocolTCP}}}, Chains: "reject"},
		{Name: "nomatch", Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "nothing"}, Ports: Ports("http")}, Chains: "reject"},
		{Name: "np", Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: Ports("http")},
			Slices: slice(Ready("10.244.2.6", "node-2")), Reachable: []string{"10.244.2.6:8080"}, Chains: "svc"},
		{Name: "np-empty", Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: Ports("http")}, Chains: "reject"},
		{Name: "lb", Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: Ports("https")},
			Status: []corev1.LoadBalancerIngress{{IP: "192.0.2.50"}}, Slices: slice(Ready("10.244.2.7", "node-2")), Chains: "svc"},
		{Name: "ext", Spec: corev1.ServiceSpec{ExternalIPs: []string{"192.0.2.60"}, Ports: Ports("http")},
			Slices: slice(Ready("10.244.2.8", "node-2")), Chains: "svc"},
		{Name: "sticky", Spec: corev1.ServiceSpec{SessionAffinity: corev1.ServiceAffinityClientIP, Ports: Ports("http")},
			Slices: slice(Ready("10.244.2.9", "node-2"), Ready("10.244.3.9", "node-3")), Reachable: []string{"10.244.2.9:8080", "10.244.3.9:8080"}, Chains: "svc"},
		{Name: "itp-local", Spec: corev1.ServiceSpec{InternalTrafficPolicy: &local, Ports: Ports("http")},
			Slices: slice(Ready("10.244.1.10", Node), Ready("10.244.2.10", "node-2")), Reachable: []string{"10.244.1.10:8080"}, Chains: "svl"},
		{Name: "itp-local-none", Spec: corev1.ServiceSpec{InternalTrafficPolicy: &local, Ports: Ports("http")},
			Slices: slice(Ready("10.244.2.11", "node-2")), Chains: "none"},
		{Name: "itp-local-terminating", Spec: corev1.ServiceSpec{InternalTrafficPolicy: &local, Ports: Ports("http")},
			Slices: slice(Terminating("10.244.1.12", Node), Ready("10.244.2.12", "node-2")), Reachable: []string{"10.244.1.12:8080"}, Chains: "svl"},
		{Name: "etp-local", Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, Ports: Ports("http")},
			Slices: slice(Ready("10.244.1.13", Node), Ready("10.244.2.13", "node-2")), Reachable: []string{"10.244.1.13:8080", "10.244.2.13:8080"}, Chains: "svc+svl"},
		{Name: "etp-local-none", Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, Ports: Ports("http")},
			Slices: slice(Ready("10.244.2.14", "node-2")), Reachable: []string{"10.244.2.14:8080"}, Chains: "svc"},
		{Name: "etp-local-extip", Spec: corev1.ServiceSpec{ExternalIPs: []string{"192.0.2.61"}, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, Ports: Ports("http")},
			Slices: slice(Ready("10.244.1.15", Node), Ready("10.244.2.15", "node-2")), Chains: "svc+svl"},
		// A LoadBalancer without node ports whose only ingress IP is in
		// Proxy mode is not externally accessible in kube-proxy's eyes: no
		// Local chain. The same with a VIP has one.
		{Name: "lb-proxy-mode", Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, AllocateLoadBalancerNodePorts: &noNodePorts,
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, Ports: Ports("http")},
			Status: []corev1.LoadBalancerIngress{{IP: "192.0.2.70", IPMode: &proxyMode}},
			Slices: slice(Ready("10.244.1.16", Node), Ready("10.244.2.16", "node-2")), Chains: "svc"},
		{Name: "lb-vip", Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, AllocateLoadBalancerNodePorts: &noNodePorts,
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, Ports: Ports("http")},
			Status: []corev1.LoadBalancerIngress{{IP: "192.0.2.71"}},
			Slices: slice(Ready("10.244.1.17", Node), Ready("10.244.2.17", "node-2")), Chains: "svc+svl"},
		{Name: "zone-mine", Spec: corev1.ServiceSpec{Ports: Ports("http")},
			Slices:    slice(Ready("10.244.2.18", "node-2").Hinted(za), Ready("10.244.3.18", "node-3").Hinted(zb), Ready("10.244.3.19", "node-3").Hinted(zb)),
			Reachable: []string{"10.244.2.18:8080"}, Chains: "svc"},
		{Name: "zone-other", Spec: corev1.ServiceSpec{Ports: Ports("http")},
			Slices:    slice(Ready("10.244.3.20", "node-3").Hinted(zb), Ready("10.244.3.21", "node-3").Hinted(zb)),
			Reachable: []string{"10.244.3.20:8080", "10.244.3.21:8080"}, Chains: "svc"},
		{Name: "zone-partial", Spec: corev1.ServiceSpec{Ports: Ports("http")},
			Slices:    slice(Ready("10.244.2.22", "node-2").Hinted(za), Ready("10.244.3.22", "node-3")),
			Reachable: []string{"10.244.2.22:8080", "10.244.3.22:8080"}, Chains: "svc"},
		{Name: "same-node", Spec: corev1.ServiceSpec{Ports: Ports("http")},
			Slices: slice(Ready("10.244.1.23", Node).Hinted(za, Node), Ready("10.244.2.23", "node-2").Hinted(za, "node-2"),
				Ready("10.244.3.23", "node-3").Hinted(zb, "node-3")),
			Reachable: []string{"10.244.1.23:8080"}, Chains: "svc"},
		{Name: "multiport", Spec: corev1.ServiceSpec{Ports: Ports("http", "metrics")},
			Slices: []Slice{{Family: v4, Endpoints: []Endpoint{Ready("10.244.2.24", "node-2")},
				Ports: []discoveryv1.EndpointPort{SlicePort("metrics", 19090), SlicePort("http", 18080)}}},
			Reachable: []string{"10.244.2.24:18080"}, Chains: "svc"},
		// The same address in two slices, terminating in one: the running
		// one is used.
		{Name: "dup", Spec: corev1.ServiceSpec{InternalTrafficPolicy: &local, Ports: Ports("http")},
			Slices:    []Slice{{Family: v4, Endpoints: []Endpoint{Ready("10.244.1.25", Node)}}, {Family: v4, Endpoints: []Endpoint{Terminating("10.244.1.25", "node-2")}}},
			Reachable: []string{"10.244.1.25:8080"}, Chains: "svl"},
		{Name: "dual", Spec: corev1.ServiceSpec{IPFamilyPolicy: &dual, Ports: []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}},
			Slices: []Slice{{Family: v4, Endpoints: []Endpoint{Ready("10.244.2.26", "node-2")}},
				{Family: v6, Endpoints: []Endpoint{Ready("fd00:10:244:2::26", "node-2"), Ready("fd00:10:244:3::26", "node-3")}}},
			Reachable: []string{"10.244.2.26:8053"}, Chains: "svc"},
		{Name: "v6only", Spec: corev1.ServiceSpec{IPFamilyPolicy: &single6, IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol}, Ports: Ports("http")},
			Slices: []Slice{{Family: v6, Endpoints: []Endpoint{Ready("fd00:10:244:2::27", "node-2")}}}},
		{Name: "headless", Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: Ports("http")},
			Slices: []Slice{{Family: v4, Endpoints: []Endpoint{Ready("10.244.2.28", "node-2")}, Headless: true}}},
		{Name: "extname", Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com"}},
		{Name: "other-proxy", Labels: map[string]string{"service.kubernetes.io/service-proxy-name": "other"}, Spec: corev1.ServiceSpec{Ports: Ports("http")},
			Slices: slice(Ready("10.244.2.29", "node-2"))},
	}
}

// IPv4Only leaves out the Services with IPv6 addresses (the qemu VM has
// no ip6tables, so its kube-proxy runs single-stack IPv4).
func IPv4Only(svcs []Service) []Service {
	var out []Service
	for _, s := range svcs {
		if s.Name != "dual" && s.Name != "v6only" {
			out = append(out, s)
		}
	}
	return out
}

// SetUp creates the namespace, the node (in zone Zone) and svcs through
// client, and returns the number of EndpointSlices it created.
func SetUp(t testing.TB, client kubernetes.Interface, svcs []Service) int {
	t.Helper()
	cpl.EnsureNamespaceWith(t, client, Namespace)
	n := cpl.CreateNodeWith(t, client, Node, NodeIPv4, NodeIPv6)
	n.Labels[corev1.LabelTopologyZone] = Zone
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	slices := 0
	for _, s := range svcs {
		Create(t, client, s)
		slices += len(s.Slices)
	}
	return slices
}

// Create creates s and its EndpointSlices (named <service>-<i>).
func Create(t testing.TB, client kubernetes.Interface, s Service) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	obj, err := client.CoreV1().Services(Namespace).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: Namespace, Labels: s.Labels}, Spec: s.Spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s: %v", s.Name, err)
	}
	if s.Status != nil {
		obj.Status.LoadBalancer.Ingress = s.Status
		if _, err := client.CoreV1().Services(Namespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("set ingress of %s: %v", s.Name, err)
		}
	}
	for i, sl := range s.Slices {
		es := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", s.Name, i), Namespace: Namespace, Labels: map[string]string{discoveryv1.LabelServiceName: s.Name}},
			AddressType: sl.Family,
			Ports:       sl.Ports,
		}
		if sl.Headless {
			es.Labels[corev1.IsHeadlessService] = ""
		}
		if es.Ports == nil {
			for _, p := range s.Spec.Ports {
				es.Ports = append(es.Ports, SlicePort(p.Name, p.Port+8000))
				es.Ports[len(es.Ports)-1].Protocol = &p.Protocol
			}
		}
		for _, e := range sl.Endpoints {
			es.Endpoints = append(es.Endpoints, e.api())
		}
		if _, err := client.DiscoveryV1().EndpointSlices(Namespace).Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create EndpointSlice %s: %v", es.Name, err)
		}
	}
}

// api is e as the API has it.
func (e Endpoint) api() discoveryv1.Endpoint {
	ep := discoveryv1.Endpoint{Addresses: []string{e.IP}, Conditions: discoveryv1.EndpointConditions{Ready: &e.Ready, Serving: &e.Serving, Terminating: &e.Terminating}}
	if e.Node != "" {
		ep.NodeName = &e.Node
	}
	if e.Zones != nil || e.Nodes != nil {
		ep.Hints = &discoveryv1.EndpointHints{}
		for _, z := range e.Zones {
			ep.Hints.ForZones = append(ep.Hints.ForZones, discoveryv1.ForZone{Name: z})
		}
		for _, n := range e.Nodes {
			ep.Hints.ForNodes = append(ep.Hints.ForNodes, discoveryv1.ForNode{Name: n})
		}
	}
	return ep
}

// UpdateSlice applies mod to the EndpointSlice name of Namespace.
func UpdateSlice(t testing.TB, client kubernetes.Interface, name string, mod func(*discoveryv1.EndpointSlice)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	es, err := client.DiscoveryV1().EndpointSlices(Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mod(es)
	if _, err := client.DiscoveryV1().EndpointSlices(Namespace).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// SetEndpoints makes eps the endpoints of the EndpointSlice name.
func SetEndpoints(t testing.TB, client kubernetes.Interface, name string, eps ...Endpoint) {
	t.Helper()
	UpdateSlice(t, client, name, func(es *discoveryv1.EndpointSlice) {
		es.Endpoints = nil
		for _, e := range eps {
			es.Endpoints = append(es.Endpoints, e.api())
		}
	})
}

// Delete deletes the Service name of Namespace, if it exists, and its
// EndpointSlices.
func Delete(t testing.TB, client kubernetes.Interface, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := client.CoreV1().Services(Namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete service %s: %v", name, err)
	}
	if err := client.DiscoveryV1().EndpointSlices(Namespace).DeleteCollection(ctx, metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + name}); err != nil {
		t.Fatalf("delete EndpointSlices of %s: %v", name, err)
	}
}

// NodeNS is a network namespace with the node's addresses, for kube-proxy
// to program (its name starts with prefix).
func NodeNS(t testing.TB, prefix string) *netns.NS {
	t.Helper()
	node := netns.New(t, prefix)
	node.MustRun("ip", "addr", "add", NodeIPv4+"/32", "dev", "lo")
	node.MustRun("ip", "addr", "add", NodeIPv6+"/128", "dev", "lo")
	return node
}

// LegacyPath is a PATH whose iptables commands are iptables-legacy
// (xtables-legacy-multi picks its applet from the name it runs as), so that
// kube-proxy and iptables-save run the legacy backend.
func LegacyPath(t testing.TB) string {
	t.Helper()
	multi := testenv.RequireCommand(t, "xtables-legacy-multi")
	dir := t.TempDir()
	for _, name := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		if err := os.Symlink(multi, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir + ":" + os.Getenv("PATH")
}
