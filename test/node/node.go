// Package node runs a real single-node Kubernetes cluster for tests: the
// control plane of test/controlplane (etcd, kube-apiserver) joined by
// kube-controller-manager, kube-scheduler and a kubelet 1.37.2 (built from
// the Go module proxy, test/controlplane/build.sh), with Debian's containerd
// and runc as the container runtime and the containernetworking plugins
// (bridge, ptp, host-local IPAM) making the pods' networks.
//
//	n := node.Start(t, node.Options{})          // ~15-30 s once the binaries are cached
//	n.ImportImage(t, archive)                   // an image (docker-archive) the pods can run
//	n.Kubectl(t, "apply", "-k", "deploy/")      // the cluster schedules, runs and probes pods
//	n.UseNetwork(t, node.PTP)                   // pods created from now on get a ptp veth
//	pid := n.PodPID(t, pod)                     // a process of the pod, for /proc/<pid>/...
//
// # Where it runs
//
// The node is the control plane's network namespace (cp.NS): a single-node
// cluster whose API server runs on the node, as kubeadm sets one up. Its
// InternalIP, IP, is on that namespace's loopback; pods reach the API server
// through the "kubernetes" Service (kube-proxy, StartKubeProxy) or the node's
// address.
//
// The node's processes run in a mount and PID namespace of its own, entered
// with nsenter (not `ip netns exec`, which gives every command a mount
// namespace of its own and so hides the kubelet's volume mounts from
// containerd). In it tmpfs cover the paths the runtime hard-codes (/run,
// /var/lib, /var/log), so nothing of the host's /run, /var/lib or /var/log
// is touched, and /proc is the node's. /run/netns is a shared mount, as on a
// real node, so a pod that mounts it with HostToContainer propagation sees
// the network namespaces of pods created after it started. PID 1 of the
// namespace is the pause program; its death kills every process of the node
// (daemons, shims, containers), which is how the node is torn down, and it
// dies with the test process (parent-death signal). containerd's
// configuration, root, state and socket are under the test's directory; the
// pods' cgroups under a cgroup of the node's own, removed at the end.
//
// # What this machine kind needs (kernel 6.18, cgroup v1, no CAP_SYS_RESOURCE)
//
//   - cgroup v1 hybrid: the kubelet runs with failCgroupV1: false and the
//     cgroupfs driver (there is no systemd), under cgroupRoot /ni-node-<id>.
//   - no CAP_SYS_RESOURCE, so no process may lower an oom_score_adj: the
//     kubelet and kube-proxy run with oom-score-adj 0 and containerd with
//     restrict_oom_score_adj (it clamps the kubelet's -998 for sandboxes).
//   - the node lifecycle controller (kube-controller-manager) removes the
//     not-ready taint the kubelet registers with, so ordinary pods schedule.
//   - the API server prefers the InternalIP for logs and exec.
package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

const (
	// IP is the node's InternalIP, on the node namespace's loopback.
	IP = "10.99.1.1"
	// ClusterCIDR holds every pod network of Networks (kube-proxy's
	// --cluster-cidr).
	ClusterCIDR = "10.244.0.0/16"
	// PauseImage is the sandbox image, built by the harness.
	PauseImage = "registry.k8s.io/pause:3.10"
)

// kubeletSysctls are the kernel-wide sysctls the kubelet (1.37,
// pkg/kubelet/cm setupKernelTunables) sets when they differ from these
// values.
var kubeletSysctls = []struct {
	name  string
	value int
}{
	{"vm/overcommit_memory", 1},
	{"vm/panic_on_oom", 0},
	{"kernel/panic", 10},
	{"kernel/panic_on_oops", 1},
	{"kernel/keys/root_maxkeys", 1000000},
	{"kernel/keys/root_maxbytes", 25000000},
}

// Options configures Start.
type Options struct {
	// Name is the Node's name (default "node-1").
	Name string
	// Network is the CNI network of the first pods (default Bridge).
	Network Network
	// NodeMonitorGrace is how long the node may miss heartbeats before the
	// node lifecycle controller marks it NotReady (default 20 s).
	NodeMonitorGrace time.Duration
}

// Node is a running single-node cluster.
type Node struct {
	// Name is the Node object's name.
	Name string
	// CP is the control plane; CP.Client is an admin clientset.
	CP *controlplane.ControlPlane
	// Client is CP.Client.
	Client kubernetes.Interface
	// NS is the node's network namespace (CP.NS).
	NS *netns.NS
	// Dir holds the node's configuration, containerd's root and state, and
	// the daemons' logs (<name>.log).
	Dir string

	t          testing.TB
	init       *exec.Cmd // unshare, parent of the node's PID 1
	initPID    int       // PID 1 of the node, as seen from the test process
	initDone   chan struct{}
	cgroupRoot string
	containerd *proc
	kubelet    *proc
	procs      []*proc
	network    Network
}

