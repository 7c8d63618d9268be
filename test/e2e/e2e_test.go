// Package e2e runs netinspect with real Prometheus and Alertmanager (the
// Debian packages) against a real kernel: a network namespace plays the node,
// the exporter built by deploy/image/build.sh runs in it, Prometheus scrapes
// it with the project's rules (alerts/netinspect.rules.yml, `for:` shortened),
// and Alertmanager delivers to a webhook receiver served by this test inside
// the same namespace. Everything listens on that namespace's loopback, so the
// test touches nothing of the host's network.
package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/prometheus"
	"github.com/netinspect/netinspect/test/testenv"
)

const (
	exporterAddr     = "127.0.0.1:10271"
	alertmanagerAddr = "127.0.0.1:9093"

	// shortFor replaces every alert's `for:` in the test's copy of the
	// rules, so a condition fires within seconds instead of minutes.
	shortFor = "3s"

	// The Kubernetes view of the node: its name and address, one pod on it
	// backing one Service that kube-proxy programs.
	nodeName = "e2e-node"
	nodeIP   = "10.99.1.1"
	podIP    = "10.244.1.5"
)

// node is the namespace that plays a Kubernetes node, with the exporter,
// Prometheus, Alertmanager and a webhook receiver on its loopback.
type node struct {
	ns     *netns.NS
	client *http.Client // dials inside ns
	hooks  *webhook
	prom   *prometheus.Server
	// exporter is the netinspect process.
	exporter *exec.Cmd
}

func TestConntrackFullAlertIsDelivered(t *testing.T) {
	testenv.RequireRoot(t)
	prom := testenv.RequireCommand(t, "prometheus")
	am := lookAlertmanager(t)
	testenv.RequireCommand(t, "promtool")
	testenv.RequireCommand(t, "nft")

	n := startNode(t, prom, am)

	// Before filling: the exporter is up, its table nearly empty, no alert.
	n.prom.WaitQuery(t, `up{job="netinspect"} == 1`, time.Minute)
	n.prom.WaitQuery(t, `up{job="netinspect-without-token"} == 0`, time.Minute)
	n.prom.WaitQuery(t, `netinspect_scrape_collector_success{collector="conntrack"} == 1`, time.Minute)
	// The exporter sees kube-proxy's rules for the Service and the pod on
	// its node through the control plane.
	n.prom.WaitQuery(t, `netinspect_kube_proxy_mode_info{mode="iptables"} == 1`, time.Minute)
	// With the default flags no series per Service port: what kube-proxy
	// programmed is judged against the API instead, and it is in sync
	// (default/kubernetes and shop/web).
	n.prom.WaitQuery(t, `netinspect_kube_proxy_service_ports{family="ipv4",state="in_sync"} >= 2`, 2*time.Minute)
	n.prom.WaitQuery(t, `sum(netinspect_kube_proxy_service_ports{state!="in_sync"}) == 0`, time.Minute)
	if got := queryScalar(t, n, `count(netinspect_iptables_service_endpoints) or vector(0)`); got != 0 {
		t.Errorf("%v iptables_service_endpoints series with the default flags, want none", got)
	}
	n.prom.WaitQuery(t, `netinspect_pod_info{namespace="shop",pod="web-0",node="`+nodeName+`"} == 1`, time.Minute)
	n.prom.WaitQuery(t, `netinspect_pod_interface_info{namespace="shop",pod="web-0",host_interface="veth-web0"} == 1`, time.Minute)
	limit := queryScalar(t, n, `netinspect_conntrack_entries_limit`)
	if limit <= 0 {
		t.Fatalf("netinspect_conntrack_entries_limit = %v", limit)
	}
	if got := n.hooks.find("NetinspectConntrackTableFull"); got != nil {
		t.Fatalf("NetinspectConntrackTableFull delivered before the table was filled: %+v", got)
	}

	// Fill the node's table to nf_conntrack_max with assured entries, as a
	// busy node's long-lived connections would.
	start := time.Now()
	created, err := ctfill.Create(n.ns.FD(), ctfill.Spec{
		Count: int(limit), Src: netip.MustParseAddr("10.2.0.1"), Dst: netip.MustParseAddr("10.96.0.1"), DstPort: 443,
		Assured: true,
	})
	if err != nil && !errors.Is(err, ctfill.ErrTableFull) {
		t.Fatalf("fill conntrack table: created %d of %v: %v", created, limit, err)
	}
	t.Logf("filled the node's conntrack table with %d entries in %v", created, time.Since(start).Round(time.Millisecond))
	filled := time.Now()

	// Bound: scrape (1s) + rule evaluation (1s) + for (3s) + Alertmanager
	// group_wait (1s), with a wide margin for a loaded machine.
	const bound = 2 * time.Minute
	alert := n.hooks.wait(t, "NetinspectConntrackTableFull", bound)
	t.Logf("Alertmanager delivered NetinspectConntrackTableFull %v after the table was filled", time.Since(filled).Round(time.Millisecond))
	for k, want := range map[string]string{"severity": "critical", "reason": "usage", "job": "netinspect", "instance": exporterAddr} {
		if alert.Labels[k] != want {
			t.Errorf("alert label %s = %q, want %q (labels %v)", k, alert.Labels[k], want, alert.Labels)
		}
	}
	if want := "https://github.com/netinspect/netinspect/blob/main/docs/runbooks/NetinspectConntrackTableFull.md"; alert.Annotations["runbook_url"] != want {
		t.Errorf("runbook_url = %q, want %q", alert.Annotations["runbook_url"], want)
	}
	if want := "The conntrack table of " + exporterAddr + " is 100% full."; !strings.HasPrefix(alert.Annotations["description"], want) {
		t.Errorf("description = %q, want it to start with %q", alert.Annotations["description"], want)
	}
	if got := queryScalar(t, n, `instance:netinspect_conntrack_usage:ratio`); got != 1 {
		t.Errorf("instance:netinspect_conntrack_usage:ratio = %v, want 1", got)
	}

	// Collectors whose feature this node lacks (no IPVS in this kernel, no
	// kube-proxy rules) report success 0 on every scrape; they must not page.
	for _, a := range n.hooks.all() {
		if a.Labels["alertname"] == "NetinspectCollectorFailing" || a.Labels["alertname"] == "NetinspectDown" {
			t.Errorf("unexpected alert delivered: %v", a.Labels)
		}
	}

	// The attribution series describe the last pass; wait for one that saw
	// the full table, so the dashboards show it.
	n.prom.WaitQuery(t, fmt.Sprintf(`netinspect_conntrack_attribution_entries_scanned >= %d`, created), time.Minute)
	t.Run("dashboards", func(t *testing.T) { checkDashboardQueries(t, n) })
	logUsage(t, n.exporter.Process.Pid)
}

