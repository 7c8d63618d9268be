package kube

import (
	"context"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// TestUnreachableAPIServer: the watcher starts at once and reports not
// synced while no API server answers; lookups find nothing.
func TestUnreachableAPIServer(t *testing.T) {
	// Port 1 on loopback: connection refused.
	w, err := NewWatcher(Config{REST: &rest.Config{Host: "https://127.0.0.1:1"}, NodeName: "n"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	w.Start(ctx)
	if d := time.Since(start); d > time.Second {
		t.Errorf("Start blocked for %v", d)
	}
	if ready, detail := w.Ready(); ready || !strings.Contains(detail, "not synced: pods, services, endpointslices, nodes") {
		t.Errorf("Ready() = %v, %q", ready, detail)
	}
	want := `
# HELP netinspect_kube_cache_synced 1 when the Kubernetes informer cache of the resource has synced, 0 while it has not (API unreachable or RBAC forbidden).
# TYPE netinspect_kube_cache_synced gauge
netinspect_kube_cache_synced{resource="endpointslices"} 0
netinspect_kube_cache_synced{resource="nodes"} 0
netinspect_kube_cache_synced{resource="pods"} 0
netinspect_kube_cache_synced{resource="services"} 0
`
	if err := testutil.CollectAndCompare(w.Collector(), strings.NewReader(want), "netinspect_kube_cache_synced"); err != nil {
		t.Error(err)
	}
}

func TestNewWatcherNeedsNodeName(t *testing.T) {
	_, err := NewWatcher(Config{REST: &rest.Config{Host: "https://127.0.0.1:1"}})
	if err == nil || !strings.Contains(err.Error(), "NODE_NAME") {
		t.Errorf("err = %v, want one naming NODE_NAME", err)
	}
}

func TestPodInfoFromPod(t *testing.T) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "job", UID: "u"},
		Spec:       corev1.PodSpec{NodeName: "n"},
		Status:     corev1.PodStatus{Phase: corev1.PodSucceeded, PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}}},
	}
	// A finished pod has released its IP, which a new pod may reuse.
	if info := PodInfoFromPod(p); len(info.IPs) != 0 {
		t.Errorf("finished pod keeps IPs %v", info.IPs)
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIPs = nil // old API servers set only podIP
	if info := PodInfoFromPod(p); len(info.IPs) != 1 || info.IPs[0].String() != "10.0.0.1" {
		t.Errorf("IPs = %v, want [10.0.0.1]", info.IPs)
	}
}

func TestSlimPodKeepsOnlyWhatTheIndexNeeds(t *testing.T) {
	w := &Watcher{cfg: Config{PodLabels: ParseLabelAllowlist("app")}}
	p := fixturePods(1, "n")[0]
	o, err := w.slimPod(p)
	if err != nil {
		t.Fatal(err)
	}
	s := o.(*corev1.Pod)
	if len(s.ManagedFields) != 0 || len(s.Annotations) != 0 || len(s.Spec.Containers) != 0 {
		t.Errorf("slim pod kept managed fields, annotations or containers: %+v", s)
	}
	if len(s.Labels) != 0 {
		t.Errorf("labels outside the allowlist kept: %v", s.Labels)
	}
	if s.Name != p.Name || s.Namespace != p.Namespace || s.UID != p.UID || s.Spec.NodeName != "n" || len(s.Status.PodIPs) != 1 {
		t.Errorf("slim pod lost identity or IPs: %+v", s)
	}
}

