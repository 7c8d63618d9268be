package collector

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/netinspect/netinspect/kube"
	cpl "github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/netns"
)

// TestAttributionWithRealAPIServer builds the cluster of attributionIndex as
// real objects in a kube-apiserver, lets the kube watcher fill the Index
// from it, and checks the same ground truth as the in-process test.
func TestAttributionWithRealAPIServer(t *testing.T) {
	cp := cpl.Start(t)
	for _, p := range []cpl.PodSpec{
		{Namespace: "default", Name: "client-a", Node: attrNode, IPs: []string{"10.244.0.10", "fd00:10:244::10"}},
		{Namespace: "default", Name: "client-b", Node: attrNode, IPs: []string{"10.244.0.11"}},
		{Namespace: "web", Name: "backend-1", Node: attrNode, IPs: []string{"10.244.0.20"}},
		{Namespace: "web", Name: "backend-2", Node: attrNode, IPs: []string{"10.244.0.21"}},
		{Namespace: "kube-system", Name: "coredns", Node: "node-b", IPs: []string{"10.244.5.3"}},
		{Namespace: "kube-system", Name: "proxy", Node: attrNode, HostNetwork: true, IPs: []string{"192.168.1.1"}},
	} {
		cp.CreatePod(t, p)
	}
	cp.CreateService(t, cpl.ServiceSpec{Namespace: "kube-system", Name: "kube-dns", DualStack: true,
		ClusterIPs: []string{"10.96.0.10", "fd00:10:96::a"},
		Ports: []cpl.ServicePort{
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
			{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
		}})
	cp.CreateService(t, cpl.ServiceSpec{Namespace: "web", Name: "frontend", ClusterIPs: []string{"10.96.0.100"},
		Ports: []cpl.ServicePort{{Port: 80}}})

	w, err := kube.NewWatcher(kube.Config{REST: cp.Config, NodeName: attrNode, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w.Start(ctx)
	if !w.WaitForSync(ctx) {
		_, detail := w.Ready()
		t.Fatalf("kube caches not synced: %s", detail)
	}
	ix := w.Index()
	// The pods of this node (hostNetwork included) and the services, plus
	// the API server's own "kubernetes" Service.
	for {
		pods, svcs, _ := ix.Counts()
		if pods == 5 && svcs == 3 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("index holds %d pods and %d services, want 5 and 3", pods, svcs)
		}
		time.Sleep(20 * time.Millisecond)
	}

	ns := netns.New(t, "attr-kube")
	fillFlows(t, ns, attributionFlows)
	a := newNetnsAttribution(t, ns, ix, 0)
	mustPass(t, a)
	if err := testutil.GatherAndCompare(attributionRegistry(t, a), strings.NewReader(attributionWantSeries),
		"netinspect_conntrack_pod_entries", "netinspect_conntrack_service_entries"); err != nil {
		t.Error(err)
	}
}
