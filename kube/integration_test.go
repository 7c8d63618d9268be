package kube_test

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/netinspect/netinspect/kube"
	cpl "github.com/netinspect/netinspect/test/controlplane"
)

const waitFor = 45 * time.Second

// startWatcher runs a Watcher against cfg until the test ends.
func startWatcher(t *testing.T, cfg *rest.Config, node, podLabels string, logger *zap.Logger) *kube.Watcher {
	t.Helper()
	w, err := kube.NewWatcher(kube.Config{REST: cfg, NodeName: node, PodLabels: kube.ParseLabelAllowlist(podLabels), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w.Start(ctx)
	return w
}

func waitSynced(t *testing.T, w *kube.Watcher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if !w.WaitForSync(ctx) {
		_, detail := w.Ready()
		t.Fatalf("caches not synced within %v: %s", waitFor, detail)
	}
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestAgainstAPIServer runs the enrichment against a real kube-apiserver
// (one control plane for all subtests).
func TestAgainstAPIServer(t *testing.T) {
	cp := cpl.Start(t)

	t.Run("Pods", func(t *testing.T) { testPods(t, cp) })
	t.Run("ServicesAndEndpointSlices", func(t *testing.T) { testServices(t, cp) })
	t.Run("WhatKubeProxyReads", func(t *testing.T) { testKubeProxyFields(t, cp) })
	t.Run("NodeZone", func(t *testing.T) { testNodeZone(t, cp) })
	t.Run("RBACFromDeploy", func(t *testing.T) { testRBACFromDeploy(t, cp) })
	t.Run("RBACNarrowRole", func(t *testing.T) { testRBACNarrow(t, cp) })
	// Last: it restarts the API server.
	t.Run("APIServerRestart", func(t *testing.T) { testRestart(t, cp) })
}

func testPods(t *testing.T, cp *cpl.ControlPlane) {
	const node = "node-pods"
	w := startWatcher(t, cp.Config, node, "app,app.kubernetes.io/name", nil)
	waitSynced(t, w)
	ix := w.Index()

	web := cp.CreatePod(t, cpl.PodSpec{Namespace: "pods", Name: "web", Node: node, IPs: []string{"10.244.0.5", "fd00:10:244::5"},
		Labels: map[string]string{"app": "web", "app.kubernetes.io/name": "web", "secret": "no"}})
	cp.CreatePod(t, cpl.PodSpec{Namespace: "pods", Name: "elsewhere", Node: "node-other", IPs: []string{"10.244.9.9"}, Labels: map[string]string{"app": "x"}})
	cp.CreatePod(t, cpl.PodSpec{Namespace: "pods", Name: "hostnet", Node: node, HostNetwork: true, IPs: []string{"192.168.50.1"}})

	cpl.Eventually(t, waitFor, func() error {
		for _, a := range []string{"10.244.0.5", "fd00:10:244::5"} {
			ref, ok := ix.PodByIP(ip(a))
			if !ok || ref != (kube.PodRef{Namespace: "pods", Name: "web", UID: string(web.UID)}) {
				return fmt.Errorf("PodByIP(%s) = %v, %v", a, ref, ok)
			}
		}
		pods := ix.Pods()
		if n := len(pods); n != 2 {
			return fmt.Errorf("%d pods indexed, want 2 (web, hostnet)", n)
		}
		// CreatePod sets the status (IPs) in a second write: wait for it.
		for _, p := range pods {
			if p.Name == "hostnet" && len(p.IPs) != 1 {
				return fmt.Errorf("hostnet has IPs %v, want its status's one", p.IPs)
			}
		}
		return nil
	})
	if _, ok := ix.PodByIP(ip("10.244.9.9")); ok {
		t.Error("pod of another node is indexed")
	}
	if _, ok := ix.PodByIP(ip("192.168.50.1")); ok {
		t.Error("hostNetwork pod is indexed by IP")
	}
	for _, p := range ix.Pods() {
		if p.Name == "elsewhere" {
			t.Error("pod of another node listed")
		}
	}

	col := w.Collector()
	hostnet, err := cp.Client.CoreV1().Pods("pods").Get(context.Background(), "hostnet", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`
# HELP netinspect_pod_info Information about a pod of this node, from the Kubernetes API.
# TYPE netinspect_pod_info gauge
netinspect_pod_info{host_network="false",namespace="pods",node="node-pods",pod="web",uid="%s"} 1
netinspect_pod_info{host_network="true",namespace="pods",node="node-pods",pod="hostnet",uid="%s"} 1
# HELP netinspect_pod_ip_info One series per IP address of a pod of this node (status.podIPs).
# TYPE netinspect_pod_ip_info gauge
netinspect_pod_ip_info{family="ipv4",ip="10.244.0.5",namespace="pods",pod="web"} 1
netinspect_pod_ip_info{family="ipv4",ip="192.168.50.1",namespace="pods",pod="hostnet"} 1
netinspect_pod_ip_info{family="ipv6",ip="fd00:10:244::5",namespace="pods",pod="web"} 1
# HELP netinspect_pod_labels Allowlisted Kubernetes labels of a pod of this node (--kube.pod-labels), as label_<sanitized name>.
# TYPE netinspect_pod_labels gauge
netinspect_pod_labels{label_app="",label_app_kubernetes_io_name="",namespace="pods",pod="hostnet"} 1
netinspect_pod_labels{label_app="web",label_app_kubernetes_io_name="web",namespace="pods",pod="web"} 1
`, web.UID, hostnet.UID)
	if err := testutil.CollectAndCompare(col, strings.NewReader(want), "netinspect_pod_info", "netinspect_pod_ip_info", "netinspect_pod_labels"); err != nil {
		t.Error(err)
	}

	// Update labels and IPs.
	web, err = cp.Client.CoreV1().Pods("pods").Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	web.Labels["app"] = "web-v2"
	if _, err := cp.Client.CoreV1().Pods("pods").Update(context.Background(), web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	web, _ = cp.Client.CoreV1().Pods("pods").Get(context.Background(), "web", metav1.GetOptions{})
	cp.SetPodIPs(t, web, "10.244.0.6", "fd00:10:244::6")
	cpl.Eventually(t, waitFor, func() error {
		if _, ok := ix.PodByIP(ip("10.244.0.5")); ok {
			return fmt.Errorf("old IP 10.244.0.5 still resolves")
		}
		if _, ok := ix.PodByIP(ip("fd00:10:244::6")); !ok {
			return fmt.Errorf("new IP fd00:10:244::6 does not resolve")
		}
		for _, p := range ix.Pods() {
			if p.Name == "web" && p.Labels["app"] != "web-v2" {
				return fmt.Errorf("labels not updated: %v", p.Labels)
			}
			if _, ok := p.Labels["secret"]; ok {
				return fmt.Errorf("label outside the allowlist kept: %v", p.Labels)
			}
		}
		return nil
	})

	// Delete.
	cp.DeletePod(t, "pods", "web")
	cpl.Eventually(t, waitFor, func() error {
		if _, ok := ix.PodByIP(ip("10.244.0.6")); ok {
			return fmt.Errorf("deleted pod still resolves")
		}
		if n := testutil.CollectAndCount(col, "netinspect_pod_info"); n != 1 {
			return fmt.Errorf("%d pod_info series after delete, want 1", n)
		}
		return nil
	})
}

func testServices(t *testing.T, cp *cpl.ControlPlane) {
	w := startWatcher(t, cp.Config, "node-svc", "", nil)
	waitSynced(t, w)
	ix := w.Index()

	ports := []cpl.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}
	web := cp.CreateService(t, cpl.ServiceSpec{Namespace: "svc", Name: "web", Type: corev1.ServiceTypeNodePort, DualStack: true,
		ExternalIPs: []string{"203.0.113.7"}, Ports: ports})
	// A single unnamed port is named by its number.
	single := cp.CreateService(t, cpl.ServiceSpec{Namespace: "svc", Name: "single", Ports: []cpl.ServicePort{{Port: 5353, Protocol: corev1.ProtocolUDP}}})
	if len(web.Spec.ClusterIPs) != 2 {
		t.Fatalf("service not dual-stack: %v", web.Spec.ClusterIPs)
	}
	cp.CreateEndpointSlice(t, "svc", "web-v4", "web", discoveryv1.AddressTypeIPv4, ports, []cpl.Endpoint{
		{IP: "10.244.3.3", Node: "node-b", Pod: "web-1", PodUID: "uid-web-1"},
		{IP: "10.244.3.4", Node: "node-c", Pod: "web-2", NotReady: true},
	})
	cp.CreateEndpointSlice(t, "svc", "web-v6", "web", discoveryv1.AddressTypeIPv6, ports, []cpl.Endpoint{
		{IP: "fd00:10:244::3:3", Node: "node-b", Pod: "web-1", PodUID: "uid-web-1"},
	})

	httpRef := kube.ServicePortRef{Namespace: "svc", Service: "web", Port: "http"}
	cpl.Eventually(t, waitFor, func() error {
		for _, a := range append(append([]string{}, web.Spec.ClusterIPs...), "203.0.113.7") {
			if got, ok := ix.ServiceByAddrPort("tcp", ip(a), 80); !ok || got != httpRef {
				return fmt.Errorf("ServiceByAddrPort(tcp, %s, 80) = %v, %v", a, got, ok)
			}
		}
		if got, ok := ix.ServiceByAddrPort("udp", ip(web.Spec.ClusterIPs[1]), 53); !ok || got.Port != "dns" {
			return fmt.Errorf("udp port dns: %v, %v", got, ok)
		}
		if got, ok := ix.ServiceByAddrPort("udp", ip(single.Spec.ClusterIP), 5353); !ok || got != (kube.ServicePortRef{Namespace: "svc", Service: "single", Port: "5353"}) {
			return fmt.Errorf("unnamed udp port: %v, %v", got, ok)
		}
		if got, ok := ix.ServiceByNodePort("tcp", uint16(web.Spec.Ports[0].NodePort)); !ok || got != httpRef {
			return fmt.Errorf("ServiceByNodePort(%d) = %v, %v", web.Spec.Ports[0].NodePort, got, ok)
		}
		for _, a := range []string{"10.244.3.3", "fd00:10:244::3:3"} {
			if got, ok := ix.EndpointPodByIP(ip(a)); !ok || got != (kube.PodRef{Namespace: "svc", Name: "web-1", UID: "uid-web-1"}) {
				return fmt.Errorf("EndpointPodByIP(%s) = %v, %v", a, got, ok)
			}
		}
		for _, s := range ix.Services() {
			if s.Namespace == "svc" && s.Name == "web" {
				if s.ReadyEndpoints != 2 || s.Ports[0].ReadyEndpoints != 2 {
					return fmt.Errorf("ready endpoints %d (port http %d), want 2", s.ReadyEndpoints, s.Ports[0].ReadyEndpoints)
				}
				return nil
			}
		}
		return fmt.Errorf("service svc/web not listed")
	})
	if _, ok := ix.ServiceByAddrPort("tcp", ip(web.Spec.ClusterIPs[0]), 81); ok {
		t.Error("unknown port resolved")
	}

	if err := cp.Client.CoreV1().Services("svc").Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cp.Client.DiscoveryV1().EndpointSlices("svc").Delete(context.Background(), "web-v4", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	cpl.Eventually(t, waitFor, func() error {
		if _, ok := ix.ServiceByAddrPort("tcp", ip(web.Spec.ClusterIPs[0]), 80); ok {
			return fmt.Errorf("deleted service still resolves")
		}
		if _, ok := ix.EndpointPodByIP(ip("10.244.3.3")); ok {
			return fmt.Errorf("deleted slice's endpoint still resolves")
		}
		return nil
	})
}

func testRBACFromDeploy(t *testing.T, cp *cpl.ControlPlane) {
	cp.CreateObjects(t, "../deploy/rbac.yaml")
	cfg, _ := cp.ServiceAccountConfig(t, "netinspect", "netinspect")
	w := startWatcher(t, cfg, "node-rbac", "*", nil)
	waitSynced(t, w)
	if ok, detail := w.Ready(); !ok {
		t.Errorf("Ready() = false, %q", detail)
	}
	// The "kubernetes" Service exists in every cluster.
	cpl.Eventually(t, waitFor, func() error {
		if _, ok := w.Index().ServiceByAddrPort("tcp", ip("10.96.0.1"), 443); !ok {
			return fmt.Errorf("default/kubernetes service not resolved")
		}
		return nil
	})
}

func testRBACNarrow(t *testing.T, cp *cpl.ControlPlane) {
	ctx := context.Background()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "netinspect-narrow"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods", "services", "nodes"}, Verbs: []string{"get", "list", "watch"}}},
	}
	if _, err := cp.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "netinspect-narrow"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "netinspect-narrow"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "narrow", Namespace: "netinspect"}},
	}
	if _, err := cp.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg, _ := cp.ServiceAccountConfig(t, "netinspect", "narrow")
	core, logs := observer.New(zap.InfoLevel)
	w := startWatcher(t, cfg, "node-narrow", "", zap.New(core))

	cpl.Eventually(t, waitFor, func() error {
		if !w.Synced(kube.ResourcePods) || !w.Synced(kube.ResourceServices) || !w.Synced(kube.ResourceNodes) {
			return fmt.Errorf("pods/services/nodes not synced")
		}
		if f := w.Forbidden(); !reflect.DeepEqual(f, []string{kube.ResourceEndpointSlices}) {
			return fmt.Errorf("Forbidden() = %v", f)
		}
		return nil
	})
	if w.Synced(kube.ResourceEndpointSlices) {
		t.Fatal("endpointslices synced without permission")
	}
	ready, detail := w.Ready()
	if ready || !strings.Contains(detail, "forbidden: endpointslices") {
		t.Errorf("Ready() = %v, %q", ready, detail)
	}
	want := `
# HELP netinspect_kube_cache_synced 1 when the Kubernetes informer cache of the resource has synced, 0 while it has not (API unreachable or RBAC forbidden).
# TYPE netinspect_kube_cache_synced gauge
netinspect_kube_cache_synced{resource="endpointslices"} 0
netinspect_kube_cache_synced{resource="nodes"} 1
netinspect_kube_cache_synced{resource="pods"} 1
netinspect_kube_cache_synced{resource="services"} 1
`
	if err := testutil.CollectAndCompare(w.Collector(), strings.NewReader(want), "netinspect_kube_cache_synced"); err != nil {
		t.Error(err)
	}
	// The reflector keeps retrying (with back-off); the refusal is logged once.
	time.Sleep(2 * time.Second)
	entries := logs.FilterMessageSnippet("forbids").All()
	if len(entries) != 1 {
		t.Fatalf("forbidden logged %d times, want once: %v", len(entries), entries)
	}
	fields := entries[0].ContextMap()
	// The first request is a list, or a watch when client-go streams the
	// initial list (WatchListClient).
	if fields["resource"] != "endpointslices" || (fields["missing_verb"] != "list" && fields["missing_verb"] != "watch") {
		t.Errorf("forbidden log fields = %v", fields)
	}
}

