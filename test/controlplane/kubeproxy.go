package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/netinspect/netinspect/test/netns"
)

// KubeProxyOptions configures StartKubeProxy.
type KubeProxyOptions struct {
	// NodeName is the Node kube-proxy serves (--hostname-override). The Node
	// must exist with an InternalIP (CreateNode) for rules to be programmed.
	NodeName string
	// Mode is "iptables", "nftables" or (KubeProxyArgs only) "ipvs".
	Mode string
	// ClusterCIDR is the pod range, comma-separated for dual-stack
	// (default 10.244.0.0/16,fd00:10:244::/56).
	ClusterCIDR string
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
}

// KubeProxyArgs is the command line StartKubeProxy runs kube-proxy with,
// for a test that starts it elsewhere (the qemu VM): rules only in the
// namespace it runs in, conntrack sysctls left alone
// (--conntrack-max-per-core=0, timeouts 0), a 5 s sync period for o.Mode
// ("iptables", "nftables" or "ipvs"), then o.ExtraArgs.
func KubeProxyArgs(kubeconfig string, o KubeProxyOptions) []string {
	period := "iptables"
	if o.Mode == "ipvs" {
		period = "ipvs"
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--hostname-override=" + o.NodeName,
		"--proxy-mode=" + o.Mode,
		"--cluster-cidr=" + o.ClusterCIDR,
		"--conntrack-max-per-core=0",
		"--conntrack-min=0",
		"--conntrack-tcp-timeout-established=0s",
		"--conntrack-tcp-timeout-close-wait=0s",
		"--healthz-bind-address=127.0.0.1:10256",
		"--metrics-bind-address=127.0.0.1:10249",
		"--oom-score-adj=0",
		"--" + period + "-sync-period=5s",
		"--" + period + "-min-sync-period=0s",
		"-v=2",
	}
	return append(args, o.ExtraArgs...)
}

// KubeProxy is a kube-proxy running in a test's network namespace.
type KubeProxy struct {
	NS  *netns.NS
	Log string
	pr  *process
}

// StartKubeProxy runs the real kube-proxy inside ns against the primary API
// server and waits until its healthz answers (rules may take another sync
// period to appear; poll for them). It programs rules only in ns: conntrack
// sysctls are left alone (--conntrack-max-per-core=0, timeouts 0). It is
// stopped when the test ends.
func (cp *ControlPlane) StartKubeProxy(t testing.TB, ns *netns.NS, o KubeProxyOptions) *KubeProxy {
	t.Helper()
	bin := Binary(t, "kube-proxy")
	if o.Mode == "" {
		o.Mode = "iptables"
	}
	if o.ClusterCIDR == "" {
		o.ClusterCIDR = "10.244.0.0/16,fd00:10:244::/56"
	}
	kubeconfig := cp.KubeconfigIn(t, ns)
	dir := t.TempDir()
	args := KubeProxyArgs(kubeconfig, o)
	pr := startIn(t, t, ns, dir, "kube-proxy", bin, args...)
	kp := &KubeProxy{NS: ns, Log: pr.log, pr: pr}

	WaitKubeProxy(t, ns.Path(), pr.running, pr.tail)
	return kp
}

// WaitKubeProxy polls the metrics endpoint of a kube-proxy started with
// KubeProxyArgs in the network namespace at nsPath until it answers,
// failing t (with tail()) if running() turns false or 60 s pass.
func WaitKubeProxy(t testing.TB, nsPath string, running func() bool, tail func() string) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DialContext: DialerIn(nsPath)}, Timeout: 2 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if !running() {
			t.Fatalf("kube-proxy exited during start-up:\n%s", tail())
		}
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://127.0.0.1:10249/metrics", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-proxy metrics endpoint not up after 60 s: %v\n%s", err, tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops kube-proxy (it leaves its rules in place, as on a node).
func (kp *KubeProxy) Stop() { kp.pr.stop() }

// Pause stops kube-proxy with SIGSTOP, by its PID, as a kube-proxy stuck on
// the xtables lock, starved, or with a broken watch stands still: its
// rules stay as they are and it neither reprograms them nor deletes stale
// conntrack entries until Resume. The test's end resumes it before
// stopping it.
func (kp *KubeProxy) Pause(t testing.TB) {
	t.Helper()
	if err := kp.pr.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP kube-proxy: %v", err)
	}
	t.Cleanup(func() { _ = kp.resume() })
}

// Resume continues a paused kube-proxy (SIGCONT); it syncs at once the
// changes it missed.
func (kp *KubeProxy) Resume(t testing.TB) {
	t.Helper()
	if err := kp.resume(); err != nil {
		t.Fatalf("SIGCONT kube-proxy: %v", err)
	}
}

func (kp *KubeProxy) resume() error {
	if !kp.pr.running() {
		return nil
	}
	return kp.pr.cmd.Process.Signal(syscall.SIGCONT)
}

// Tail returns the end of kube-proxy's log, for failure messages.
func (kp *KubeProxy) Tail() string { return kp.pr.tail() }