// TestServiceInfoFromServiceKeepsWhatKubeProxyReads: the fields kube-proxy
// 1.37.2 bases its rules on survive the slim transform and the conversion.
func TestServiceInfoFromServiceKeepsWhatKubeProxyReads(t *testing.T) {
	local := corev1.ServiceInternalTrafficPolicyLocal
	cluster := corev1.ServiceInternalTrafficPolicyCluster
	vip, proxy := corev1.LoadBalancerIPModeVIP, corev1.LoadBalancerIPModeProxy
	base := func() *corev1.Service {
		return &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", Labels: map[string]string{"app": "web"}},
			Spec: corev1.ServiceSpec{
				Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10", "fd00:10:96::a"},
				IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
				Ports:      []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, NodePort: 30080}},
			},
		}
	}
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		modify func(*corev1.Service)
		check  func(t *testing.T, got ServiceInfo)
	}{
		{"defaults", func(*corev1.Service) {}, func(t *testing.T, got ServiceInfo) {
			if got.InternalTrafficLocal || got.ExternalTrafficLocal || got.SessionAffinityClientIP || got.ServiceProxyName {
				t.Errorf("flags set on a default Service: %+v", got)
			}
			if !reflect.DeepEqual(got.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}) || len(got.ClusterIPs) != 2 {
				t.Errorf("families %v, cluster IPs %v", got.IPFamilies, got.ClusterIPs)
			}
		}},
		{"traffic policies Local", func(s *corev1.Service) {
			s.Spec.InternalTrafficPolicy = &local
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}, func(t *testing.T, got ServiceInfo) {
			if !got.InternalTrafficLocal || !got.ExternalTrafficLocal {
				t.Errorf("policies lost: %+v", got)
			}
		}},
		{"traffic policies Cluster", func(s *corev1.Service) {
			s.Spec.InternalTrafficPolicy = &cluster
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
		}, func(t *testing.T, got ServiceInfo) {
			if got.InternalTrafficLocal || got.ExternalTrafficLocal {
				t.Errorf("Cluster read as Local: %+v", got)
			}
		}},
		{"session affinity", func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP }, func(t *testing.T, got ServiceInfo) {
			if !got.SessionAffinityClientIP {
				t.Error("ClientIP affinity lost")
			}
		}},
		{"another proxy's Service", func(s *corev1.Service) { s.Labels[labelServiceProxyName] = "" }, func(t *testing.T, got ServiceInfo) {
			if !got.ServiceProxyName {
				t.Error("service-proxy-name label (empty value) not seen")
			}
		}},
		{"ingress IP modes", func(s *corev1.Service) {
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.1"}, {IP: "192.0.2.2", IPMode: &vip}, {IP: "192.0.2.3", IPMode: &proxy}, {Hostname: "lb.example"}}
		}, func(t *testing.T, got ServiceInfo) {
			if !reflect.DeepEqual(got.LoadBalancerIPs, addrs("192.0.2.1", "192.0.2.2", "192.0.2.3")) {
				t.Errorf("LoadBalancerIPs = %v", got.LoadBalancerIPs)
			}
			if !reflect.DeepEqual(got.LoadBalancerVIPs, addrs("192.0.2.1", "192.0.2.2")) {
				t.Errorf("LoadBalancerVIPs = %v, want the unset and VIP ones", got.LoadBalancerVIPs)
			}
		}},
		{"legacy addresses", func(s *corev1.Service) {
			s.Spec.ExternalIPs = []string{"192.0.2.010", "::ffff:192.0.2.7", "not-an-ip", ""}
		}, func(t *testing.T, got ServiceInfo) {
			// kube-proxy's ParseIPSloppy reads "010" as decimal 10.
			if !reflect.DeepEqual(got.ExternalIPs, addrs("192.0.2.10", "192.0.2.7")) {
				t.Errorf("ExternalIPs = %v", got.ExternalIPs)
			}
		}},
		{"headless", func(s *corev1.Service) {
			s.Spec.Type, s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ServiceTypeClusterIP, corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
		}, func(t *testing.T, got ServiceInfo) {
			if len(got.ClusterIPs) != 0 {
				t.Errorf("headless Service has cluster IPs %v", got.ClusterIPs)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := base()
			tc.modify(s)
			slim, err := slimService(s)
			if err != nil {
				t.Fatal(err)
			}
			fromSlim, direct := ServiceInfoFromService(slim.(*corev1.Service)), ServiceInfoFromService(s)
			if !reflect.DeepEqual(fromSlim, direct) {
				t.Errorf("slim transform lost something:\nslim   %+v\ndirect %+v", fromSlim, direct)
			}
			tc.check(t, fromSlim)
		})
	}
}

func TestSlimServiceDropsTheRest(t *testing.T) {
	s := fixtureServices(1)[0]
	o, err := slimService(s)
	if err != nil {
		t.Fatal(err)
	}
	slim := o.(*corev1.Service)
	if len(slim.ManagedFields) != 0 || len(slim.Labels) != 0 || len(slim.Spec.Selector) != 0 {
		t.Errorf("slim service kept managed fields, labels or selector: %+v", slim)
	}
}

