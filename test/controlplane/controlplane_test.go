package controlplane_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	cpl "github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// TestVersionsMatchToolsModules keeps the harness's version constants, which
// name the cached binaries, in step with the pinned tools modules.
func TestVersionsMatchToolsModules(t *testing.T) {
	for _, tc := range []struct{ gomod, require, version string }{
		{"../../tools/etcd/go.mod", "go.etcd.io/etcd/server/v3", cpl.EtcdVersion},
		{"../../tools/kube/go.mod", "k8s.io/kubernetes", cpl.KubeVersion},
		{"../../tools/kube/go.mod", "github.com/prometheus/prometheus", cpl.PrometheusVersion},
		{"../../tools/kube/go.mod", "helm.sh/helm/v3", cpl.HelmVersion},
	} {
		b, err := os.ReadFile(tc.gomod)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), tc.require+" "+tc.version) {
			t.Errorf("%s does not require %s %s; update the constant in controlplane.go", tc.gomod, tc.require, tc.version)
		}
	}
}

func TestControlPlane(t *testing.T) {
	cp := cpl.Start(t)
	ctx := context.Background()

	// Admin can do anything; a fresh ServiceAccount can do nothing (RBAC on).
	cp.CreatePod(t, cpl.PodSpec{Namespace: "t", Name: "p", Node: "n1", IPs: []string{"10.244.0.2", "fd00:10:244::2"}})
	saCfg, kubeconfig := cp.ServiceAccountConfig(t, "t", "nobody")
	if _, err := os.Stat(kubeconfig); err != nil {
		t.Fatal(err)
	}
	_, err := kubernetes.NewForConfigOrDie(saCfg).CoreV1().Pods("t").List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("ServiceAccount without a role listed pods: err = %v", err)
	}

	svc := cp.CreateService(t, cpl.ServiceSpec{Namespace: "t", Name: "s", DualStack: true, Ports: []cpl.ServicePort{{Name: "http", Port: 80}}})
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Errorf("dual-stack service got ClusterIPs %v", svc.Spec.ClusterIPs)
	}
	cp.CreateEndpointSlice(t, "t", "s-1", "s", discoveryv1.AddressTypeIPv4, []cpl.ServicePort{{Name: "http", Port: 80}}, []cpl.Endpoint{{IP: "10.244.0.2", Node: "n1", Pod: "p"}})

	// Stop and Restart keep the data (etcd keeps running).
	cp.Stop(t)
	cp.Restart(t)
	if _, err := cp.Client.CoreV1().Pods("t").Get(ctx, "p", metav1.GetOptions{}); err != nil {
		t.Fatalf("pod lost across API server restart: %v", err)
	}
}

// TestKubeProxy runs the real kube-proxy, in each mode, in a node namespace
// of its own and waits for it to program a Service's ClusterIP.
func TestKubeProxy(t *testing.T) {
	cp := cpl.Start(t)
	for i, tc := range []struct {
		mode string
		cmd  string
		argv []string
	}{
		{"iptables", "iptables", []string{"iptables", "-t", "nat", "-S", "KUBE-SERVICES"}},
		{"nftables", "nft", []string{"nft", "list", "table", "ip", "kube-proxy"}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			testenv.RequireCommand(t, tc.cmd)
			node := netns.New(t, "node")
			nodeName := "node-" + tc.mode
			nodeIP := fmt.Sprintf("10.99.1.%d", i+2)
			node.MustRun("ip", "addr", "add", nodeIP+"/32", "dev", "lo")
			cp.CreateNode(t, nodeName, nodeIP)
			clusterIP := fmt.Sprintf("10.96.5.%d", i+5)
			svcName := "web-" + tc.mode
			cp.CreateService(t, cpl.ServiceSpec{Namespace: "default", Name: svcName, ClusterIPs: []string{clusterIP}, Ports: []cpl.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}})
			cp.CreateEndpointSlice(t, "default", svcName+"-1", svcName, discoveryv1.AddressTypeIPv4, []cpl.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}, []cpl.Endpoint{{IP: fmt.Sprintf("10.244.1.%d", i+7), Node: nodeName}})

			kp := cp.StartKubeProxy(t, node, cpl.KubeProxyOptions{NodeName: nodeName, Mode: tc.mode})
			deadline := time.Now().Add(60 * time.Second)
			for {
				out, err := node.Run(tc.argv...)
				if err == nil && strings.Contains(out, clusterIP) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("kube-proxy (%s) did not program %s in 60 s: %v\n%s\nkube-proxy log:\n%s", tc.mode, clusterIP, err, out, kp.Tail())
				}
				time.Sleep(200 * time.Millisecond)
			}
			kp.Stop()
		})
	}
}
