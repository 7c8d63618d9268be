package node

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WaitPod polls the pod until ok(pod) holds, failing after timeout with
// the pod's last status and the kubelet's log.
func (n *Node) WaitPod(t testing.TB, namespace, name string, timeout time.Duration, ok func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		p, err := n.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		cancel()
		if err == nil && ok(p) {
			return p
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("phase %s, conditions %v, containers %v", p.Status.Phase, p.Status.Conditions, p.Status.ContainerStatuses)
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s/%s: condition not met within %v: %s\nkubelet log:\n%s", namespace, name, timeout, last, n.kubelet.tail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// PodReady reports whether the pod's Ready condition is true.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// WaitPodReady waits until the pod is Ready.
func (n *Node) WaitPodReady(t testing.TB, namespace, name string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	return n.WaitPod(t, namespace, name, timeout, PodReady)
}

// ContainerPID returns the PID (as the test process sees it) of the main
// process of the pod's container named container: the process of the
// container's cgroup (the cgroupfs driver names it by the container's ID)
// that is PID 1 of the container's PID namespace.
func (n *Node) ContainerPID(t testing.TB, p *corev1.Pod, container string) int {
	t.Helper()
	var id string
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == container {
			_, id, _ = strings.Cut(s.ContainerID, "://")
		}
	}
	if id == "" {
		t.Fatalf("pod %s/%s has no started container %s: %v", p.Namespace, p.Name, container, p.Status.ContainerStatuses)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err != nil || !strings.Contains(string(cg), n.cgroupRoot+"/") || !strings.Contains(string(cg), "/"+id+"\n") {
			continue
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(status), "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == "NSpid:" && f[len(f)-1] == "1" {
				return pid
			}
		}
	}
	t.Fatalf("no process of container %s (%s) of pod %s/%s", container, id, p.Namespace, p.Name)
	return 0
}

// NetNSPath is the network namespace of the pod's container, as a path the
// test process can open (setns, nsenter --net, controlplane.DialerIn).
func (n *Node) NetNSPath(t testing.TB, p *corev1.Pod, container string) string {
	t.Helper()
	return fmt.Sprintf("/proc/%d/ns/net", n.ContainerPID(t, p, container))
}
