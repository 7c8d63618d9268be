package controlplane

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// CAFile is the path of the cluster CA's certificate (PEM): it signed the API
// server's serving certificate, every client certificate of ClientKubeconfig
// (so a kubelet uses it as its client CA) and IssueServingCertificate's.
func (cp *ControlPlane) CAFile() string { return cp.pki.caFile }

// ClientKubeconfig writes a kubeconfig (Dir/<name>.kubeconfig) that
// authenticates as user cn in groups with a client certificate signed by the
// cluster CA, for processes inside NS (server https://127.0.0.1:6443), and
// returns its path.
func (cp *ControlPlane) ClientKubeconfig(t testing.TB, name, cn string, groups ...string) string {
	t.Helper()
	certPEM, keyPEM, err := cp.pki.clientCert(cn, groups...)
	if err != nil {
		t.Fatalf("client certificate for %s: %v", cn, err)
	}
	path := filepath.Join(cp.Dir, name+".kubeconfig")
	if err := writeKubeconfig(path, fmt.Sprintf("https://127.0.0.1:%d", APIServerPort), cp.pki.caPEM, func(a *clientcmdapi.AuthInfo) {
		a.ClientCertificateData, a.ClientKeyData = certPEM, keyPEM
	}); err != nil {
		t.Fatal(err)
	}
	return path
}

// StartControllerManager runs kube-controller-manager in NS with its default
// controllers (ServiceAccounts, DaemonSets, EndpointSlices, node lifecycle,
// garbage collection...) and waits until its healthz answers. Start the
// control plane with Options.Cluster: the ServiceAccount tokens it signs
// need the ServiceAccount admission plugin to reach pods. nodeMonitorGrace
// is how long a node may miss heartbeats before it is marked NotReady (0:
// kube-controller-manager's default, 50 s).
func (cp *ControlPlane) StartControllerManager(t testing.TB, nodeMonitorGrace time.Duration) {
	t.Helper()
	kubeconfig := cp.ClientKubeconfig(t, "kube-controller-manager", "system:kube-controller-manager")
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=10257",
		"--leader-elect=false",
		"--root-ca-file=" + cp.pki.caFile,
		"--service-account-private-key-file=" + cp.pki.saPrivateKey,
		// Each controller with its own ServiceAccount and bootstrap role
		// (system:controller:*), as kubeadm runs it.
		"--use-service-account-credentials=true",
		"--kube-api-qps=100",
		"--kube-api-burst=200",
		"--profiling=false",
		"-v=1",
	}
	if nodeMonitorGrace > 0 {
		args = append(args, "--node-monitor-period=1s", "--node-monitor-grace-period="+nodeMonitorGrace.String())
	}
	pr := cp.startProcessT(t, "kube-controller-manager", Binary(t, "kube-controller-manager"), args...)
	cp.addComponent(pr)
	cp.waitHealthz(t, pr, "https://127.0.0.1:10257/healthz")
}

// StartScheduler runs kube-scheduler in NS and waits until its healthz
// answers.
func (cp *ControlPlane) StartScheduler(t testing.TB) {
	t.Helper()
	kubeconfig := cp.ClientKubeconfig(t, "kube-scheduler", "system:kube-scheduler")
	pr := cp.startProcessT(t, "kube-scheduler", Binary(t, "kube-scheduler"),
		"--kubeconfig="+kubeconfig,
		"--authentication-kubeconfig="+kubeconfig,
		"--authorization-kubeconfig="+kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=10259",
		"--leader-elect=false",
		"--profiling=false",
		"-v=1",
	)
	cp.addComponent(pr)
	cp.waitHealthz(t, pr, "https://127.0.0.1:10259/healthz")
}

// waitHealthz polls a component's healthz (served with a self-signed
// certificate; /healthz is always allowed) from inside NS until it answers
// 200, failing with the log's tail if the process exits or 60 s pass.
func (cp *ControlPlane) waitHealthz(t testing.TB, pr *process, url string) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext:     DialerIn(cp.NS.Path()),
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // self-signed healthz of a test process
	}}
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	for {
		if !pr.running() {
			t.Fatalf("%s exited during start-up:\n%s", pr.name, pr.tail())
		}
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Logf("%s healthy after %v", pr.name, time.Since(start).Round(10*time.Millisecond))
				return
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy after 60 s: %v\n%s", pr.name, err, pr.tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (cp *ControlPlane) addComponent(pr *process) {
	cp.mu.Lock()
	cp.components = append(cp.components, pr)
	cp.mu.Unlock()
}