// logUsage logs a process's peak resident memory and CPU time so far, the
// figures the DaemonSet's resource requests and limits are based on.
func logUsage(t *testing.T, pid int) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Logf("exporter usage: %v", err)
		return
	}
	var hwm string
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			hwm = strings.TrimSpace(strings.TrimPrefix(l, "VmHWM:"))
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Logf("exporter usage: %v", err)
		return
	}
	// Fields after the command name (which is in parentheses): utime and
	// stime are the 12th and 13th, in clock ticks (100 per second on Linux).
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	t.Logf("exporter usage: peak RSS %s, CPU %.2fs (user+system) since start", hwm, float64(utime+stime)/100)
}

// lookAlertmanager finds Alertmanager: Debian names it prometheus-alertmanager.
func lookAlertmanager(t *testing.T) string {
	for _, name := range []string{"prometheus-alertmanager", "alertmanager"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testenv.Require(t, false, "prometheus-alertmanager (or alertmanager) not found on PATH")
	return ""
}

func startNode(t *testing.T, prom, am string) *node {
	t.Helper()
	ns := netns.New(t, "e2e")
	dir := t.TempDir()
	n := &node{ns: ns}
	n.client = &http.Client{
		Timeout: 10 * time.Second,
		// The exporter serves a self-signed certificate, as in deploy/.
		Transport: &http.Transport{DialContext: controlplane.DialerIn(ns.Path()), DisableKeepAlives: true,
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // as the ServiceMonitor does
	}

	// The webhook receiver listens on the namespace's loopback.
	l, err := controlplane.ListenIn(ns.Path(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen in %s: %v", ns.Name, err)
	}
	n.hooks = newWebhook(t, l)

	// kube-proxy's rules make the kernel track connections in ns, and
	// with the table full it drops every new one, the test's queries and
	// Prometheus' scrapes included (on a real node Prometheus scrapes from
	// elsewhere and reuses its connections). The monitoring stack's
	// loopback traffic is exempted, as the notrack rules of a raw table do.
	ns.MustRun("nft", "add table inet e2e_notrack")
	ns.MustRun("nft", "add chain inet e2e_notrack pre { type filter hook prerouting priority raw ; }")
	ns.MustRun("nft", "add rule inet e2e_notrack pre iif lo notrack")
	ns.MustRun("nft", "add chain inet e2e_notrack out { type filter hook output priority raw ; }")
	ns.MustRun("nft", "add rule inet e2e_notrack out oif lo notrack")

	kubeconfig, promToken := startKubernetes(t, ns, dir)

	exporter := filepath.Join(dir, "netinspect")
	build := exec.Command("../../deploy/image/build.sh", exporter)
	build.Env = append(os.Environ(), "VERSION=e2e", "REVISION=e2e")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build exporter: %v\n%s", err, out)
	}

	rules := prometheus.ShortRules(t, dir, shortFor)
	promConfig := fmt.Sprintf(`
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q]
alerting:
  alertmanagers:
    - static_configs: [{targets: [%q]}]
scrape_configs:
  # As deploy/monitoring/servicemonitor.yaml: HTTPS without verifying the
  # self-signed certificate, Prometheus's own ServiceAccount token.
  - job_name: netinspect
    scheme: https
    tls_config: {insecure_skip_verify: true}
    authorization: {credentials_file: %q}
    static_configs: [{targets: [%q]}]
  # The same without a token: refused (401), so up is 0.
  - job_name: netinspect-without-token
    scheme: https
    tls_config: {insecure_skip_verify: true}
    static_configs: [{targets: [%[4]q]}]
`, rules, alertmanagerAddr, promToken, exporterAddr)
	writeFile(t, filepath.Join(dir, "alertmanager.yml"), fmt.Sprintf(`
route:
  receiver: webhook
  group_by: [alertname, instance, reason]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: webhook
    webhook_configs:
      - url: %q
        send_resolved: false
`, "http://"+l.Addr().String()+"/"))

	n.exporter, _ = ns.Start(t, dir, "netinspect", exporter,
		"--web.listen-address="+exporterAddr, "--log.format=console",
		"--kubeconfig="+kubeconfig, "--node-name="+nodeName,
		"--web.tls.self-signed", "--web.kubernetes-auth",
		"--collector.iptables.refresh-interval=2s", "--collector.nftables.refresh-interval=2s",
		"--collector.conntrack-attribution.interval=5s")
	ns.Start(t, dir, "alertmanager", am,
		"--config.file="+filepath.Join(dir, "alertmanager.yml"),
		"--storage.path="+filepath.Join(dir, "am-data"),
		"--web.listen-address="+alertmanagerAddr,
		"--cluster.listen-address=")
	n.prom = prometheus.Start(t, ns, prom, promConfig)
	waitHTTP(t, n, "https://"+exporterAddr+"/healthz", time.Minute)
	waitHTTP(t, n, "http://"+alertmanagerAddr+"/-/ready", time.Minute)
	return n
}

// startKubernetes runs a real control plane (test/controlplane) and, in ns,
// the real kube-proxy in iptables mode for a Node named nodeName with one
// Service whose one endpoint is a pod on that node. It returns a kubeconfig
// of the exporter's ServiceAccount with the rights of deploy/rbac.yaml that
// works from inside ns, and the path of a file in dir holding a token of a
// Prometheus ServiceAccount that may get /metrics, as in kube-prometheus.
func startKubernetes(t *testing.T, ns *netns.NS, dir string) (kubeconfig, promToken string) {
	t.Helper()
	cp := controlplane.Start(t)
	ns.MustRun("ip", "addr", "add", nodeIP+"/32", "dev", "lo")
	cp.CreateNode(t, nodeName, nodeIP)
	// The pod's network: its own namespace, joined to the node by a veth
	// pair as a CNI plugin would, with a route to it on the node.
	podNS := netns.New(t, "e2e-pod")
	ns.MustRun("ip", "link", "add", "veth-web0", "type", "veth", "peer", "name", "eth0", "netns", podNS.Name)
	ns.MustRun("ip", "link", "set", "veth-web0", "up")
	ns.MustRun("ip", "route", "add", podIP+"/32", "dev", "veth-web0")
	podNS.MustRun("ip", "addr", "add", podIP+"/32", "dev", "eth0")
	podNS.MustRun("ip", "link", "set", "eth0", "up")
	pod := cp.CreatePod(t, controlplane.PodSpec{Namespace: "shop", Name: "web-0", Node: nodeName,
		IPs: []string{podIP}, Labels: map[string]string{"app": "web"}})
	ports := []controlplane.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, Protocol: corev1.ProtocolTCP}}
	cp.CreateService(t, controlplane.ServiceSpec{Namespace: "shop", Name: "web", Ports: ports, Selector: map[string]string{"app": "web"}})
	cp.CreateEndpointSlice(t, "shop", "web-1", "web", discoveryv1.AddressTypeIPv4, ports,
		[]controlplane.Endpoint{{IP: podIP, Node: nodeName, Pod: pod.Name, PodUID: pod.UID}})
	// StartKubeProxy already made the API server reachable from ns
	// (KubeconfigIn; calling it again would listen on the same port twice).
	cp.StartKubeProxy(t, ns, controlplane.KubeProxyOptions{NodeName: nodeName, Mode: "iptables"})

	cp.CreateObjects(t, "../../deploy/rbac.yaml")
	_, kubeconfig = cp.ServiceAccountConfig(t, "netinspect", "netinspect")
	cp.GrantNonResourceURL(t, "prometheus-k8s", "monitoring", "prometheus-k8s", "/metrics", "get")
	promToken = filepath.Join(dir, "prometheus.token")
	writeFile(t, promToken, cp.ServiceAccountToken(t, "monitoring", "prometheus-k8s"))
	return kubeconfig, promToken
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitHTTP polls url until it answers 200, up to timeout.
func waitHTTP(t *testing.T, n *node, u string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		resp, err := n.client.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s not ready after %v: %v", u, timeout, last)
}

// queryScalar returns the value of the single sample q returns.
func queryScalar(t *testing.T, n *node, q string) float64 {
	t.Helper()
	s := n.prom.Query(t, q)
	if len(s) != 1 {
		t.Fatalf("query %q returned %d samples, want 1: %v", q, len(s), s)
	}
	return s[0].Float()
}

// webhook receives Alertmanager's webhook notifications.
type webhook struct {
	mu     sync.Mutex
	alerts []amAlert
	notify chan struct{}
}

type amAlert struct {
	Status      string            `json:"status"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func newWebhook(t *testing.T, l net.Listener) *webhook {
	w := &webhook{notify: make(chan struct{}, 1)}
	srv := &http.Server{Handler: w, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return w
}

func (w *webhook) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	var msg struct {
		Alerts []amAlert `json:"alerts"`
	}
	if err := json.NewDecoder(r.Body).Decode(&msg); err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	w.mu.Lock()
	w.alerts = append(w.alerts, msg.Alerts...)
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *webhook) all() []amAlert {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]amAlert(nil), w.alerts...)
}

func (w *webhook) find(name string) *amAlert {
	for _, a := range w.all() {
		if a.Labels["alertname"] == name && a.Status == "firing" {
			return &a
		}
	}
	return nil
}

// wait returns the first firing alert named name, failing after timeout.
func (w *webhook) wait(t *testing.T, name string, timeout time.Duration) amAlert {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if a := w.find(name); a != nil {
			return *a
		}
		select {
		case <-w.notify:
		case <-deadline:
			var got []string
			for _, a := range w.all() {
				got = append(got, fmt.Sprint(a.Labels))
			}
			t.Fatalf("Alertmanager did not deliver %s within %v; delivered: %v", name, timeout, got)
		}
	}
}
