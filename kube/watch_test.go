package kube

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
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
	if ready, detail := w.Ready(); ready || !strings.Contains(detail, "not synced: pods, services, endpointslices") {
		t.Errorf("Ready() = %v, %q", ready, detail)
	}
	want := `
# HELP netinspect_kube_cache_synced 1 when the Kubernetes informer cache of the resource has synced, 0 while it has not (API unreachable or RBAC forbidden).
# TYPE netinspect_kube_cache_synced gauge
netinspect_kube_cache_synced{resource="endpointslices"} 0
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
