package collector

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/netinspect/netinspect/kubeproxy"
	cpl "github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// rulesKPService is a Service the kube-proxy tests create, with the
// endpoint count kube-proxy must program per family for its one port.
type rulesKPService struct {
	name     string
	spec     corev1.ServiceSpec
	lbIP     string
	v4, v6   []string // endpoint IPs per family
	wantPort string   // port label
}

// rulesKPServices covers every kind the issue lists: ClusterIP, NodePort,
// LoadBalancer with an ingress IP, ExternalIP, no endpoints (unnamed port),
// session affinity, dual-stack (UDP).
func rulesKPServices() []rulesKPService {
	port := func(name string, p int32, proto corev1.Protocol) []corev1.ServicePort {
		return []corev1.ServicePort{{Name: name, Port: p, Protocol: proto, TargetPort: intstr.FromInt32(8080)}}
	}
	dual := corev1.IPFamilyPolicyRequireDualStack
	return []rulesKPService{
		{name: "web", spec: corev1.ServiceSpec{Ports: port("http", 80, corev1.ProtocolTCP)}, v4: []string{"10.244.1.10", "10.244.1.11"}, wantPort: "http"},
		{name: "np", spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: port("http", 80, corev1.ProtocolTCP)}, v4: []string{"10.244.1.20"}, wantPort: "http"},
		{name: "lb", spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: port("https", 443, corev1.ProtocolTCP)}, lbIP: "192.0.2.50", v4: []string{"10.244.1.30", "10.244.1.31"}, wantPort: "https"},
		{name: "ext", spec: corev1.ServiceSpec{ExternalIPs: []string{"192.0.2.60"}, Ports: port("http", 80, corev1.ProtocolTCP)}, v4: []string{"10.244.1.40"}, wantPort: "http"},
		{name: "empty", spec: corev1.ServiceSpec{Ports: port("", 8081, corev1.ProtocolTCP)}, wantPort: "8081"},
		{name: "sticky", spec: corev1.ServiceSpec{SessionAffinity: corev1.ServiceAffinityClientIP, Ports: port("http", 80, corev1.ProtocolTCP)}, v4: []string{"10.244.1.50", "10.244.1.51"}, wantPort: "http"},
		{name: "dual", spec: corev1.ServiceSpec{IPFamilyPolicy: &dual, Ports: port("dns", 53, corev1.ProtocolUDP)}, v4: []string{"10.244.1.60"}, v6: []string{"fd00:10:244:1::60", "fd00:10:244:1::61"}, wantPort: "dns"},
	}
}

const rulesKPNamespace = "kp"

func rulesKPSlice(t testing.TB, cp *cpl.ControlPlane, s rulesKPService, family string, ips []string) {
	t.Helper()
	at := discoveryv1.AddressTypeIPv4
	if family == "ipv6" {
		at = discoveryv1.AddressTypeIPv6
	}
	p := s.spec.Ports[0]
	var eps []cpl.Endpoint
	for _, ip := range ips {
		eps = append(eps, cpl.Endpoint{IP: ip, Node: "node-1"})
	}
	cp.CreateEndpointSlice(t, rulesKPNamespace, s.name+"-"+family, s.name, at,
		[]cpl.ServicePort{{Name: p.Name, Port: p.Port, TargetPort: 8080, Protocol: p.Protocol}}, eps)
}

// rulesKPSetup creates the services and their EndpointSlices once.
func rulesKPSetup(t *testing.T) (*cpl.ControlPlane, []rulesKPService, map[string][]rulesSvcPort) {
	cp := cpl.Start(t)
	cp.EnsureNamespace(t, rulesKPNamespace)
	svcs := rulesKPServices()
	ports := map[string][]rulesSvcPort{}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, s := range svcs {
		obj, err := cp.Client.CoreV1().Services(rulesKPNamespace).Create(ctx,
			&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: rulesKPNamespace}, Spec: s.spec}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create service %s: %v", s.name, err)
		}
		if s.lbIP != "" {
			obj.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: s.lbIP}}
			if _, err := cp.Client.CoreV1().Services(rulesKPNamespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
				t.Fatalf("set load-balancer IP of %s: %v", s.name, err)
			}
		}
		p := s.spec.Ports[0]
		for _, fam := range obj.Spec.IPFamilies {
			family := map[corev1.IPFamily]string{corev1.IPv4Protocol: "ipv4", corev1.IPv6Protocol: "ipv6"}[fam]
			ports[family] = append(ports[family], rulesSvcPort{rulesKPNamespace, s.name, p.Name, strings.ToLower(string(p.Protocol)), int(p.Port)})
		}
		if len(s.v4) > 0 {
			rulesKPSlice(t, cp, s, "ipv4", s.v4)
		}
		if len(s.v6) > 0 {
			rulesKPSlice(t, cp, s, "ipv6", s.v6)
		}
	}
	return cp, svcs, ports
}

