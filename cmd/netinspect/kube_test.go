package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/netinspect/netinspect/test/controlplane"
)

// TestBinaryEnrichesFromKubeAPIServer runs the binary against a real
// kube-apiserver: the pods of its node appear in pod_info and pod_labels,
// another node's pods never do, and /readyz reports the synced cache.
func TestBinaryEnrichesFromKubeAPIServer(t *testing.T) {
	cp := controlplane.Start(t)
	cp.CreateNode(t, "node-a", "10.99.0.1")
	cp.CreatePod(t, controlplane.PodSpec{Namespace: "shop", Name: "cart-0", Node: "node-a",
		IPs: []string{"10.244.1.7", "fd00:10:244:1::7"}, Labels: map[string]string{"app": "cart", "team": "x"}})
	cp.CreatePod(t, controlplane.PodSpec{Namespace: "shop", Name: "far-away", Node: "node-b", IPs: []string{"10.244.2.9"}})

	e := startExporter(t, cp.NS, nil, "--kubeconfig="+cp.AdminKubeconfig, "--node-name=node-a", "--kube.pod-labels=app")

	want := []string{
		`netinspect_kube_cache_synced{resource="pods"} 1`,
		`netinspect_kube_cache_synced{resource="services"} 1`,
		`netinspect_kube_cache_synced{resource="endpointslices"} 1`,
		`netinspect_pod_ip_info{family="ipv4",ip="10.244.1.7",namespace="shop",pod="cart-0"} 1`,
		`netinspect_pod_ip_info{family="ipv6",ip="fd00:10:244:1::7",namespace="shop",pod="cart-0"} 1`,
		`netinspect_pod_labels{label_app="cart",namespace="shop",pod="cart-0"} 1`,
	}
	var body string
	controlplane.Eventually(t, 30*time.Second, func() error {
		_, body = e.get(t, cp.NS, "/metrics")
		for _, line := range want {
			if !strings.Contains(body, line) {
				return fmt.Errorf("missing %s", line)
			}
		}
		return nil
	})
	if strings.Contains(body, "far-away") {
		t.Errorf("a pod of another node is exported:\n%s", grepLines(body, "far-away"))
	}
	if strings.Contains(body, "label_team") {
		t.Errorf("a label outside the allowlist is exported:\n%s", grepLines(body, "label_team"))
	}
	if _, ready := e.get(t, cp.NS, "/readyz"); !strings.Contains(ready, "synced") {
		t.Errorf("/readyz = %q, want it to report the synced cache", ready)
	}
}

func TestBinaryRejectsBadKubeconfig(t *testing.T) {
	out, code := runBinary(t, "--kubeconfig=/nonexistent/kubeconfig", "--web.listen-address=127.0.0.1:0")
	if code != exitStartup || !strings.Contains(out, "--kubeconfig") {
		t.Errorf("exit %d, output %q; want 1 and a message naming --kubeconfig", code, out)
	}
}
