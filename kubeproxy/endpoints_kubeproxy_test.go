package kubeproxy_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/source/iptables"
	cpl "github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"

	. "github.com/netinspect/netinspect/kubeproxy"
)

// The cluster of the real kube-proxy test: node-1 (the node kube-proxy and
// the mirror run for) in zone-a; other endpoints live on node-2 (zone-a)
// and node-3 (zone-b).
const (
	kpNS   = "kp"
	kpNode = "node-1"
)

// kpEndpoint is an endpoint of a fixture Service.
type kpEndpoint struct {
	ip, node                    string
	ready, serving, terminating bool
	zones, nodes                []string // hints
}

func kpReady(ip, node string) kpEndpoint {
	return kpEndpoint{ip: ip, node: node, ready: true, serving: true}
}
func kpTerm(ip, node string) kpEndpoint {
	return kpEndpoint{ip: ip, node: node, serving: true, terminating: true}
}

func (e kpEndpoint) hinted(zones []string, nodes ...string) kpEndpoint {
	e.zones, e.nodes = zones, nodes
	return e
}

// kpSlice is an EndpointSlice of a fixture Service.
type kpSlice struct {
	family  discoveryv1.AddressType
	ports   []discoveryv1.EndpointPort // default: the Service's ports, named alike, number+8000
	eps     []kpEndpoint
	headles bool
}

// kpService is a fixture Service with its slices, and, for some, what the
// mirror must find (proof that the comparison is not vacuous: the real
// kube-proxy agreeing with a trivial expectation would prove nothing).
type kpService struct {
	name   string
	labels map[string]string
	spec   corev1.ServiceSpec
	status []corev1.LoadBalancerIngress
	slices []kpSlice
	// reachable, when set, is the IPv4 endpoint set of the first port
	// (Reachable), and chains which policy chains exist: "svc", "svl",
	// "svc+svl", "reject" or "none".
	reachable []string
	chains    string
}

func kpPorts(names ...string) []corev1.ServicePort {
	var out []corev1.ServicePort
	for i, n := range names {
		out = append(out, corev1.ServicePort{Name: n, Port: int32(80 + i), Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(int32(8080 + i))})
	}
	return out
}

