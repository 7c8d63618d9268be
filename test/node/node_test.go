package node_test

import (
	"context"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netinspect/netinspect/test/node"
)

// TestNode brings up the node and runs a pod on each CNI network: the
// scheduler binds it, the kubelet runs it under containerd, the plugin gives
// it an address of its network's range and a veth whose host end is in the
// node's namespace; deleting it removes the veth. Teardown leaves no
// process, cgroup or mount behind (checked after the node's test ends).
func TestNode(t *testing.T) {
	sysctls := kernelSysctls(t)
	var cgroupRoot string
	var initPID int
	t.Run("cluster", func(t *testing.T) {
		n := node.Start(t, node.Options{})
		cgroupRoot, initPID = n.CgroupRoot(), n.InitPID()
		for _, nw := range []node.Network{node.Bridge, node.PTP} {
			n.UseNetwork(t, nw)
			name := "pause-" + nw.Plugin
			createPod(t, n, "default", name)
			p := n.WaitPodReady(t, "default", name, 2*time.Minute)
			ip, err := netip.ParseAddr(p.Status.PodIP)
			if err != nil || !nw.Subnet.Contains(ip) {
				t.Errorf("%s pod IP %q, want one in %s", nw.Plugin, p.Status.PodIP, nw.Subnet)
			}
			route := n.MustRun(t, "ip", "route", "get", p.Status.PodIP)
			dev := map[string]string{"bridge": "dev cni0", "ptp": "dev veth"}[nw.Plugin]
			if !strings.Contains(route, dev) {
				t.Errorf("route to the %s pod %s: %q, want %q", nw.Plugin, p.Status.PodIP, route, dev)
			}
		}
		before := vethCount(t, n)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := n.Client.CoreV1().Pods("default").Delete(ctx, "pause-ptp", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(time.Minute)
		for vethCount(t, n) != before-1 {
			if time.Now().After(deadline) {
				t.Fatalf("the deleted pod's veth is still on the node after 1 min (%d veths, want %d)", vethCount(t, n), before-1)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	if got := kernelSysctls(t); got != sysctls {
		t.Errorf("kernel-wide sysctls the kubelet sets changed on the host: %s, were %s", got, sysctls)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(initPID)); err == nil {
		t.Errorf("the node's PID 1 (%d) still runs after teardown", initPID)
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory" + cgroupRoot); cgroupRoot != "" && err == nil {
		t.Errorf("cgroup %s left after teardown", cgroupRoot)
	}
}

func createPod(t *testing.T, n *node.Node, namespace, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := n.Client.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			Containers:                    []corev1.Container{{Name: "c", Image: node.PauseImage}},
			TerminationGracePeriodSeconds: new(int64),
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", namespace, name, err)
	}
}

func vethCount(t *testing.T, n *node.Node) int {
	t.Helper()
	return strings.Count(n.MustRun(t, "ip", "-o", "link", "show", "type", "veth"), "\n")
}

// kernelSysctls reads, in the test process's (the host's) /proc, the
// kernel-wide sysctls the kubelet sets at start-up when they differ from its
// values.
func kernelSysctls(t *testing.T) string {
	t.Helper()
	var out []string
	for _, k := range []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"} {
		b, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, k+"="+strings.TrimSpace(string(b)))
	}
	return strings.Join(out, " ")
}