// Start brings up the cluster and waits until its Node is Ready and
// schedulable. Everything is torn down when the test ends, pass or fail:
// the daemons by PID, then the node's PID namespace, its cgroups, and the
// network namespace with the control plane.
func Start(t testing.TB, o Options) *Node {
	t.Helper()
	start := time.Now()
	testenv.RequireRoot(t)
	for _, c := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "unshare", "gcc"} {
		testenv.RequireCommand(t, c)
	}
	for _, p := range []string{"bridge", "ptp", "host-local", "loopback"} {
		_, err := os.Stat(filepath.Join(cniBinDir, p))
		testenv.Require(t, err == nil, fmt.Sprintf("CNI plugin %s not in %s (Debian package containernetworking-plugins)", p, cniBinDir))
	}
	for _, b := range []string{"kubelet", "kube-controller-manager", "kube-scheduler"} {
		controlplane.Binary(t, b)
	}
	if o.Name == "" {
		o.Name = "node-1"
	}
	if o.Network == (Network{}) {
		o.Network = Bridge
	}
	if o.NodeMonitorGrace == 0 {
		o.NodeMonitorGrace = 20 * time.Second
	}

	cp := controlplane.StartWith(t, controlplane.Options{Cluster: true})
	n := &Node{Name: o.Name, CP: cp, Client: cp.Client, NS: cp.NS, Dir: t.TempDir(), t: t}
	n.NS.MustRun("ip", "addr", "add", IP+"/32", "dev", "lo")
	// A real node reaches Service IPs through its default route: the
	// kernel needs a route to a ClusterIP before kube-proxy's DNAT (nat
	// OUTPUT) rewrites it. This node has no uplink: the route points at
	// the loopback, from the node's address.
	n.NS.MustRun("ip", "route", "add", controlplane.ServiceCIDRv4, "dev", "lo", "src", IP)
	pause := buildPauseImage(t, n.Dir)

	n.startInit(t)
	n.makeCgroupRoot(t)
	n.startContainerd(t)
	n.ImportImage(t, pause)
	n.UseNetwork(t, o.Network)

	cp.StartControllerManager(t, o.NodeMonitorGrace)
	cp.StartScheduler(t)
	n.startKubelet(t)
	n.waitSchedulable(t)
	t.Logf("node %s up after %v", n.Name, time.Since(start).Round(100*time.Millisecond))
	return n
}