// kpServices covers every case of the mirror: ready endpoints, the
// terminating fallback, traffic policies Local with and without local
// endpoints, topology hints for this node's zone, another zone and this
// node, hints kube-proxy must ignore, session affinity, NodePort,
// LoadBalancer VIPs and Proxy-mode ingress, external IPs, dual-stack,
// IPv6 only, no endpoints, port resolution by name, duplicates across
// slices, and the Services kube-proxy does not proxy.
func kpServices() []kpService {
	v4 := discoveryv1.AddressTypeIPv4
	v6 := discoveryv1.AddressTypeIPv6
	local := corev1.ServiceInternalTrafficPolicyLocal
	dual := corev1.IPFamilyPolicyRequireDualStack
	single6 := corev1.IPFamilyPolicySingleStack
	noNodePorts := false
	proxyMode := corev1.LoadBalancerIPModeProxy
	za, zb := []string{"zone-a"}, []string{"zone-b"}
	slice := func(eps ...kpEndpoint) []kpSlice { return []kpSlice{{family: v4, eps: eps}} }
	return []kpService{
		{name: "web", spec: corev1.ServiceSpec{Ports: kpPorts("http")},
			slices:    slice(kpReady("10.244.2.1", "node-2"), kpReady("10.244.3.1", "node-3"), kpEndpoint{ip: "10.244.2.2", node: "node-2"}),
			reachable: []string{"10.244.2.1:8080", "10.244.3.1:8080"}, chains: "svc"},
		{name: "terminating", spec: corev1.ServiceSpec{Ports: kpPorts("http")},
			slices:    slice(kpTerm("10.244.2.3", "node-2"), kpEndpoint{ip: "10.244.2.4", node: "node-2", terminating: true}),
			reachable: []string{"10.244.2.3:8080"}, chains: "svc"},
		{name: "unusable", spec: corev1.ServiceSpec{Ports: kpPorts("http")},
			slices: slice(kpEndpoint{ip: "10.244.2.5", node: "node-2", terminating: true}), chains: "reject"},
		{name: "empty", spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 8081, Protocol: corev1.ProtocolTCP}}}, chains: "reject"},
		{name: "nomatch", spec: corev1.ServiceSpec{Selector: map[string]string{"app": "nothing"}, Ports: kpPorts("http")}, chains: "reject"},
		{name: "np", spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: kpPorts("http")},
			slices: slice(kpReady("10.244.2.6", "node-2")), reachable: []string{"10.244.2.6:8080"}, chains: "svc"},
		{name: "np-empty", spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: kpPorts("http")}, chains: "reject"},
		{name: "lb", spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: kpPorts("https")},
			status: []corev1.LoadBalancerIngress{{IP: "192.0.2.50"}}, slices: slice(kpReady("10.244.2.7", "node-2")), chains: "svc"},
		{name: "ext", spec: corev1.ServiceSpec{ExternalIPs: []string{"192.0.2.60"}, Ports: kpPorts("http")},
			slices: slice(kpReady("10.244.2.8", "node-2")), chains: "svc"},
		{name: "sticky", spec: corev1.ServiceSpec{SessionAffinity: corev1.ServiceAffinityClientIP, Ports: kpPorts("http")},
			slices: slice(kpReady("10.244.2.9", "node-2"), kpReady("10.244.3.9", "node-3")), reachable: []string{"10.244.2.9:8080", "10.244.3.9:8080"}, chains: "svc"},
		{name: "itp-local", spec: corev1.ServiceSpec{InternalTrafficPolicy: &local, Ports: kpPorts("http")},
			slices: slice(kpReady("10.244.1.10", kpNode), kpReady("10.244.2.10", "node-2")), reachable: []string{"10.244.1.10:8080"}, chains: "svl"},
		{name: "itp-local-none", spec: corev1.ServiceSpec{InternalTrafficPolicy: &local, Ports: kpPorts("http")},
			slices: slice(kpReady("10.244.2.11", "node-2")), chains: "none"},
		{name: "itp-local-terminating", spec: corev1.ServiceSpec{InternalTrafficPolicy: &local, Ports: kpPorts("http")},
			slices: slice(kpTerm("10.244.1.12", kpNode), kpReady("10.244.2.12", "node-2")), reachable: []string{"10.244.1.12:8080"}, chains: "svl"},
		{name: "etp-local", spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, Ports: kpPorts("http")},
			slices: slice(kpReady("10.244.1.13", kpNode), kpReady("10.244.2.13", "node-2")), reachable: []string{"10.244.1.13:8080", "10.244.2.13:8080"}, chains: "svc+svl"},
		{name: "etp-local-none", spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, Ports: kpPorts("http")},
			slices: slice(kpReady("10.244.2.14", "node-2")), reachable: []string{"10.244.2.14:8080"}, chains: "svc"},
		{name: "etp-local-extip", spec: corev1.ServiceSpec{ExternalIPs: []string{"192.0.2.61"}, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, Ports: kpPorts("http")},
			slices: slice(kpReady("10.244.1.15", kpNode), kpReady("10.244.2.15", "node-2")), chains: "svc+svl"},
		// A LoadBalancer without node ports whose only ingress IP is in
		// Proxy mode is not externally accessible in kube-proxy's eyes: no
		// Local chain. The same with a VIP has one.
		{name: "lb-proxy-mode", spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, AllocateLoadBalancerNodePorts: &noNodePorts,
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, Ports: kpPorts("http")},
			status: []corev1.LoadBalancerIngress{{IP: "192.0.2.70", IPMode: &proxyMode}},
			slices: slice(kpReady("10.244.1.16", kpNode), kpReady("10.244.2.16", "node-2")), chains: "svc"},
		{name: "lb-vip", spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, AllocateLoadBalancerNodePorts: &noNodePorts,
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, Ports: kpPorts("http")},
			status: []corev1.LoadBalancerIngress{{IP: "192.0.2.71"}},
			slices: slice(kpReady("10.244.1.17", kpNode), kpReady("10.244.2.17", "node-2")), chains: "svc+svl"},
		{name: "zone-mine", spec: corev1.ServiceSpec{Ports: kpPorts("http")},
			slices:    slice(kpReady("10.244.2.18", "node-2").hinted(za), kpReady("10.244.3.18", "node-3").hinted(zb), kpReady("10.244.3.19", "node-3").hinted(zb)),
			reachable: []string{"10.244.2.18:8080"}, chains: "svc"},
		{name: "zone-other", spec: corev1.ServiceSpec{Ports: kpPorts("http")},
			slices:    slice(kpReady("10.244.3.20", "node-3").hinted(zb), kpReady("10.244.3.21", "node-3").hinted(zb)),
			reachable: []string{"10.244.3.20:8080", "10.244.3.21:8080"}, chains: "svc"},
		{name: "zone-partial", spec: corev1.ServiceSpec{Ports: kpPorts("http")},
			slices:    slice(kpReady("10.244.2.22", "node-2").hinted(za), kpReady("10.244.3.22", "node-3")),
			reachable: []string{"10.244.2.22:8080", "10.244.3.22:8080"}, chains: "svc"},
		{name: "same-node", spec: corev1.ServiceSpec{Ports: kpPorts("http")},
			slices: slice(kpReady("10.244.1.23", kpNode).hinted(za, kpNode), kpReady("10.244.2.23", "node-2").hinted(za, "node-2"),
				kpReady("10.244.3.23", "node-3").hinted(zb, "node-3")),
			reachable: []string{"10.244.1.23:8080"}, chains: "svc"},
		{name: "multiport", spec: corev1.ServiceSpec{Ports: kpPorts("http", "metrics")},
			slices: []kpSlice{{family: v4, eps: []kpEndpoint{kpReady("10.244.2.24", "node-2")},
				ports: []discoveryv1.EndpointPort{kpSlicePort("metrics", 19090), kpSlicePort("http", 18080)}}},
			reachable: []string{"10.244.2.24:18080"}, chains: "svc"},
		// The same address in two slices, terminating in one: the running
		// one is used.
		{name: "dup", spec: corev1.ServiceSpec{InternalTrafficPolicy: &local, Ports: kpPorts("http")},
			slices:    []kpSlice{{family: v4, eps: []kpEndpoint{kpReady("10.244.1.25", kpNode)}}, {family: v4, eps: []kpEndpoint{kpTerm("10.244.1.25", "node-2")}}},
			reachable: []string{"10.244.1.25:8080"}, chains: "svl"},
		{name: "dual", spec: corev1.ServiceSpec{IPFamilyPolicy: &dual, Ports: []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}},
			slices: []kpSlice{{family: v4, eps: []kpEndpoint{kpReady("10.244.2.26", "node-2")}},
				{family: v6, eps: []kpEndpoint{kpReady("fd00:10:244:2::26", "node-2"), kpReady("fd00:10:244:3::26", "node-3")}}},
			reachable: []string{"10.244.2.26:8053"}, chains: "svc"},
		{name: "v6only", spec: corev1.ServiceSpec{IPFamilyPolicy: &single6, IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol}, Ports: kpPorts("http")},
			slices: []kpSlice{{family: v6, eps: []kpEndpoint{kpReady("fd00:10:244:2::27", "node-2")}}}},
		{name: "headless", spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: kpPorts("http")},
			slices: []kpSlice{{family: v4, eps: []kpEndpoint{kpReady("10.244.2.28", "node-2")}, headles: true}}},
		{name: "extname", spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com"}},
		{name: "other-proxy", labels: map[string]string{"service.kubernetes.io/service-proxy-name": "other"}, spec: corev1.ServiceSpec{Ports: kpPorts("http")},
			slices: slice(kpReady("10.244.2.29", "node-2"))},
	}
}

