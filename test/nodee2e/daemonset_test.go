// Package nodee2e runs the DaemonSet of deploy/ on a real node (test/node):
// kubelet, containerd, runc and the CNI bridge and ptp plugins, from the
// image `make image` builds (deploy/image/image.sh), and checks what only a
// real node exercises: the HTTPS probes, the security context as the kernel
// applies it, the in-cluster config and RBAC, authentication of scrapes
// against the API server, the hostPath mounts and their propagation, the
// mapping of real CNI veths to pods, conntrack and kube-proxy's rules on the
// node, discovery, scrapes and alerting by a real Prometheus configured as
// the ServiceMonitor says, and a rolling update.
package nodee2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/node"
	"github.com/netinspect/netinspect/test/testenv"
)

const (
	// The image is imported once and tagged twice, as pushing it under a
	// second tag would: the second tag is the rolling update's target.
	tag1 = "node-e2e-1"
	tag2 = "node-e2e-2"

	namespace = "netinspect"
	dsName    = "netinspect"
	container = "netinspect"
	// Workload pods live here.
	appNS = "shop"
)

// imageLine is the image reference of the DaemonSet in rendered manifests
// (kustomize's plain, Helm's quoted), whatever its tag.
var imageLine = regexp.MustCompile(`(?m)^(\s+image:\s+)"?` + regexp.QuoteMeta(node.ImageRepository) + `(:[^"\s]+)?"?\s*$`)

// cluster is the node with the DaemonSet applied and the workload pods the
// subtests look at.
type cluster struct {
	n   *node.Node
	s   *scraper
	dir string
	// tokenFile holds the token of Prometheus's ServiceAccount, which the
	// scraper (s) uses too.
	tokenFile string
	// before is a pod on the bridge network created before the exporter
	// started, after one on the ptp network created after it, host one with
	// hostNetwork.
	before, after, host *corev1.Pod
}

// TestDaemonSet runs deploy/ on the node and checks it. Subtests that do
// not depend on each other run concurrently, so that their waits for the
// exporter's 30 s refreshes (the manifest's defaults, left as they are)
// overlap.
func TestDaemonSet(t *testing.T) {
	start := time.Now()
	c := &cluster{dir: t.TempDir()}
	// The image builds while the node comes up.
	image := buildImage(t, c.dir, tag1)
	n := node.Start(t, node.Options{})
	c.n = n
	n.ImportImage(t, image())
	n.TagImage(t, node.ImageRepository+":"+tag1, node.ImageRepository+":"+tag2)
	n.StartKubeProxy(t, "iptables")
	var token string
	token, c.tokenFile = c.prometheusToken(t)
	c.s = newScraper(n, token)

	// Workloads that exist before the exporter starts: a bridge pod behind
	// a Service, and a hostNetwork pod.
	c.createPod(t, "before", false, map[string]string{"app": "web"})
	c.createPod(t, "host", true, nil)
	c.createService(t)
	c.before = n.WaitPodReady(t, appNS, "before", 2*time.Minute)
	c.host = n.WaitPodReady(t, appNS, "host", 2*time.Minute)
	clusterIP := c.connectService(t)

	c.apply(t, renderKustomize(t, n), tag1)
	ds := c.waitDaemonSetPod(t, tag1, "")
	t.Logf("DaemonSet pod %s Ready %v after the test started", ds.Name, time.Since(start).Round(100*time.Millisecond))

	// A ptp pod made after the exporter started: its network namespace is
	// mounted under /run/netns after the exporter's HostToContainer mount.
	n.UseNetwork(t, node.PTP)
	c.createPod(t, "after", false, nil)
	c.after = n.WaitPodReady(t, appNS, "after", 2*time.Minute)

	probed := c.waitProbed(t, ds)
	prom, interval := c.startPrometheus(t)
	t.Run("pod", func(t *testing.T) {
		t.Run("security context", func(t *testing.T) { t.Parallel(); c.checkSecurity(t, ds) })
		t.Run("in-cluster config and RBAC", func(t *testing.T) { t.Parallel(); c.checkServiceAccount(t, ds) })
		t.Run("authentication", func(t *testing.T) { t.Parallel(); c.checkAuth(t) })
		t.Run("conntrack", func(t *testing.T) { t.Parallel(); c.checkConntrack(t) })
		t.Run("kube-proxy rules and attribution", func(t *testing.T) { t.Parallel(); c.checkKubeProxy(t, clusterIP) })
		t.Run("Prometheus discovery", func(t *testing.T) { t.Parallel(); c.checkDiscovery(t, prom, ds.Name) })
		// The after pod is deleted last.
		t.Run("veths", func(t *testing.T) {
			t.Parallel()
			t.Run("veth mapping", func(t *testing.T) { c.checkVeths(t) })
			t.Run("traffic counters", func(t *testing.T) { c.checkTraffic(t) })
			t.Run("deleted pod", func(t *testing.T) { c.checkDeletedPod(t) })
		})
	})
	t.Run("probes", func(t *testing.T) { c.checkProbes(t, ds, probed) })

	pod := ds.Name
	t.Run("NetinspectDown", func(t *testing.T) { pod = c.checkDown(t, prom, pod) })
	t.Run("rolling update", func(t *testing.T) { c.checkRollingUpdate(t, prom, pod, interval) })
	t.Run("Helm chart", func(t *testing.T) { c.checkHelm(t) })
	if t.Failed() {
		t.Logf("exporter log:\n%s", c.exporterLog(t))
	}
	t.Logf("TestDaemonSet took %v", time.Since(start).Round(100*time.Millisecond))
}