// startInit makes the node's mount and PID namespaces: unshare, entered
// into the node's network namespace, forks PID 1 (the pause program) after
// mounting the node's own /proc, /run, /var/lib and /var/log.
func (n *Node) startInit(t testing.TB) {
	t.Helper()
	pause := filepath.Join(n.Dir, "pause-init")
	if err := copyFile(filepath.Join(n.Dir, "pause"), pause, 0o755); err != nil {
		t.Fatal(err)
	}
	script := []string{
		"set -e",
		// This copy of the host's mount table holds the host's network
		// namespace mounts (other tests' too, which would then outlive
		// their removal) and the host's /run/netns, which the node's would
		// only shadow: containerd checks the propagation of the first
		// /run/netns it finds. Detach them, in this namespace only (its
		// mounts are private).
		`sed -n 's/^[^ ]* [^ ]* [^ ]* [^ ]* \([^ ]*\) .* - nsfs .*/\1/p' /proc/self/mountinfo | while read -r m; do umount -l "$m" || true; done`,
		"if mountpoint -q /run/netns; then umount -l /run/netns; fi",
		"mount -t tmpfs -o mode=0755 node-run /run",
		"mount -t tmpfs -o mode=0755 node-var-lib /var/lib",
		"mount -t tmpfs -o mode=0755 node-var-log /var/log",
		"mkdir /run/node-sysctl",
	}
	// The kubelet sets these kernel-wide sysctls (kernel.panic=10,
	// kernel.panic_on_oops=1, vm.overcommit_memory=1, ...) at start-up
	// unless they already hold its values, and refuses to start if it
	// cannot; they are not per network namespace, so it would change the
	// host's. The node's /proc shows it files holding its values instead.
	for _, k := range kubeletSysctls {
		f := "/run/node-sysctl/" + strings.ReplaceAll(k.name, "/", ".")
		script = append(script, fmt.Sprintf("echo %d > %s", k.value, f), fmt.Sprintf("mount --bind %s /proc/sys/%s", f, k.name))
	}
	script = append(script,
		// The runtime bind-mounts each pod's network namespace here; shared,
		// so a container's HostToContainer mount of it sees later pods.
		"mkdir -p /run/netns",
		"mount --bind /run/netns /run/netns",
		"mount --make-shared /run/netns",
		"exec "+pause,
	)
	logPath := filepath.Join(n.Dir, "init.log")
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	cmd := exec.Command("nsenter", "--net="+n.NS.Path(), "--",
		"unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc",
		"sh", "-c", strings.Join(script, "\n"))
	cmd.Stdout, cmd.Stderr = lf, lf
	// If the test process dies, unshare gets SIGKILL and, by --kill-child,
	// so does the node's PID 1, which takes every process of the node along.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := controlplane.Spawn(cmd); err != nil {
		t.Fatalf("start the node's namespaces: %v", err)
	}
	n.init, n.initDone = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(n.initDone) }()
	t.Cleanup(n.teardown)
	n.initPID, err = childOf(cmd.Process.Pid, n.initDone)
	if err != nil {
		t.Fatalf("start the node's namespaces: %v\n%s", err, controlplane.Tail(logPath, 20))
	}
	// PID 1 is ready once it is the pause program (the mounts are done).
	deadline := time.Now().Add(10 * time.Second)
	for {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", n.initPID))
		if exe == pause {
			return
		}
		select {
		case <-n.initDone:
			t.Fatalf("the node's init exited:\n%s", controlplane.Tail(logPath, 20))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node's init is %q after 10 s, want %s:\n%s", exe, pause, controlplane.Tail(logPath, 20))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// teardown stops the kubelet, kills the node's PID 1 (and so every process
// of the node), waits for the daemons, and removes the node's cgroups.
func (n *Node) teardown() {
	if n.t.Failed() {
		for _, p := range n.procs {
			n.t.Logf("--- %s log (tail) ---\n%s", p.name, p.tail())
		}
	}
	if n.kubelet != nil {
		n.kubelet.stop()
	}
	if n.initPID != 0 {
		_ = syscall.Kill(n.initPID, syscall.SIGKILL)
	}
	for _, p := range n.procs {
		<-p.done
	}
	// unshare reaps PID 1 and exits; killed before that, it would leave
	// PID 1 a zombie for whoever inherits it.
	select {
	case <-n.initDone:
	case <-time.After(10 * time.Second):
		_ = n.init.Process.Kill()
		<-n.initDone
	}
	if n.cgroupRoot != "" {
		if err := removeCgroups(n.cgroupRoot); err != nil {
			n.t.Errorf("remove the node's cgroups: %v", err)
		}
	}
}

// CgroupRoot is the node's cgroup (the kubelet's cgroupRoot), the same in
// every hierarchy.
func (n *Node) CgroupRoot() string { return n.cgroupRoot }

// InitPID is the PID of the node's PID 1, as the test process sees it.
func (n *Node) InitPID() int { return n.initPID }

// Command returns a command that runs argv in the node's mount, network and
// PID namespaces (nsenter forks: the command's PID is nsenter's).
func (n *Node) Command(ctx context.Context, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append(n.nsenterArgs(), argv...)...)
}

// Run runs argv in the node's namespaces, with a one-minute bound, and
// returns its combined output.
func (n *Node) Run(argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := n.Command(ctx, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("on node %s: %s: %w: %s", n.Name, strings.Join(argv, " "), err, out)
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (n *Node) MustRun(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := n.Run(argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Kubectl runs the cached kubectl as the cluster's admin (in the node's
// network namespace) and returns its standard output.
func (n *Node) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.KubectlErr(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// KubectlErr is Kubectl returning the error (with standard error) instead
// of failing.
func (n *Node) KubectlErr(args ...string) (string, error) {
	kubectl := controlplane.BinaryPath("kubectl")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := n.NS.Command(ctx, append([]string{kubectl, "--kubeconfig=" + n.CP.AdminKubeconfig,
		"--cache-dir=" + filepath.Join(n.Dir, "kubectl-cache")}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// waitSchedulable waits until the Node is Ready and has no taint left.
func (n *Node) waitSchedulable(t testing.TB) {
	t.Helper()
	var last string
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if !n.kubelet.running() {
			t.Fatalf("kubelet exited:\n%s", n.kubelet.tail())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		node, err := n.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		cancel()
		if err == nil {
			ready := false
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready = true
				}
			}
			if ready && len(node.Spec.Taints) == 0 {
				return
			}
			last = fmt.Sprintf("ready=%v taints=%v", ready, node.Spec.Taints)
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("node %s not Ready and untainted within 2 min (%s); kubelet log:\n%s", n.Name, last, n.kubelet.tail())
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}

// pidsOf lists the PIDs in a cgroup.procs file.
func pidsOf(procsFile string) []int {
	b, err := os.ReadFile(procsFile)
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