// rulesKPNode is a node's network namespace with its addresses.
func rulesKPNode(t *testing.T, cp *cpl.ControlPlane, prefix string) *netns.NS {
	node := netns.New(t, prefix)
	node.MustRun("ip", "addr", "add", "10.99.1.2/32", "dev", "lo")
	node.MustRun("ip", "addr", "add", "fd00:99::2/128", "dev", "lo")
	return node
}

// rulesLegacyPath returns a PATH whose iptables commands are
// iptables-legacy, so kube-proxy programs the legacy backend:
// xtables-legacy-multi picks its applet from the name it is run as.
func rulesLegacyPath(t *testing.T) string {
	dir := t.TempDir()
	multi, err := exec.LookPath("xtables-legacy-multi")
	testenv.Require(t, err == nil, "xtables-legacy-multi (iptables legacy backend) not on PATH")
	for _, name := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		if err := os.Symlink(multi, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir + ":" + os.Getenv("PATH")
}

func TestIPTablesRealKubeProxy(t *testing.T) {
	testenv.RequireRoot(t)
	for _, cmd := range []string{"nsenter", "iptables-nft", "iptables-legacy", "nft"} {
		testenv.RequireCommand(t, cmd)
	}
	cp, svcs, ports := rulesKPSetup(t)
	cp.CreateNode(t, "node-1", "10.99.1.2", "fd00:99::2")

	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			if backend == "legacy" {
				t.Setenv("PATH", rulesLegacyPath(t))
			}
			node := rulesKPNode(t, cp, "kp"+backend)
			kp := cp.StartKubeProxy(t, node, cpl.KubeProxyOptions{NodeName: "node-1", Mode: "iptables"})

			c := in(must(NewIPTables(IPTablesConfig{RefreshInterval: 100 * time.Millisecond, ServiceSeries: ServiceSeriesAll},
				Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(t), node)
			t.Cleanup(c.Close)

			// Wait until kube-proxy programmed every service, as the
			// kernel's own listing shows it.
			wantEndpoints := func(ipFamily string, s rulesKPService) int {
				return map[string]int{"ipv4": len(s.v4), "ipv6": len(s.v6)}[ipFamily]
			}
			cpl.Eventually(t, 90*time.Second, func() error {
				for _, family := range []string{"ipv4", "ipv6"} {
					for _, p := range ports[family] {
						for _, s := range svcs {
							if s.name == p.Name {
								if n := rulesKernelEndpoints(t, node, backend, family, p); n != wantEndpoints(family, s) {
									return fmt.Errorf("%s %s: kernel has %d endpoints, want %d\n%s", family, s.name, n, wantEndpoints(family, s), kp.Tail())
								}
							}
						}
					}
				}
				return nil
			})
			st := rulesWaitRefresh(t, c, time.Now(), nil)
			if st.Backend != backend {
				t.Errorf("detected backend %q, want %q", st.Backend, backend)
			}
			if st.Mode != kubeproxy.ModeIPTables {
				t.Errorf("mode %q, want iptables", st.Mode)
			}
			rulesKPCheck(t, c, node, backend, svcs, ports)

			// Change endpoints: web grows to 3, np loses its only one.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			rulesAddWebEndpoint(ctx, t, cp)
			if err := cp.Client.DiscoveryV1().EndpointSlices(rulesKPNamespace).Delete(ctx, "np-ipv4", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			defer func() {
				// Restore the fixture for the next backend.
				es, err := cp.Client.DiscoveryV1().EndpointSlices(rulesKPNamespace).Get(context.Background(), "web-ipv4", metav1.GetOptions{})
				if err == nil {
					es.Endpoints = es.Endpoints[:2]
					_, _ = cp.Client.DiscoveryV1().EndpointSlices(rulesKPNamespace).Update(context.Background(), es, metav1.UpdateOptions{})
				}
				for _, s := range svcs {
					if s.name == "np" {
						rulesKPSlice(t, cp, s, "ipv4", s.v4)
					}
				}
			}()
			web := rulesSvcPort{rulesKPNamespace, "web", "http", "tcp", 80}
			np := rulesSvcPort{rulesKPNamespace, "np", "http", "tcp", 80}
			cpl.Eventually(t, 60*time.Second, func() error {
				if a, b := rulesKernelEndpoints(t, node, backend, "ipv4", web), rulesKernelEndpoints(t, node, backend, "ipv4", np); a != 3 || b != 0 {
					return fmt.Errorf("kernel: web %d endpoints, np %d", a, b)
				}
				return nil
			})
			rulesWaitRefresh(t, c, time.Now(), nil)
			got := rulesGather(t, c)
			if v := got[`netinspect_iptables_service_endpoints{family="ipv4",namespace="kp",port="http",service="web"}`]; v != 3 {
				t.Errorf("web endpoints after the change = %v, want 3", v)
			}
			if v, ok := got[`netinspect_iptables_service_endpoints{family="ipv4",namespace="kp",port="http",service="np"}`]; !ok || v != 0 {
				t.Errorf("np endpoints after the change = %v (present %v), want 0", v, ok)
			}
			rulesKPCheck(t, c, node, backend, svcs, ports)

			// Read-only: with kube-proxy stopped (it rewrites its rules on
			// every sync), listings leave the ruleset as it was.
			kp.Stop()
			before := rulesSnapshotText(t, node)
			rulesWaitRefresh(t, c, time.Now(), nil)
			rulesWaitRefresh(t, c, time.Now(), nil)
			if after := rulesSnapshotText(t, node); after != before {
				t.Errorf("ruleset changed while the collector listed it:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// rulesKPCheck compares every iptables series with the kernel's listing.
func rulesKPCheck(t *testing.T, c *IPTables, node *netns.NS, backend string, svcs []rulesKPService, ports map[string][]rulesSvcPort) {
	t.Helper()
	got := rulesGather(t, c)
	want := rulesExpectIPTables(t, node, backend, ports)
	// The API server's own "kubernetes" Service is programmed too.
	for k, v := range got {
		if strings.Contains(k, `namespace="default",port="https",service="kubernetes"`) {
			want[k] = v
		}
	}
	rulesDiff(t, "iptables series vs the kernel", rulesSelect(got, "netinspect_iptables_rules", "netinspect_iptables_service_endpoints"), want)
	for _, s := range svcs {
		if len(s.v4) > 0 || s.name == "empty" {
			k := fmt.Sprintf(`netinspect_iptables_service_endpoints{family="ipv4",namespace="kp",port=%q,service=%q}`, s.wantPort, s.name)
			if _, ok := got[k]; !ok {
				t.Errorf("missing %s", k)
			}
		}
	}
}

func TestNFTablesRealKubeProxy(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "nft")
	testenv.RequireCommand(t, "nsenter")
	cp, svcs, _ := rulesKPSetup(t)
	cp.CreateNode(t, "node-1", "10.99.1.2", "fd00:99::2")
	node := rulesKPNode(t, cp, "kpnft")
	kp := cp.StartKubeProxy(t, node, cpl.KubeProxyOptions{NodeName: "node-1", Mode: "nftables"})

	c := in(must(NewNFTables(NFTablesConfig{RefreshInterval: 100 * time.Millisecond, ServiceSeries: ServiceSeriesAll},
		Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(t), node)
	t.Cleanup(c.Close)
	ipt := in(must(NewIPTables(IPTablesConfig{RefreshInterval: time.Hour},
		Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(t), node)
	t.Cleanup(ipt.Close)

	// kube-proxy programmed everything once every service has its chain
	// (endpoints live in the service chains since kube-proxy 1.33) and the
	// service without endpoints is in no-endpoint-services.
	cpl.Eventually(t, 90*time.Second, func() error {
		ip4, _ := node.Run("nft", "list", "table", "ip", "kube-proxy")
		ip6, _ := node.Run("nft", "list", "table", "ip6", "kube-proxy")
		for _, s := range svcs {
			p := s.spec.Ports[0]
			want := fmt.Sprintf("kp/%s/%s/%s {", s.name, strings.ToLower(string(p.Protocol)), p.Name)
			if len(s.v4) > 0 && !strings.Contains(ip4, want) {
				return fmt.Errorf("no ip chain for %s yet\n%s", s.name, kp.Tail())
			}
			if len(s.v6) > 0 && !strings.Contains(ip6, want) {
				return fmt.Errorf("no ip6 chain for %s yet\n%s", s.name, kp.Tail())
			}
		}
		if !strings.Contains(ip4, `comment "kp/empty"`) {
			return fmt.Errorf("kp/empty not in no-endpoint-services yet")
		}
		return nil
	})
	if st := rulesWaitRefresh(t, ipt, time.Time{}, nil); st.Mode != kubeproxy.ModeNFTables {
		t.Errorf("mode %q, want nftables", st.Mode)
	}

	names := []string{"netinspect_nftables_map_elements", "netinspect_nftables_chains", "netinspect_nftables_rules", "netinspect_nftables_service_endpoints"}
	check := func(what string) map[string]float64 {
		t.Helper()
		// kube-proxy may sync between our listing and the kernel's: retry
		// until both see the same ruleset.
		var got, want map[string]float64
		deadline := time.Now().Add(30 * time.Second)
		for {
			rulesNFTWait(t, c, time.Now())
			got = rulesSelect(rulesGather(t, c), names...)
			want = rulesNFTExpect(t, node, nil)
			// Services without endpoints are only no-endpoint-services
			// elements; their port number comes from the element key.
			want[`netinspect_nftables_service_endpoints{family="ipv4",namespace="kp",port="8081",service="empty"}`] = 0
			if fmt.Sprint(got) == fmt.Sprint(want) || time.Now().After(deadline) {
				break
			}
		}
		rulesDiff(t, what, got, want)
		return got
	}
	got := check("nftables series vs the kernel")
	for _, s := range svcs {
		if len(s.v4) == 0 {
			continue
		}
		k := fmt.Sprintf(`netinspect_nftables_service_endpoints{family="ipv4",namespace="kp",port=%q,service=%q}`, s.wantPort, s.name)
		if got[k] != float64(len(s.v4)) {
			t.Errorf("%s = %v, want %d", k, got[k], len(s.v4))
		}
	}
	if v := got[`netinspect_nftables_service_endpoints{family="ipv6",namespace="kp",port="dns",service="dual"}`]; v != 2 {
		t.Errorf("dual ipv6 endpoints = %v, want 2", v)
	}

	// Change endpoints.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rulesAddWebEndpoint(ctx, t, cp)
	cpl.Eventually(t, 60*time.Second, func() error {
		if out, _ := node.Run("nft", "list", "table", "ip", "kube-proxy"); !strings.Contains(out, "10.244.1.12 . 8080") {
			return fmt.Errorf("10.244.1.12 not programmed yet")
		}
		return nil
	})
	got = check("after endpoint change")
	if v := got[`netinspect_nftables_service_endpoints{family="ipv4",namespace="kp",port="http",service="web"}`]; v != 3 {
		t.Errorf("web endpoints after the change = %v, want 3", v)
	}

	kp.Stop()
	before := rulesSnapshotText(t, node)
	rulesNFTWait(t, c, time.Now())
	rulesNFTWait(t, c, time.Now())
	if after := rulesSnapshotText(t, node); after != before {
		t.Errorf("ruleset changed while the collector listed it:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// rulesAddWebEndpoint adds a third ready endpoint, 10.244.1.12, to the web
// Service's IPv4 EndpointSlice.
func rulesAddWebEndpoint(ctx context.Context, t *testing.T, cp *cpl.ControlPlane) {
	t.Helper()
	es, err := cp.Client.DiscoveryV1().EndpointSlices(rulesKPNamespace).Get(ctx, "web-ipv4", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := true
	es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.244.1.12"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	if _, err := cp.Client.DiscoveryV1().EndpointSlices(rulesKPNamespace).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
