package kube_test

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/netinspect/netinspect/kube"
	cpl "github.com/netinspect/netinspect/test/controlplane"
)

// serviceByName finds a Service in the index through EachService.
func serviceByName(ix *kube.Index, namespace, name string) (kube.ServiceInfo, [][]kube.EndpointInfo, bool) {
	var info kube.ServiceInfo
	var slices [][]kube.EndpointInfo
	found := false
	ix.EachService(func(s *kube.ServiceInfo, sl [][]kube.EndpointInfo) {
		if s.Namespace == namespace && s.Name == name {
			info, found = *s, true
			for _, e := range sl {
				slices = append(slices, append([]kube.EndpointInfo(nil), e...))
			}
		}
	})
	return info, slices, found
}

// testKubeProxyFields: what kube-proxy bases its rules on survives the
// API server's defaulting, the protobuf wire, the slim transforms and the
// index: traffic policies, affinity, ingress IP modes, the proxy-name label,
// headless and ExternalName Services, endpoint conditions, hints, the
// headless label on slices.
func testKubeProxyFields(t *testing.T, cp *cpl.ControlPlane) {
	const ns = "kpfields"
	w := startWatcher(t, cp.Config, "node-kp", "", nil)
	waitSynced(t, w)
	ix := w.Index()
	cp.EnsureNamespace(t, ns)
	ctx := context.Background()

	local := corev1.ServiceInternalTrafficPolicyLocal
	proxyMode := corev1.LoadBalancerIPModeProxy
	ports := []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}
	create := func(name string, labels map[string]string, spec corev1.ServiceSpec) *corev1.Service {
		t.Helper()
		if spec.Ports == nil && spec.Type != corev1.ServiceTypeExternalName {
			spec.Ports = ports
		}
		s, err := cp.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Spec: spec}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create service %s: %v", name, err)
		}
		return s
	}
	lb := create("lb", nil, corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, InternalTrafficPolicy: &local,
		ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, SessionAffinity: corev1.ServiceAffinityClientIP})
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.1"}, {IP: "192.0.2.2", IPMode: &proxyMode}}
	if _, err := cp.Client.CoreV1().Services(ns).UpdateStatus(ctx, lb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	create("other-proxy", map[string]string{"service.kubernetes.io/service-proxy-name": "cilium"}, corev1.ServiceSpec{})
	create("headless", nil, corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone})
	create("external", nil, corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com"})

	yes, no := true, false
	name, port, proto := "http", int32(8080), corev1.ProtocolTCP
	node := "node-kp"
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "lb-1", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "lb"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.5.1"}, NodeName: &node, Conditions: discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no},
				Hints: &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-a"}}, ForNodes: []discoveryv1.ForNode{{Name: "node-kp"}}}},
			{Addresses: []string{"10.244.5.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &yes, Terminating: &yes},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "lb-2", UID: types.UID("u2")}},
		},
	}
	if _, err := cp.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	headlessSlice := es.DeepCopy()
	headlessSlice.Name, headlessSlice.Labels = "headless-1", map[string]string{discoveryv1.LabelServiceName: "headless", corev1.IsHeadlessService: ""}
	headlessSlice.Endpoints = headlessSlice.Endpoints[:1]
	if _, err := cp.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, headlessSlice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	cpl.Eventually(t, waitFor, func() error {
		for _, n := range []string{"lb", "other-proxy", "headless", "external"} {
			if _, _, ok := serviceByName(ix, ns, n); !ok {
				return fmt.Errorf("service %s not indexed", n)
			}
		}
		s, slices, _ := serviceByName(ix, ns, "lb")
		if len(s.LoadBalancerIPs) != 2 || len(slices) != 1 {
			return fmt.Errorf("lb: ingress IPs %v, %d slices", s.LoadBalancerIPs, len(slices))
		}
		if _, sl, _ := serviceByName(ix, ns, "headless"); len(sl) != 1 {
			return fmt.Errorf("headless: %d slices", len(sl))
		}
		return nil
	})

	s, slices, _ := serviceByName(ix, ns, "lb")
	if !s.InternalTrafficLocal || !s.ExternalTrafficLocal || !s.SessionAffinityClientIP || s.ServiceProxyName {
		t.Errorf("lb flags: itp %v etp %v affinity %v proxy-name %v", s.InternalTrafficLocal, s.ExternalTrafficLocal, s.SessionAffinityClientIP, s.ServiceProxyName)
	}
	if len(s.LoadBalancerVIPs) != 1 || s.LoadBalancerVIPs[0] != ip("192.0.2.1") {
		t.Errorf("lb VIPs %v, want only 192.0.2.1 (the other is ipMode Proxy)", s.LoadBalancerVIPs)
	}
	if len(s.IPFamilies) != 1 || s.IPFamilies[0] != corev1.IPv4Protocol || len(s.ClusterIPs) != 1 {
		t.Errorf("lb families %v, cluster IPs %v (API server defaults to single-stack IPv4)", s.IPFamilies, s.ClusterIPs)
	}
	if s.Type != "LoadBalancer" || s.Ports[0].NodePort == 0 {
		t.Errorf("lb type %q, node port %d", s.Type, s.Ports[0].NodePort)
	}
	byIP := map[string]kube.EndpointInfo{}
	for _, e := range slices[0] {
		byIP[e.IP.String()] = e
	}
	if e := byIP["10.244.5.1"]; !e.Ready || !e.Serving || e.Terminating || e.Node != node || e.NotProxied ||
		e.Hints == nil || !reflect.DeepEqual(e.Hints.ForZones, []string{"zone-a"}) || !reflect.DeepEqual(e.Hints.ForNodes, []string{"node-kp"}) {
		t.Errorf("ready endpoint = %+v (hints %+v)", e, e.Hints)
	}
	if e := byIP["10.244.5.2"]; e.Ready || !e.Serving || !e.Terminating || e.Hints != nil || e.Pod.Name != "lb-2" {
		t.Errorf("terminating endpoint = %+v", e)
	}
	if p := slices[0][0].Ports; len(p) != 1 || p[0] != (kube.EndpointPort{Name: "http", Port: 8080, Protocol: "tcp"}) {
		t.Errorf("ports %+v", p)
	}

	if s, _, _ := serviceByName(ix, ns, "other-proxy"); !s.ServiceProxyName {
		t.Error("other-proxy: service-proxy-name label lost")
	}
	if s, sl, _ := serviceByName(ix, ns, "headless"); len(s.ClusterIPs) != 0 || !sl[0][0].NotProxied {
		t.Errorf("headless: cluster IPs %v, slice endpoint not marked NotProxied: %+v", s.ClusterIPs, sl[0][0])
	}
	if s, _, _ := serviceByName(ix, ns, "external"); s.Type != "ExternalName" || len(s.ClusterIPs) != 0 {
		t.Errorf("external: type %q, cluster IPs %v", s.Type, s.ClusterIPs)
	}

	// An update of the conditions (the endpoint stops terminating) reaches the index.
	cur, err := cp.Client.DiscoveryV1().EndpointSlices(ns).Get(ctx, "lb-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Endpoints[1].Conditions = discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no}
	if _, err := cp.Client.DiscoveryV1().EndpointSlices(ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cpl.Eventually(t, waitFor, func() error {
		_, sl, _ := serviceByName(ix, ns, "lb")
		for _, e := range sl[0] {
			if e.IP == ip("10.244.5.2") && (!e.Ready || e.Terminating) {
				return fmt.Errorf("conditions not updated: %+v", e)
			}
		}
		return nil
	})
}

// testNodeZone: the watcher follows the zone label of its own Node, and
// only of its own (field selector metadata.name).
func testNodeZone(t *testing.T, cp *cpl.ControlPlane) {
	const node = "node-zone"
	ctx := context.Background()
	w := startWatcher(t, cp.Config, node, "", nil)
	waitSynced(t, w)
	ix := w.Index()
	if z := ix.NodeZone(); z != "" {
		t.Errorf("zone %q before the Node exists", z)
	}
	other := cp.CreateNode(t, "node-zone-other", "10.99.3.3")
	other.Labels[corev1.LabelTopologyZone] = "zone-other"
	if _, err := cp.Client.CoreV1().Nodes().Update(ctx, other, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	n := cp.CreateNode(t, node, "10.99.3.2")
	n.Labels[corev1.LabelTopologyZone] = "zone-a"
	n, err := cp.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cpl.Eventually(t, waitFor, func() error {
		if z := ix.NodeZone(); z != "zone-a" {
			return fmt.Errorf("zone %q, want zone-a", z)
		}
		return nil
	})
	n.Labels[corev1.LabelTopologyZone] = "zone-b"
	if _, err := cp.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cpl.Eventually(t, waitFor, func() error {
		if z := ix.NodeZone(); z != "zone-b" {
			return fmt.Errorf("zone %q after relabelling, want zone-b", z)
		}
		return nil
	})
	// One Node is cached, whatever the cluster's size.
	got, err := testutil.CollectAndFormat(w.Collector(), expfmt.TypeTextPlain, "netinspect_kube_objects")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(got), `netinspect_kube_objects{resource="nodes"} 1`) {
		t.Errorf("kube_objects, want nodes 1:\n%s", got)
	}
}