// buildImage starts building the exporter's image (tag) into dir and
// returns a function that waits for the archive, failing the test if the
// build failed. The build stops if the test ends first.
func buildImage(t *testing.T, dir, tag string) func() string {
	t.Helper()
	testenv.RequireCommand(t, "mmdebstrap")
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		archive string
		err     error
		took    time.Duration
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		a, err := node.BuildNetinspectImage(ctx, dir, tag)
		done <- result{a, err, time.Since(start)}
	}()
	var r *result
	wait := func() result {
		if r == nil {
			got := <-done
			r = &got
		}
		return *r
	}
	t.Cleanup(func() { cancel(); wait() })
	return func() string {
		t.Helper()
		got := wait()
		if got.err != nil {
			t.Fatal(got.err)
		}
		t.Logf("deploy/image/image.sh built %s in %v", filepath.Base(got.archive), got.took.Round(100*time.Millisecond))
		return got.archive
	}
}

// exporterLog returns the end of the DaemonSet pod's log, through the API
// server and the kubelet.
func (c *cluster) exporterLog(t *testing.T) string {
	out, err := c.n.KubectlErr("-n", namespace, "logs", "daemonset/"+dsName, "--tail=60")
	if err != nil {
		return err.Error()
	}
	return out
}

// createPod creates a pod running the pause image (host network or the
// node's current CNI network).
func (c *cluster) createPod(t *testing.T, name string, hostNetwork bool, labels map[string]string) {
	t.Helper()
	c.n.CP.EnsureNamespace(t, appNS)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := c.n.Client.CoreV1().Pods(appNS).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			HostNetwork:                   hostNetwork,
			Containers:                    []corev1.Container{{Name: "c", Image: node.PauseImage}},
			TerminationGracePeriodSeconds: new(int64),
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", appNS, name, err)
	}
}

// createService makes Service web (port 80 to 8080) that selects the
// before pod; the EndpointSlice controller gives it its endpoint.
func (c *cluster) createService(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := c.n.Client.CoreV1().Services(appNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Service web: %v", err)
	}
}