// TestEndpointsFromSliceForKubeProxy: conditions with the API's defaults,
// hints, and the addresses kube-proxy ignores.
func TestEndpointsFromSliceForKubeProxy(t *testing.T) {
	yes, no := true, false
	name, port, proto := "http", int32(8080), corev1.ProtocolTCP
	node := "node-a"
	slice := func(addressType discoveryv1.AddressType, labels map[string]string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		l := map[string]string{discoveryv1.LabelServiceName: "web"}
		for k, v := range labels {
			l[k] = v
		}
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "web-1", Labels: l},
			AddressType: addressType,
			Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}, {Port: &port}},
			Endpoints:   eps,
		}
	}
	ep := func(addr string, c discoveryv1.EndpointConditions, h *discoveryv1.EndpointHints) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: c, NodeName: &node, Hints: h}
	}
	es := slice(discoveryv1.AddressTypeIPv4, nil,
		ep("10.0.0.1", discoveryv1.EndpointConditions{}, nil),
		ep("10.0.0.2", discoveryv1.EndpointConditions{Ready: &no, Serving: &yes, Terminating: &yes}, nil),
		ep("10.0.0.3", discoveryv1.EndpointConditions{Ready: &yes}, &discoveryv1.EndpointHints{
			ForZones: []discoveryv1.ForZone{{Name: "zone-a"}}, ForNodes: []discoveryv1.ForNode{{Name: "node-a"}, {Name: "node-b"}}}),
		ep("10.0.0.4", discoveryv1.EndpointConditions{Ready: &yes}, &discoveryv1.EndpointHints{}),
		discoveryv1.Endpoint{Addresses: []string{"10.0.0.5", "10.0.0.6"}},
	)
	slim, err := slimEndpointSlice(es)
	if err != nil {
		t.Fatal(err)
	}
	got := EndpointsFromSlice(slim.(*discoveryv1.EndpointSlice))
	if !reflect.DeepEqual(got, EndpointsFromSlice(es)) {
		t.Errorf("slim transform lost something")
	}
	type cond struct{ ready, serving, terminating, notProxied bool }
	want := map[string]cond{
		"10.0.0.1": {true, true, false, false},
		"10.0.0.2": {false, true, true, false},
		"10.0.0.3": {true, true, false, false},
		"10.0.0.4": {true, true, false, false},
		"10.0.0.5": {true, true, false, false},
		"10.0.0.6": {true, true, false, true}, // not the first address
	}
	if len(got) != len(want) {
		t.Fatalf("%d endpoints, want %d: %+v", len(got), len(want), got)
	}
	for _, e := range got {
		if c := (cond{e.Ready, e.Serving, e.Terminating, e.NotProxied}); c != want[e.IP.String()] {
			t.Errorf("%s: %+v, want %+v", e.IP, c, want[e.IP.String()])
		}
		switch e.IP.String() {
		case "10.0.0.3":
			if e.Hints == nil || !reflect.DeepEqual(e.Hints.ForZones, []string{"zone-a"}) || !reflect.DeepEqual(e.Hints.ForNodes, []string{"node-a", "node-b"}) {
				t.Errorf("hints = %+v", e.Hints)
			}
		default:
			if e.Hints != nil {
				t.Errorf("%s: hints %+v, want none", e.IP, e.Hints)
			}
		}
	}
	if p := got[0].Ports; len(p) != 2 || p[0].NilName || !p[1].NilName || p[1].Name != "" {
		t.Errorf("ports %+v: want the second marked NilName", p)
	}

	for _, tc := range []struct {
		name        string
		addressType discoveryv1.AddressType
		labels      map[string]string
	}{
		{"FQDN slice", discoveryv1.AddressTypeFQDN, nil},
		{"headless slice", discoveryv1.AddressTypeIPv4, map[string]string{corev1.IsHeadlessService: ""}},
	} {
		es := slice(tc.addressType, tc.labels, ep("10.0.0.1", discoveryv1.EndpointConditions{}, nil))
		slim, _ := slimEndpointSlice(es)
		for _, e := range EndpointsFromSlice(slim.(*discoveryv1.EndpointSlice)) {
			if !e.NotProxied {
				t.Errorf("%s: %s not marked NotProxied", tc.name, e.IP)
			}
		}
	}
}

func TestSlimNodeKeepsTheZone(t *testing.T) {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{corev1.LabelTopologyZone: "zone-a", "kubernetes.io/hostname": "node-a"}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}}}}
	o, err := slimNode(n)
	if err != nil {
		t.Fatal(err)
	}
	slim := o.(*corev1.Node)
	if !reflect.DeepEqual(slim.Labels, map[string]string{corev1.LabelTopologyZone: "zone-a"}) || len(slim.Status.Addresses) != 0 || slim.Name != "node-a" {
		t.Errorf("slim node = %+v", slim)
	}
	w := &Watcher{cfg: Config{NodeName: "node-a"}, index: NewIndex("node-a")}
	w.onNode(slim)
	if z := w.index.NodeZone(); z != "zone-a" {
		t.Errorf("NodeZone() = %q", z)
	}
	w.onNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b", Labels: map[string]string{corev1.LabelTopologyZone: "zone-b"}}})
	if z := w.index.NodeZone(); z != "zone-a" {
		t.Errorf("another node's zone taken: %q", z)
	}
}

// Without an allowlist (--kube.pod-labels unset, the default) the watcher
// exports no pod_labels; with one, a series per pod.
func TestPodLabelsOnlyWithAnAllowlist(t *testing.T) {
	for _, tc := range []struct {
		allow string
		want  int
	}{{"", 0}, {"app", 1}} {
		w, err := NewWatcher(Config{REST: &rest.Config{Host: "https://127.0.0.1:1"}, NodeName: "n", PodLabels: ParseLabelAllowlist(tc.allow)})
		if err != nil {
			t.Fatal(err)
		}
		w.Index().SetPod(PodInfo{Namespace: "ns", Name: "web", Node: "n", Labels: w.cfg.PodLabels.Filter(map[string]string{"app": "web"})})
		if n := testutil.CollectAndCount(w.Collector(), "netinspect_pod_labels"); n != tc.want {
			t.Errorf("allowlist %q: %d pod_labels series, want %d", tc.allow, n, tc.want)
		}
		if n := testutil.CollectAndCount(w.Collector(), "netinspect_pod_info"); n != 1 {
			t.Errorf("allowlist %q: %d pod_info series, want 1", tc.allow, n)
		}
	}
}
