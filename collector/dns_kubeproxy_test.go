package collector

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netinspect/netinspect/kube"
	cpl "github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/testenv"
	"github.com/netinspect/netinspect/test/topology"
)

// TestDNSProbeRealKubeProxy runs two DNS "replicas" (servers of the test's
// own) in pod namespaces on the node's bridge, behind a kube-dns Service
// whose ClusterIP the real kube-proxy (iptables mode) programs in the node
// namespace, with the index fed by the real API server. It probes from the
// node namespace, then kills one replica (and marks its endpoint not ready,
// as its failing readiness probe would, so kube-proxy stops sending the
// ClusterIP's traffic to it) and expects exactly that endpoint to fail.
func TestDNSProbeRealKubeProxy(t *testing.T) {
	testenv.RequireRoot(t)
	for _, cmd := range []string{"nsenter", "iptables", "iptables-save"} {
		testenv.RequireCommand(t, cmd)
	}
	const (
		node      = "node-1"
		clusterIP = "10.96.0.10"
	)
	cp := cpl.Start(t)
	cp.EnsureNamespace(t, "kube-system")
	tp := topology.New(t)
	// The node reaches the service range through the bridge; kube-proxy's
	// OUTPUT DNAT then picks an endpoint.
	tp.Node.MustRun("ip", "route", "add", cpl.ServiceCIDRv4, "dev", topology.BridgeName)
	cp.CreateNode(t, node, topology.NodeIP)

	replicas := map[string]string{"coredns-a": "10.244.0.2", "coredns-b": "10.244.0.3"}
	var eps []cpl.Endpoint
	for _, name := range []string{"coredns-a", "coredns-b"} {
		ip := replicas[name]
		tp.AddPod(topology.PodSpec{Name: name, Interfaces: []topology.IfaceSpec{
			{Name: "eth0", Attach: topology.Bridge, Addrs: []string{ip + "/24"}, DefaultRoute: true}}})
		pod := cp.CreatePod(t, cpl.PodSpec{Namespace: "kube-system", Name: name, Node: node, IPs: []string{ip}})
		eps = append(eps, cpl.Endpoint{IP: ip, Node: node, Pod: name, PodUID: pod.UID})
	}
	dnsPorts := []cpl.ServicePort{
		{Name: "dns", Port: 53, TargetPort: 5353, Protocol: corev1.ProtocolUDP},
		{Name: "dns-tcp", Port: 53, TargetPort: 5353, Protocol: corev1.ProtocolTCP},
	}
	cp.CreateService(t, cpl.ServiceSpec{Namespace: "kube-system", Name: "kube-dns", ClusterIPs: []string{clusterIP}, Ports: dnsPorts})
	cp.CreateEndpointSlice(t, "kube-system", "kube-dns-1", "kube-dns", discoveryv1.AddressTypeIPv4, dnsPorts, eps)

	w, err := kube.NewWatcher(kube.Config{REST: cp.Config, NodeName: node, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w.Start(ctx)
	ix := w.Index()
	// The API's own ClusterIP for kubernetes.default, which the replicas
	// answer, and both endpoints in the index.
	var apiIP netip.Addr
	cpl.Eventually(t, time.Minute, func() error {
		for _, s := range ix.Services() {
			if s.Namespace == "default" && s.Name == "kubernetes" && len(s.ClusterIPs) > 0 {
				apiIP = s.ClusterIPs[0]
			}
		}
		if n := len(ix.Endpoints("kube-system", "kube-dns")); !apiIP.IsValid() || n != 2 {
			return fmt.Errorf("index: kubernetes ClusterIP %v, %d kube-dns endpoints", apiIP, n)
		}
		return nil
	})
	answers := map[string]netip.Addr{dnsTestName: apiIP}
	servers := map[string]*dnsTestServer{}
	for name, ip := range replicas {
		servers[name] = startDNSTestServer(t, tp.Pod(name).Path, ip+":5353", "good", answers)
	}

	kp := cp.StartKubeProxy(t, tp.Node, cpl.KubeProxyOptions{NodeName: node, Mode: "iptables"})

	d, err := inNS(NewDNS(DNSConfig{Timeout: time.Second}, Deps{Logger: zaptest.NewLogger(t), Index: ix}))(tp.Node)
	if err != nil {
		t.Fatal(err)
	}
	scrape := dnsTestScrape{d}
	// Wait until kube-proxy programmed the ClusterIP: every probe succeeds.
	allUp := dnsKPWant(clusterIP, replicas, "")
	cpl.Eventually(t, time.Minute, func() error {
		d.r.refresh(ctx)
		if err := testutil.CollectAndCompare(scrape, strings.NewReader(allUp), dnsCompared...); err != nil {
			return fmt.Errorf("%v\nkube-proxy:\n%s", err, kp.Tail())
		}
		return nil
	})

	// Kill replica b; its readiness probe fails and the endpoint turns not
	// ready; kube-proxy drops it from the ClusterIP's rules.
	servers["coredns-b"].Stop()
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	es, err := cp.Client.DiscoveryV1().EndpointSlices("kube-system").Get(sctx, "kube-dns-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	notReady := false
	for i := range es.Endpoints {
		if es.Endpoints[i].Addresses[0] == replicas["coredns-b"] {
			es.Endpoints[i].Conditions.Ready = &notReady
		}
	}
	if _, err := cp.Client.DiscoveryV1().EndpointSlices("kube-system").Update(sctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cpl.Eventually(t, time.Minute, func() error {
		out, err := tp.Node.Run("iptables-save", "-t", "nat")
		if err != nil {
			return err
		}
		if strings.Contains(out, "-> "+replicas["coredns-b"]+":5353") {
			return fmt.Errorf("kube-proxy still sends kube-dns traffic to %s", replicas["coredns-b"])
		}
		if !strings.Contains(out, "-> "+replicas["coredns-a"]+":5353") {
			return fmt.Errorf("kube-proxy has no rule for %s", replicas["coredns-a"])
		}
		for _, ep := range ix.Endpoints("kube-system", "kube-dns") {
			if ep.IP.String() == replicas["coredns-b"] && ep.Ready {
				return fmt.Errorf("index still has %s ready", ep.IP)
			}
		}
		return nil
	})
	// Several rounds, so the ClusterIP's probes would have met the dead
	// replica had it still been behind the Service.
	for range 5 {
		d.r.refresh(ctx)
		if err := testutil.CollectAndCompare(scrape, strings.NewReader(dnsKPWant(clusterIP, replicas, "coredns-b")), dnsCompared...); err != nil {
			t.Fatal(err)
		}
	}
}

// dnsKPWant is the expected exposition of TestDNSProbeRealKubeProxy, with
// replica dead (if not empty) failing.
func dnsKPWant(clusterIP string, replicas map[string]string, dead string) string {
	var match, rcode, info, success []string
	add := func(server string, up bool) {
		for _, proto := range []string{"tcp", "udp"} {
			l := fmt.Sprintf(`name=%q,protocol=%q`, dnsTestName, proto)
			success = append(success, fmt.Sprintf(`netinspect_dns_probe_success{%s,server=%q} %d`, l, server, map[bool]int{true: 1}[up]))
			if up {
				match = append(match, fmt.Sprintf(`netinspect_dns_probe_answer_matches_service{%s,server=%q} 1`, l, server))
				rcode = append(rcode, fmt.Sprintf(`netinspect_dns_probe_response_code{%s,rcode="NOERROR",server=%q} 1`, l, server))
			}
		}
	}
	info = append(info, fmt.Sprintf(`netinspect_dns_probe_server_info{kind="service",namespace="",pod="",server=%q} 1`, clusterIP))
	add(clusterIP, true)
	for name, ip := range replicas {
		info = append(info, fmt.Sprintf(`netinspect_dns_probe_server_info{kind="endpoint",namespace="kube-system",pod=%q,server=%q} 1`, name, ip))
		add(ip, name != dead)
	}
	return `
# HELP netinspect_dns_probe_answer_matches_service Whether the addresses of the last answer equal the ClusterIPs the API has for the Service the name names (<service>.<namespace>.svc.<domain>); absent when the name is not such a Service or no answer came.
# TYPE netinspect_dns_probe_answer_matches_service gauge
` + strings.Join(match, "\n") + `
# HELP netinspect_dns_probe_response_code Response code of the last answer for name from server over protocol (1 for the code it had); absent when no answer came.
# TYPE netinspect_dns_probe_response_code gauge
` + strings.Join(rcode, "\n") + `
# HELP netinspect_dns_probe_server_info The servers probed: the DNS Service's ClusterIPs (kind service) and its endpoints (kind endpoint, with their pod from the index).
# TYPE netinspect_dns_probe_server_info gauge
` + strings.Join(info, "\n") + `
# HELP netinspect_dns_probe_success Whether the last query for name to server over protocol got a NOERROR answer with at least one record (1) or not (0).
# TYPE netinspect_dns_probe_success gauge
` + strings.Join(success, "\n") + "\n"
}