// renderKustomize renders deploy/ as `kubectl apply -k deploy/` would.
func renderKustomize(t *testing.T, n *node.Node) []byte {
	t.Helper()
	return []byte(n.Kubectl(t, "kustomize", filepath.Join(node.RepoRoot(), "deploy")))
}

// apply applies rendered manifests with the DaemonSet's image reference, and
// nothing else, changed to the image imported under tag.
func (c *cluster) apply(t *testing.T, manifests []byte, tag string) {
	t.Helper()
	if got := len(imageLine.FindAll(manifests, -1)); got != 1 {
		t.Fatalf("the manifests name %s %d times, want once", node.ImageRepository, got)
	}
	out := imageLine.ReplaceAll(manifests, []byte("${1}"+node.ImageRepository+":"+tag))
	path := filepath.Join(c.dir, "manifests-"+tag+".yaml")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	c.n.Kubectl(t, "apply", "-f", path)
}

// waitDaemonSetPod waits until the DaemonSet has rolled out tag to the node
// and its pod (not the one named notName) is Ready, and returns the pod.
func (c *cluster) waitDaemonSetPod(t *testing.T, tag, notName string) *corev1.Pod {
	t.Helper()
	want := node.ImageRepository + ":" + tag
	deadline := time.Now().Add(3 * time.Minute)
	var last string
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		pods, err := c.n.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=netinspect"})
		cancel()
		if err != nil {
			last = err.Error()
			time.Sleep(time.Second)
			continue
		}
		last = fmt.Sprintf("%d pods", len(pods.Items))
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.Name == notName || p.DeletionTimestamp != nil || p.Spec.Containers[0].Image != want {
				continue
			}
			if node.PodReady(p) {
				return p
			}
			last = fmt.Sprintf("pod %s: phase %s, conditions %v, containers %v", p.Name, p.Status.Phase, p.Status.Conditions, p.Status.ContainerStatuses)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("no Ready DaemonSet pod with image %s within 3 min: %s\nexporter log:\n%s", want, last, c.exporterLog(t))
	return nil
}

// checkHelm removes what deploy/ installed and installs the Helm chart's
// default output instead (the same objects; the image reference changed as
// for deploy/): its pod becomes Ready on the node.
func (c *cluster) checkHelm(t *testing.T) {
	helm := controlplane.Binary(t, "helm")
	out, err := exec.Command(helm, "template", "netinspect", filepath.Join(node.RepoRoot(), "deploy", "helm", "netinspect"), "--namespace", namespace).Output()
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	c.n.Kubectl(t, "delete", "-f", filepath.Join(c.dir, "manifests-"+tag2+".yaml"), "--wait=true", "--timeout=2m")
	c.apply(t, out, tag1)
	ds := c.waitDaemonSetPod(t, tag1, "")
	c.s.waitFor(t, time.Minute, "the Helm-installed exporter's caches synced", func(s series) (bool, string) {
		v, ok := s.one("netinspect_kube_cache_synced", map[string]string{"resource": "pods"})
		return ok && v == 1, fmt.Sprintf("kube_cache_synced{resource=\"pods\"} = %v (present %v)", v, ok)
	})
	t.Logf("Helm chart's pod %s Ready", ds.Name)
}

// daemonSet returns the DaemonSet.
func (c *cluster) daemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ds, err := c.n.Client.AppsV1().DaemonSets(namespace).Get(ctx, dsName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// deletePod deletes a pod (with its grace period) and waits until it is
// gone.
func (c *cluster) deletePod(t *testing.T, ns, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := c.n.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{})
	cancel()
	if err != nil {
		t.Fatalf("delete pod %s/%s: %v", ns, name, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := c.n.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		cancel()
		if apierrors.IsNotFound(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s/%s still there 1 min after its deletion (%v)", ns, name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// lines returns the non-empty lines of out.
func lines(out string) []string {
	var l []string
	for _, s := range strings.Split(out, "\n") {
		if s = strings.TrimSpace(s); s != "" {
			l = append(l, s)
		}
	}
	return l
}