func kpSlicePort(name string, port int32) discoveryv1.EndpointPort {
	proto := corev1.ProtocolTCP
	return discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &proto}
}

func kpCreate(t *testing.T, cp *cpl.ControlPlane, s kpService) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	obj, err := cp.Client.CoreV1().Services(kpNS).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: kpNS, Labels: s.labels}, Spec: s.spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s: %v", s.name, err)
	}
	if s.status != nil {
		obj.Status.LoadBalancer.Ingress = s.status
		if _, err := cp.Client.CoreV1().Services(kpNS).UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("set ingress of %s: %v", s.name, err)
		}
	}
	for i, sl := range s.slices {
		es := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", s.name, i), Namespace: kpNS, Labels: map[string]string{discoveryv1.LabelServiceName: s.name}},
			AddressType: sl.family,
			Ports:       sl.ports,
		}
		if sl.headles {
			es.Labels[corev1.IsHeadlessService] = ""
		}
		if es.Ports == nil {
			for _, p := range s.spec.Ports {
				es.Ports = append(es.Ports, kpSlicePort(p.Name, p.Port+8000))
				es.Ports[len(es.Ports)-1].Protocol = &p.Protocol
			}
		}
		for _, e := range sl.eps {
			ep := discoveryv1.Endpoint{Addresses: []string{e.ip}, Conditions: discoveryv1.EndpointConditions{Ready: &e.ready, Serving: &e.serving, Terminating: &e.terminating}}
			if e.node != "" {
				ep.NodeName = &e.node
			}
			if e.zones != nil || e.nodes != nil {
				ep.Hints = &discoveryv1.EndpointHints{}
				for _, z := range e.zones {
					ep.Hints.ForZones = append(ep.Hints.ForZones, discoveryv1.ForZone{Name: z})
				}
				for _, n := range e.nodes {
					ep.Hints.ForNodes = append(ep.Hints.ForNodes, discoveryv1.ForNode{Name: n})
				}
			}
			es.Endpoints = append(es.Endpoints, ep)
		}
		if _, err := cp.Client.DiscoveryV1().EndpointSlices(kpNS).Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create EndpointSlice %s: %v", es.Name, err)
		}
	}
}