func testRestart(t *testing.T, cp *cpl.ControlPlane) {
	const node = "node-restart"
	w := startWatcher(t, cp.Config, node, "", nil)
	waitSynced(t, w)
	ix := w.Index()
	cp.CreatePod(t, cpl.PodSpec{Namespace: "restart", Name: "before", Node: node, IPs: []string{"10.244.7.1"}})
	cpl.Eventually(t, waitFor, func() error {
		if _, ok := ix.PodByIP(ip("10.244.7.1")); !ok {
			return fmt.Errorf("pod before not indexed")
		}
		return nil
	})

	// While the exporter's API server is down, the cluster changes through a
	// second API server on the same etcd (started first, to keep the outage
	// short: client-go's reflector backs off up to [30 s, 60 s) between
	// retries, which bounds how long catching up can take).
	const other = cpl.APIServerPort + 1
	cp.StartAPIServer(t, other)
	cp.Stop(t)
	ocfg := cp.ConfigFor(other)
	ocfg.TLSClientConfig.CertData, ocfg.TLSClientConfig.KeyData = cp.Config.TLSClientConfig.CertData, cp.Config.TLSClientConfig.KeyData
	ocs := kubernetes.NewForConfigOrDie(ocfg)
	ctx := context.Background()
	p, err := ocs.CoreV1().Pods("restart").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "during", Namespace: "restart"},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/none"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status.Phase, p.Status.PodIP, p.Status.PodIPs = corev1.PodRunning, "10.244.7.2", []corev1.PodIP{{IP: "10.244.7.2"}}
	if _, err := ocs.CoreV1().Pods("restart").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	zero := int64(0)
	if err := ocs.CoreV1().Pods("restart").Delete(ctx, "before", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	// The index keeps serving what it had.
	if _, ok := ix.PodByIP(ip("10.244.7.1")); !ok {
		t.Error("index lost its pods during the outage")
	}
	cp.StopAPIServer(t, other)

	start := time.Now()
	cp.Restart(t)
	cpl.Eventually(t, 120*time.Second, func() error {
		if _, ok := ix.PodByIP(ip("10.244.7.2")); !ok {
			return fmt.Errorf("pod created during the outage not indexed")
		}
		if _, ok := ix.PodByIP(ip("10.244.7.1")); ok {
			return fmt.Errorf("pod deleted during the outage still indexed")
		}
		return nil
	})
	t.Logf("caught up %v after the API server restart began", time.Since(start).Round(100*time.Millisecond))
	names := []string{}
	for _, p := range ix.Pods() {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	if !reflect.DeepEqual(names, []string{"during"}) {
		t.Errorf("pods after restart = %v", names)
	}
}