// kpListing reads what kube-proxy programmed for one family through the
// rule parser, as IPTablesListing.
func kpListing(t *testing.T, node *netns.NS, f IPFamily) *IPTablesListing {
	t.Helper()
	cmd := "iptables-save"
	if f == IPv6 {
		cmd = "ip6tables-save"
	}
	out, err := node.Run(cmd)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := iptables.ParseSave([]byte(out))
	if err != nil {
		t.Fatalf("parse %s: %v", cmd, err)
	}
	return rs.KubeProxyListing()
}

// kpCompare compares both families' listings with a fresh expectation.
func kpCompare(t *testing.T, ix *kube.Index, node *netns.NS) (*Expectation, []Comparison) {
	t.Helper()
	e := Expect(ix)
	return e, []Comparison{e.CompareIPTables(IPv4, kpListing(t, node, IPv4)), e.CompareIPTables(IPv6, kpListing(t, node, IPv6))}
}

func mismatchText(cs []Comparison) string {
	var parts []string
	for _, c := range cs {
		for _, m := range c.Mismatches {
			parts = append(parts, fmt.Sprintf("%s %s/%s:%s %s", m.Key.Family, m.Key.Namespace, m.Key.Service, m.Key.Port, m.State))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, "\n")
}

// kpInSync waits until kube-proxy and the mirror agree, then requires them
// to keep agreeing over several listings spanning more than two of
// kube-proxy's 5 s sync periods, and returns the last expectation.
func kpInSync(t *testing.T, ix *kube.Index, node *netns.NS, kp *cpl.KubeProxy, tr *DriftTracker) *Expectation {
	t.Helper()
	var cs []Comparison
	cpl.Eventually(t, 90*time.Second, func() error {
		_, cs = kpCompare(t, ix, node)
		if s := mismatchText(cs); s != "" {
			return fmt.Errorf("kube-proxy and the mirror disagree:\n%s\n%s", s, kp.Tail())
		}
		return nil
	})
	var e *Expectation
	t.Logf("agreed: %d IPv4 and %d IPv6 service ports compared", cs[0].ServicePorts, cs[1].ServicePorts)
	for i := range 12 {
		e, cs = kpCompare(t, ix, node)
		if s := mismatchText(cs); s != "" {
			t.Fatalf("listing %d after agreeing: mismatches\n%s", i, s)
		}
		r := tr.Observe(time.Now(), 0, cs...)
		for _, fd := range r.Families {
			if fd.ServicePorts[Missing]+fd.ServicePorts[Stale]+fd.ServicePorts[EndpointsDiffer] != 0 || fd.Oldest != 0 {
				t.Fatalf("tracker reports drift: %+v", fd)
			}
		}
		if len(r.Series) != 0 || r.Pending != 0 {
			t.Fatalf("tracker series %v, pending %d", r.Series, r.Pending)
		}
		time.Sleep(time.Second)
	}
	return e
}

// TestMirrorMatchesRealKubeProxyIPTables runs the real kube-proxy 1.37.2 in
// iptables mode against a real API server, with a Service of every kind
// the mirror knows, reads what it programmed with iptables-save through the
// rule parser, and requires the mirror's expectation (computed from the
// exporter's own watcher and index) to equal it exactly, for several
// refreshes, before and after the cluster changes.
func TestMirrorMatchesRealKubeProxyIPTables(t *testing.T) {
	testenv.RequireRoot(t)
	for _, c := range []string{"iptables-save", "ip6tables-save", "nsenter"} {
		testenv.RequireCommand(t, c)
	}
	cp := cpl.Start(t)
	cp.EnsureNamespace(t, kpNS)
	n := cp.CreateNode(t, kpNode, "10.99.1.2", "fd00:99::2")
	n.Labels[corev1.LabelTopologyZone] = "zone-a"
	ctx := context.Background()
	if _, err := cp.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	svcs := kpServices()
	slices := 1 // default/kubernetes
	for _, s := range svcs {
		kpCreate(t, cp, s)
		slices += len(s.slices)
	}

	w, err := kube.NewWatcher(kube.Config{REST: cp.Config, NodeName: kpNode, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	w.Start(wctx)
	ix := w.Index()
	cpl.Eventually(t, 60*time.Second, func() error {
		if ok, detail := w.Ready(); !ok {
			return fmt.Errorf("%s", detail)
		}
		if ix.NodeZone() != "zone-a" {
			return fmt.Errorf("zone %q", ix.NodeZone())
		}
		_, nsvc, nslices := ix.Counts()
		if nsvc != len(svcs)+1 || nslices != slices {
			return fmt.Errorf("%d services, %d slices indexed", nsvc, nslices)
		}
		return nil
	})

	newTracker := func() *DriftTracker {
		tr, err := NewDriftTracker(DriftConfig{RefreshInterval: time.Second, Grace: 0, MaxSeries: 50, FastRelistInterval: time.Second, Buckets: DefaultDriftBuckets})
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	// The legacy backend first, on the initial cluster: kube-proxy and
	// iptables-save both run as iptables-legacy.
	t.Run("legacy backend", func(t *testing.T) {
		t.Setenv("PATH", kpLegacyPath(t))
		node := kpNodeNS(t, "kplegacy")
		kp := cp.StartKubeProxy(t, node, cpl.KubeProxyOptions{NodeName: kpNode, Mode: "iptables"})
		kpCheckFixture(t, kpInSync(t, ix, node, kp, newTracker()), svcs)
		if out := node.MustRun("iptables-save"); !strings.Contains(out, "KUBE-SERVICES") || !strings.Contains(kpPathOf(t, "iptables-save"), "legacy") {
			t.Errorf("not the legacy backend: iptables-save is %s", kpPathOf(t, "iptables-save"))
		}
		kp.Stop()
	})

	node := kpNodeNS(t, "kpdrift")
	kp := cp.StartKubeProxy(t, node, cpl.KubeProxyOptions{NodeName: kpNode, Mode: "iptables"})
	tr := newTracker()
	e := kpInSync(t, ix, node, kp, tr)
	kpCheckFixture(t, e, svcs)

	// The cluster changes; kube-proxy and the mirror must agree again.
	t.Run("after changes", func(t *testing.T) {
		// web: one endpoint stops being ready; itp-local: its local
		// endpoint starts terminating (the Local chain falls back to it);
		// a new Service; one deleted.
		kpUpdateSlice(t, cp, "web-0", func(es *discoveryv1.EndpointSlice) { es.Endpoints[0].Conditions.Ready = ptrTo(false) })
		kpUpdateSlice(t, cp, "itp-local-0", func(es *discoveryv1.EndpointSlice) {
			es.Endpoints[0].Conditions = discoveryv1.EndpointConditions{Ready: ptrTo(false), Serving: ptrTo(true), Terminating: ptrTo(true)}
		})
		kpCreate(t, cp, kpService{name: "late", spec: corev1.ServiceSpec{Ports: kpPorts("http")},
			slices: []kpSlice{{family: discoveryv1.AddressTypeIPv4, eps: []kpEndpoint{kpReady("10.244.2.40", "node-2")}}}})
		if err := cp.Client.CoreV1().Services(kpNS).Delete(ctx, "sticky", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e := kpInSync(t, ix, node, kp, tr)
		want := map[string][]string{"web": {"10.244.3.1:8080"}, "itp-local": {"10.244.1.10:8080"}, "late": {"10.244.2.40:8080"}}
		for name, eps := range want {
			kpCheckReachable(t, e, name, eps)
		}
		if e.Find(ServicePortID{Family: IPv4, Namespace: kpNS, Name: "sticky", Port: "http", Protocol: "tcp"}) != nil {
			t.Error("deleted Service still expected")
		}
	})
	// The node moves to zone-b: kube-proxy resyncs on the topology change.
	t.Run("after the node changes zone", func(t *testing.T) {
		n, err := cp.Client.CoreV1().Nodes().Get(ctx, kpNode, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Labels[corev1.LabelTopologyZone] = "zone-b"
		if _, err := cp.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		cpl.Eventually(t, 30*time.Second, func() error {
			if z := ix.NodeZone(); z != "zone-b" {
				return fmt.Errorf("zone %q", z)
			}
			return nil
		})
		e := kpInSync(t, ix, node, kp, tr)
		kpCheckReachable(t, e, "zone-mine", []string{"10.244.3.18:8080", "10.244.3.19:8080"})
		kpCheckReachable(t, e, "zone-other", []string{"10.244.3.20:8080", "10.244.3.21:8080"})
	})
}

func ptrTo[T any](v T) *T { return &v }

// kpNodeNS is a node's network namespace with node-1's addresses.
func kpNodeNS(t *testing.T, prefix string) *netns.NS {
	node := netns.New(t, prefix)
	node.MustRun("ip", "addr", "add", "10.99.1.2/32", "dev", "lo")
	node.MustRun("ip", "addr", "add", "fd00:99::2/128", "dev", "lo")
	return node
}

// kpLegacyPath is a PATH whose iptables commands are iptables-legacy
// (xtables-legacy-multi picks its applet from the name it runs as).
func kpLegacyPath(t *testing.T) string {
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

func kpPathOf(t *testing.T, cmd string) string {
	p, err := exec.LookPath(cmd)
	if err != nil {
		t.Fatal(err)
	}
	target, err := os.Readlink(p)
	if err != nil {
		return p
	}
	return target
}

func kpUpdateSlice(t *testing.T, cp *cpl.ControlPlane, name string, mod func(*discoveryv1.EndpointSlice)) {
	t.Helper()
	ctx := context.Background()
	es, err := cp.Client.DiscoveryV1().EndpointSlices(kpNS).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mod(es)
	if _, err := cp.Client.DiscoveryV1().EndpointSlices(kpNS).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func kpFirstPort(e *Expectation, name string) *ExpectedPort {
	for i := range e.Family(IPv4) {
		if p := &e.Family(IPv4)[i]; p.ID.Namespace == kpNS && p.ID.Name == name {
			return p
		}
	}
	return nil
}

func kpCheckReachable(t *testing.T, e *Expectation, name string, want []string) {
	t.Helper()
	p := kpFirstPort(e, name)
	if p == nil {
		t.Errorf("%s: not expected", name)
		return
	}
	var got []string
	for _, ep := range p.Reachable() {
		got = append(got, ep.String())
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("%s: endpoints %v, want %v", name, got, want)
	}
}

// kpCheckFixture: the expectation kube-proxy agreed with is the one each
// case is about (not, say, every endpoint everywhere).
func kpCheckFixture(t *testing.T, e *Expectation, svcs []kpService) {
	t.Helper()
	for _, s := range svcs {
		p := kpFirstPort(e, s.name)
		if s.chains == "" {
			if p != nil && s.name != "v6only" && s.name != "dual" {
				t.Errorf("%s: kube-proxy does not proxy it, yet it is expected", s.name)
			}
			continue
		}
		if p == nil {
			t.Errorf("%s: not expected", s.name)
			continue
		}
		chains := map[[3]bool]string{{true, false, false}: "svc", {false, true, false}: "svl", {true, true, false}: "svc+svl",
			{false, false, true}: "reject", {false, false, false}: "none"}[[3]bool{len(p.Cluster) > 0, len(p.Local) > 0, !p.HasEndpoints}]
		if chains != s.chains {
			t.Errorf("%s: chains %q, want %q", s.name, chains, s.chains)
		}
		if s.reachable != nil {
			kpCheckReachable(t, e, s.name, s.reachable)
		}
	}
	for _, id := range []ServicePortID{
		{Family: IPv6, Namespace: kpNS, Name: "v6only", Port: "http", Protocol: "tcp"},
		{Family: IPv6, Namespace: kpNS, Name: "dual", Port: "dns", Protocol: "udp"},
	} {
		if p := e.Find(id); p == nil || len(p.Cluster) == 0 || !p.ClusterIP.Is6() {
			t.Errorf("%v: %+v", id, p)
		}
	}
	if p := e.Find(ServicePortID{Family: IPv6, Namespace: kpNS, Name: "dual", Port: "dns", Protocol: "udp"}); p != nil &&
		!p.Cluster.Equal(EndpointSet{netip.MustParseAddrPort("[fd00:10:244:2::26]:8053"), netip.MustParseAddrPort("[fd00:10:244:3::26]:8053")}) {
		t.Errorf("dual IPv6 endpoints %v", p.Cluster)
	}
}
