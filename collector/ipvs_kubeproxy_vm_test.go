package collector

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/kubeproxy"
	"github.com/netinspect/netinspect/source/ipvs"
	"github.com/netinspect/netinspect/source/links"
	sourcens "github.com/netinspect/netinspect/source/netns"
	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/kpfixture"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
	"github.com/netinspect/netinspect/test/vm"
)

// The cluster TestVMIPVSKubeProxy creates in the API server and the guest
// test checks the collector's labels against. Every backend pod runs on
// the guest, the node kube-proxy serves.
const (
	kpNode        = "ipvs-vm-node"
	kpNamespace   = "shop"
	kpWebIP       = "10.96.100.10" // shop/web, port "http" 80, backends web-1 and web-2
	kpAPIIP       = "10.96.100.11" // shop/api, unnamed port 8081, backend web-1
	kpFrontIP     = "10.96.100.20" // shop/front, NodePort: port "web" 80, node port 30080, backend web-2
	kpNodePort    = 30080
	kpTargetPort  = 8080
	kpKubeSvcIP   = "10.96.0.1" // default/kubernetes, port "https" 443 -> the API server
	kpClusterCIDR = "10.244.0.0/16"
	// Env of the guest test: the kubeconfig's content (base64; a file in
	// the host's /tmp would be hidden by the guest's tmpfs there) and the
	// path the host copied the kube-proxy binary to.
	kpKubeconfigEnv = "NETINSPECT_KP_KUBECONFIG"
	kpBinaryEnv     = "NETINSPECT_KP_BINARY"
)

// kpPod is a backend pod: its IP, and in the guest a network namespace
// whose eth0 has it, behind a veth whose node end is gw (a /24 each).
type kpPod struct {
	name, ip, gw, hostIf string
}

var (
	kpWeb1   = kpPod{name: "web-1", ip: "10.244.1.11", gw: "10.244.1.1", hostIf: "kp-web1"}
	kpWeb2   = kpPod{name: "web-2", ip: "10.244.2.12", gw: "10.244.2.1", hostIf: "kp-web2"}
	kpClient = kpPod{name: "client", ip: "10.244.3.20", gw: "10.244.3.1", hostIf: "kp-client"}
)

// kpModules are what kube-proxy's IPVS mode needs loaded, the guest having
// no modprobe: IPVS, the ipset types of its sets (hash:ip,port for
// KUBE-CLUSTER-IP, hash:ip,port,ip for KUBE-LOOP-BACK, bitmap:port for the
// node ports...), and the iptables matches and targets of its rules in both
// iptables backends (the guest's iptables is whichever the host's
// alternatives name).
func kpModules() []string {
	return append(append([]string(nil), vm.DefaultModules...),
		"ip_set", "ip_set_hash_ip", "ip_set_hash_ipport", "ip_set_hash_ipportip",
		"ip_set_hash_ipportnet", "ip_set_hash_net", "ip_set_bitmap_port",
		"x_tables", "xt_tcpudp", "xt_comment", "xt_mark", "xt_conntrack", "xt_addrtype",
		"xt_nat", "xt_MASQUERADE", "xt_set", "xt_physdev", "ipt_REJECT",
		"ip_tables", "iptable_filter", "iptable_nat", "iptable_mangle",
		"nf_tables", "nft_compat", "nft_chain_nat", "nft_nat", "nft_masq", "nft_ct",
		"nft_reject_ipv4",
	)
}

// TestVMIPVSKubeProxy runs the real kube-proxy in IPVS mode inside the
// qemu VM (Debian's kernel has IPVS, the host's has not) against a real
// kube-apiserver on the host, and checks in the guest
// (TestIPVSKubeProxyGuest) that the ipvs collector labels the virtual
// servers kube-proxy programmed with the Services, ports and backend pods
// created here. qemu runs in the control plane's network namespace, so the
// guest's connections to controlplane.AdvertiseAddress reach the API server.
func TestVMIPVSKubeProxy(t *testing.T) {
	if vm.InGuest() {
		t.Skip("host side: boots the VM")
	}
	testenv.RequireRoot(t)
	kubeProxy := controlplane.Binary(t, "kube-proxy")
	xtables := "/usr/lib/x86_64-linux-gnu/xtables"
	_, err := os.Stat(xtables)
	testenv.Require(t, err == nil, "iptables' extensions in "+xtables+" (apt-get install iptables)")

	cp := controlplane.Start(t)
	cp.CreateNode(t, kpNode, vm.GuestIP)
	uids := map[string]types.UID{}
	for _, p := range []kpPod{kpWeb1, kpWeb2} {
		pod := cp.CreatePod(t, controlplane.PodSpec{Namespace: kpNamespace, Name: p.name, Node: kpNode,
			IPs: []string{p.ip}, Labels: map[string]string{"app": "web"}})
		uids[p.name] = pod.UID
	}
	ep := func(p kpPod) controlplane.Endpoint {
		return controlplane.Endpoint{IP: p.ip, Node: kpNode, Pod: p.name, PodUID: uids[p.name]}
	}
	web := []controlplane.ServicePort{{Name: "http", Port: 80, TargetPort: kpTargetPort}}
	cp.CreateService(t, controlplane.ServiceSpec{Namespace: kpNamespace, Name: "web", ClusterIPs: []string{kpWebIP}, Ports: web})
	cp.CreateEndpointSlice(t, kpNamespace, "web-1a2b3", "web", discoveryv1.AddressTypeIPv4, web, []controlplane.Endpoint{ep(kpWeb1), ep(kpWeb2)})
	api := []controlplane.ServicePort{{Port: 8081, TargetPort: kpTargetPort}}
	cp.CreateService(t, controlplane.ServiceSpec{Namespace: kpNamespace, Name: "api", ClusterIPs: []string{kpAPIIP}, Ports: api})
	cp.CreateEndpointSlice(t, kpNamespace, "api-4c5d6", "api", discoveryv1.AddressTypeIPv4, api, []controlplane.Endpoint{ep(kpWeb1)})
	front := []controlplane.ServicePort{{Name: "web", Port: 80, TargetPort: kpTargetPort, NodePort: kpNodePort}}
	cp.CreateService(t, controlplane.ServiceSpec{Namespace: kpNamespace, Name: "front", Type: corev1.ServiceTypeNodePort, ClusterIPs: []string{kpFrontIP}, Ports: front})
	cp.CreateEndpointSlice(t, kpNamespace, "front-7e8f9", "front", discoveryv1.AddressTypeIPv4, front, []controlplane.Endpoint{ep(kpWeb2)})

	// The serving certificate names the advertise address, which is on the
	// control plane namespace's loopback: qemu connects to it from there.
	kubeconfig, err := os.ReadFile(cp.AdminKubeconfigFor(t, controlplane.AdvertiseAddress))
	if err != nil {
		t.Fatal(err)
	}
	res := vm.Run(t, vm.Config{
		Package: ".",
		Run:     "^(TestIPVSKubeProxyGuest|TestIPVSDriftGuest)$",
		Env:     map[string]string{kpKubeconfigEnv: base64.StdEncoding.EncodeToString(kubeconfig), kpBinaryEnv: kubeProxy},
		Modules: kpModules(),
		// kube-proxy execs iptables, iptables-save, iptables-restore and
		// ipset; without ip6tables it runs single-stack IPv4.
		Commands:  []string{"ip", "ipset", "iptables", "iptables-save", "iptables-restore"},
		Files:     []string{kubeProxy, xtables, "/etc/protocols"},
		Network:   &vm.Network{NetNS: cp.NS.Name},
		MemoryMiB: 2048,
		Timeout:   14 * time.Minute,
	})
	res.RequirePassed(t, "TestIPVSKubeProxyGuest", "TestIPVSDriftGuest")
}

// TestIPVSKubeProxyGuest runs inside the VM booted by TestVMIPVSKubeProxy:
// the guest is the node. Backend and client pods are network namespaces on
// veths; kube-proxy programs IPVS in the guest's own namespace; the
// collector reads it with an index kept by kube.Watcher from the same API
// server, as the exporter does.
func TestIPVSKubeProxyGuest(t *testing.T) {
	vm.RequireGuest(t)
	kubeconfig, bin := guestKubeProxyEnv(t)
	guestMustRun(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	pods := map[string]*netns.NS{}
	for _, p := range []kpPod{kpWeb1, kpWeb2, kpClient} {
		pods[p.name] = kpPodNS(t, p)
	}
	ipvsEchoServers(t, pods[kpWeb1.name], net.JoinHostPort(kpWeb1.ip, fmt.Sprint(kpTargetPort)))
	ipvsEchoServers(t, pods[kpWeb2.name], net.JoinHostPort(kpWeb2.ip, fmt.Sprint(kpTargetPort)))

	start := time.Now()
	kp := startGuestKubeProxy(t, bin, kubeconfig, kpNode)

	be := func(p kpPod) string { return net.JoinHostPort(p.ip, fmt.Sprint(kpTargetPort)) }
	apiServer := net.JoinHostPort(controlplane.AdvertiseAddress, fmt.Sprint(controlplane.APIServerPort))
	// Virtual servers ("TCP addr:port") and their backends as kube-proxy
	// must program them for the fixture.
	wantVS := map[string][]string{
		"TCP " + kpWebIP + ":80":                         {be(kpWeb1), be(kpWeb2)},
		"TCP " + kpAPIIP + ":8081":                       {be(kpWeb1)},
		"TCP " + kpFrontIP + ":80":                       {be(kpWeb2)},
		fmt.Sprintf("TCP %s:%d", vm.GuestIP, kpNodePort): {be(kpWeb2)},
		"TCP " + net.JoinHostPort(kpKubeSvcIP, "443"):    {apiServer},
	}
	var procSvcs []ipvs.ProcService
	deadline := time.Now().Add(3 * time.Minute)
	for {
		kp.checkRunning(t)
		procSvcs = guestProcIPVS(t)
		missing := kpMissingVS(procSvcs, wantVS)
		synced, err := kp.synced()
		if err != nil {
			t.Fatalf("%v\nkube-proxy log:\n%s", err, kp.tail(60))
		}
		if len(missing) == 0 && synced {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-proxy did not program %v within 3 min (a full sync done: %v); /proc/net/ip_vs:\n%s\nkube-proxy log:\n%s",
				missing, synced, readFileString("/proc/net/ip_vs"), kp.tail(60))
		}
		time.Sleep(time.Second)
	}
	t.Logf("kube-proxy programmed the virtual servers %s after start; /proc/net/ip_vs:\n%s",
		time.Since(start).Round(time.Second), readFileString("/proc/net/ip_vs"))
	// The whole of kube-proxy's IPVS mode ran, not only its netlink part:
	// the ipset of ClusterIPs and the iptables rules matching it are in.
	if set := guestMustRun(t, "ipset", "list", "KUBE-CLUSTER-IP"); !strings.Contains(set, kpWebIP+",tcp:80") {
		t.Errorf("ipset KUBE-CLUSTER-IP lacks %s,tcp:80:\n%s", kpWebIP, set)
	}
	if rules := guestMustRun(t, "iptables-save", "-t", "nat"); !strings.Contains(rules, "--match-set KUBE-CLUSTER-IP") {
		t.Errorf("kube-proxy's nat rules do not match on KUBE-CLUSTER-IP:\n%s", rules)
	}

	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kube.NewWatcher(kube.Config{REST: rc, NodeName: kpNode})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w.Start(ctx)
	syncCtx, syncCancel := context.WithTimeout(ctx, 2*time.Minute)
	defer syncCancel()
	if !w.WaitForSync(syncCtx) {
		t.Fatal("kube caches did not sync within 2 min")
	}
	ix := w.Index()
	c, err := NewIPVS(IPVSConfig{ServiceSeries: ServiceSeriesAll, Backends: true}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ix})
	if err != nil {
		t.Fatal(err)
	}

	// Labels of each virtual server kube-proxy made: every one belongs to a
	// Service. NodePort virtual servers exist for each node address.
	type svcLabels struct{ namespace, service, portName string }
	wantSvc := map[string]svcLabels{
		"tcp " + kpWebIP + " 80":      {kpNamespace, "web", "http"},
		"tcp " + kpAPIIP + " 8081":    {kpNamespace, "api", "8081"},
		"tcp " + kpFrontIP + " 80":    {kpNamespace, "front", "web"},
		"tcp " + kpKubeSvcIP + " 443": {"default", "kubernetes", "https"},
	}
	local := guestLocalAddrs(t)
	nodePortAddrs := 0
	for _, s := range procSvcs {
		if s.Port == kpNodePort && local[s.Addr] {
			wantSvc[fmt.Sprintf("tcp %s %d", s.Addr, s.Port)] = svcLabels{kpNamespace, "front", "web"}
			nodePortAddrs++
		}
	}
	podOf := map[string]string{kpWeb1.ip: kpWeb1.name, kpWeb2.ip: kpWeb2.name, controlplane.AdvertiseAddress: ""}

	// Connections held open from the client pod: two through web's
	// ClusterIP (rr: one per backend), one through api's, one through the
	// node port on the node's address.
	var conns []net.Conn
	for _, addr := range []string{kpWebIP + ":80", kpWebIP + ":80", kpAPIIP + ":8081", fmt.Sprintf("%s:%d", vm.GuestIP, kpNodePort)} {
		conns = append(conns, ipvsDialEcho(t, pods[kpClient.name], addr))
	}
	wantConns := map[string]float64{
		"tcp " + kpWebIP + " 80":                         2,
		"tcp " + kpAPIIP + " 8081":                       1,
		fmt.Sprintf("tcp %s %d", vm.GuestIP, kpNodePort): 1,
	}
	wantActive := map[string]float64{
		fmt.Sprintf("tcp %s 80 %s", kpWebIP, kpWeb1.ip):                1,
		fmt.Sprintf("tcp %s 80 %s", kpWebIP, kpWeb2.ip):                1,
		fmt.Sprintf("tcp %s 8081 %s", kpAPIIP, kpWeb1.ip):              1,
		fmt.Sprintf("tcp %s %d %s", vm.GuestIP, kpNodePort, kpWeb2.ip): 1,
	}

	// The kernel folds its per-CPU counters into what netlink reports on
	// the estimator's 2 s tick (see ipvsWaitStable), so poll.
	var samples []ipvsSample
	deadline = time.Now().Add(time.Minute)
	for {
		samples = gatherIPVSSamples(t, c)
		err := kpCheckCounts(samples, wantConns, wantActive)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v\n/proc/net/ip_vs:\n%s", err, readFileString("/proc/net/ip_vs"))
		}
		time.Sleep(500 * time.Millisecond)
	}

	// Every virtual server in /proc/net/ip_vs has its series, labeled with
	// its Service; every backend its pod.
	procSvcs = guestProcIPVS(t)
	svcSeries, beSeries := 0, 0
	for _, s := range samples {
		switch s.name {
		case "netinspect_ipvs_service_connections_total":
			svcSeries++
			key := s.labels["protocol"] + " " + s.labels["address"] + " " + s.labels["port"]
			want, ok := wantSvc[key]
			if !ok {
				t.Errorf("virtual server %s is not one kube-proxy should have made for the fixture: %v", key, s.labels)
				continue
			}
			if got := (svcLabels{s.labels["namespace"], s.labels["service"], s.labels["port_name"]}); got != want {
				t.Errorf("virtual server %s labeled %+v, want %+v", key, got, want)
			}
			if s.labels["scheduler"] != "rr" {
				t.Errorf("virtual server %s scheduler %q, want rr", key, s.labels["scheduler"])
			}
		case "netinspect_ipvs_backend_weight":
			beSeries++
			key := s.labels["protocol"] + " " + s.labels["address"] + " " + s.labels["port"]
			want := wantSvc[key]
			pod, known := podOf[s.labels["backend_address"]]
			if !known {
				t.Errorf("backend %s of %s is not a fixture endpoint", s.labels["backend_address"], key)
			}
			if s.labels["namespace"] != want.namespace || s.labels["service"] != want.service || s.labels["pod"] != pod {
				t.Errorf("backend %s of %s labeled namespace=%q service=%q pod=%q, want %q %q %q",
					s.labels["backend_address"], key, s.labels["namespace"], s.labels["service"], s.labels["pod"],
					want.namespace, want.service, pod)
			}
			if s.value != 1 {
				t.Errorf("backend %s of %s weight %v, want 1", s.labels["backend_address"], key, s.value)
			}
		}
	}
	procBackends := 0
	for _, s := range procSvcs {
		procBackends += len(s.Backends)
	}
	if svcSeries != len(procSvcs) || beSeries != procBackends {
		t.Errorf("collector exported %d virtual servers and %d backends; /proc/net/ip_vs lists %d and %d",
			svcSeries, beSeries, len(procSvcs), procBackends)
	}
	if svcSeries != len(wantSvc) {
		t.Errorf("collector exported %d virtual servers, want %d (4 ClusterIPs and the node port on %d node addresses)",
			svcSeries, len(wantSvc), nodePortAddrs)
	}
	t.Logf("checked %d virtual servers (node port on %d node addresses) and %d backends", svcSeries, nodePortAddrs, beSeries)

	// Closing the connections leaves no active one.
	for _, conn := range conns {
		conn.Close()
	}
	deadline = time.Now().Add(time.Minute)
	for {
		var active float64
		for _, s := range gatherIPVSSamples(t, c) {
			if s.name == "netinspect_ipvs_backend_connections_active" {
				active += s.value
			}
		}
		if active == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after closing the connections %v are still active", active)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// The iptables collector tells kube-proxy's mode from the rules the
	// real kube-proxy wrote in IPVS mode.
	ipt := must(NewIPTables(IPTablesConfig{RefreshInterval: time.Hour}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ix}))(t)
	t.Cleanup(ipt.Close)
	if st := rulesWaitRefresh(t, ipt, time.Time{}, nil); st.Mode != kubeproxy.ModeIPVS {
		t.Errorf("iptables collector: kube-proxy mode %q from the real kube-proxy's IPVS-mode rules, want ipvs", st.Mode)
	}
}

// ipvsSample is one gathered series.
type ipvsSample struct {
	name   string
	labels map[string]string
	value  float64
}

func gatherIPVSSamples(t *testing.T, c *IPVS) []ipvsSample {
	t.Helper()
	var out []ipvsSample
	for _, mf := range gatherIPVSFamilies(t, c) {
		for _, m := range mf.Metric {
			s := ipvsSample{name: mf.GetName(), labels: map[string]string{}, value: sampleValue(m)}
			for _, l := range m.Label {
				s.labels[l.GetName()] = l.GetValue()
			}
			out = append(out, s)
		}
	}
	return out
}

// kpCheckCounts compares the connections counters of virtual servers
// ("proto addr port") and the active connections of backends ("proto addr
// port backend") with want; unlisted ones must be 0.
func kpCheckCounts(samples []ipvsSample, wantConns, wantActive map[string]float64) error {
	var errs []string
	seen := map[string]bool{}
	for _, s := range samples {
		key := s.labels["protocol"] + " " + s.labels["address"] + " " + s.labels["port"]
		var want float64
		switch s.name {
		case "netinspect_ipvs_service_connections_total":
			want = wantConns[key]
		case "netinspect_ipvs_backend_connections_active":
			key += " " + s.labels["backend_address"]
			want = wantActive[key]
		default:
			continue
		}
		seen[key] = true
		if s.value != want {
			errs = append(errs, fmt.Sprintf("%s %s = %v, want %v", s.name, key, s.value, want))
		}
	}
	for _, m := range []map[string]float64{wantConns, wantActive} {
		for k := range m {
			if !seen[k] {
				errs = append(errs, "no series for "+k)
			}
		}
	}
	sort.Strings(errs)
	if len(errs) > 0 {
		return fmt.Errorf("collector counts:\n  %s", strings.Join(errs, "\n  "))
	}
	return nil
}

// kpMissingVS lists the wanted virtual servers /proc/net/ip_vs does not
// show with exactly the wanted backends.
func kpMissingVS(svcs []ipvs.ProcService, want map[string][]string) []string {
	got := map[string][]string{}
	for _, s := range svcs {
		key := fmt.Sprintf("%s %s", s.Protocol, netip.AddrPortFrom(s.Addr, s.Port))
		var bes []string
		for _, b := range s.Backends {
			bes = append(bes, netip.AddrPortFrom(b.Addr, b.Port).String())
		}
		sort.Strings(bes)
		got[key] = bes
	}
	var missing []string
	for k, bes := range want {
		w := append([]string(nil), bes...)
		sort.Strings(w)
		if !slices.Equal(got[k], w) {
			missing = append(missing, fmt.Sprintf("%s -> %v (have %v)", k, w, got[k]))
		}
	}
	sort.Strings(missing)
	return missing
}

// kpPodNS makes a pod's network namespace: eth0 with p.ip/24 on a veth
// whose node end (p.hostIf) has p.gw/24, the pod's default gateway.
func kpPodNS(t *testing.T, p kpPod) *netns.NS {
	t.Helper()
	ns := netns.New(t, p.name)
	guestMustRun(t, "ip", "link", "add", p.hostIf, "type", "veth", "peer", "name", "eth0", "netns", ns.Name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", p.hostIf).Run() })
	guestMustRun(t, "ip", "addr", "add", p.gw+"/24", "dev", p.hostIf)
	guestMustRun(t, "ip", "link", "set", p.hostIf, "up")
	ns.MustRun("ip", "addr", "add", p.ip+"/24", "dev", "eth0")
	ns.MustRun("ip", "link", "set", "eth0", "up")
	ns.MustRun("ip", "route", "add", "default", "via", p.gw)
	return ns
}

func guestMustRun(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

func readFileString(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

func guestProcIPVS(t *testing.T) []ipvs.ProcService {
	t.Helper()
	f, err := os.Open("/proc/net/ip_vs")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	svcs, err := ipvs.ParseProc(f)
	if err != nil {
		t.Fatalf("parse /proc/net/ip_vs: %v", err)
	}
	return svcs
}

func guestLocalAddrs(t *testing.T) map[netip.Addr]bool {
	t.Helper()
	m, err := links.LocalAddrs(context.Background(), sourcens.Target{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// guestKubeProxyEnv is what TestVMIPVSKubeProxy hands its guest tests: the
// path of a kubeconfig written from the environment, and the kube-proxy
// binary's.
func guestKubeProxyEnv(t *testing.T) (kubeconfig, bin string) {
	t.Helper()
	kc, err := base64.StdEncoding.DecodeString(os.Getenv(kpKubeconfigEnv))
	bin = os.Getenv(kpBinaryEnv)
	if err != nil || len(kc) == 0 || bin == "" {
		t.Fatalf("%s (%v) and %s must be set by TestVMIPVSKubeProxy", kpKubeconfigEnv, err, kpBinaryEnv)
	}
	kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	return kubeconfig, bin
}

// guestKubeProxy is kube-proxy running in the guest.
type guestKubeProxy struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startGuestKubeProxy starts kube-proxy in IPVS mode in the guest's
// namespace, with the flags test/controlplane's StartKubeProxy uses for the
// other modes, and stops it (SIGTERM, then SIGKILL) when the test ends.
func startGuestKubeProxy(t *testing.T, bin, kubeconfig, node string) *guestKubeProxy {
	t.Helper()
	logPath := "/tmp/kube-proxy.log"
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	cmd := exec.Command(bin, controlplane.KubeProxyArgs(kubeconfig, controlplane.KubeProxyOptions{
		NodeName: node, Mode: "ipvs", ClusterCIDR: kpClusterCIDR, ExtraArgs: []string{"--ipvs-scheduler=rr"},
	})...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start kube-proxy: %v", err)
	}
	kp := &guestKubeProxy{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { kp.err = cmd.Wait(); close(kp.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-kp.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-kp.done
		}
		if t.Failed() {
			t.Logf("kube-proxy log tail:\n%s", kp.tail(80))
		}
	})
	return kp
}

func (kp *guestKubeProxy) checkRunning(t *testing.T) {
	t.Helper()
	select {
	case <-kp.done:
		t.Fatalf("kube-proxy exited: %v\n%s", kp.err, kp.tail(80))
	default:
	}
}

// synced reports whether kube-proxy has finished a sync of its rules
// (IPVS, ipsets and iptables-restore: kubeproxy_sync_proxy_rules_last_timestamp_seconds
// is set at its end), and fails once an iptables-restore has failed.
func (kp *guestKubeProxy) synced() (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:10249/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, nil // not serving yet
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return false, nil
	}
	var last, failures float64
	for _, l := range strings.Split(string(b), "\n") {
		name, value, ok := strings.Cut(l, " ")
		if !ok {
			continue
		}
		v, _ := strconv.ParseFloat(value, 64)
		switch name {
		case `kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"}`:
			last = v
		case `kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv4"}`:
			failures = v
		}
	}
	if failures > 0 {
		return false, fmt.Errorf("kube-proxy: %v iptables-restore failures", failures)
	}
	return last > 0, nil
}

// Pause stops kube-proxy with SIGSTOP, Resume continues it; the cleanup
// continues it before stopping it.
func (kp *guestKubeProxy) Pause(t testing.TB) {
	t.Helper()
	if err := kp.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP kube-proxy: %v", err)
	}
}

func (kp *guestKubeProxy) Resume(t testing.TB) {
	t.Helper()
	if err := kp.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("SIGCONT kube-proxy: %v", err)
	}
}

// Tail is the end of kube-proxy's log.
func (kp *guestKubeProxy) Tail() string { return kp.tail(40) }

func (kp *guestKubeProxy) tail(n int) string {
	b, _ := os.ReadFile(kp.log)
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// TestIPVSDriftGuest runs inside the VM booted by TestVMIPVSKubeProxy: the
// real kube-proxy in IPVS mode serves test/kpfixture's node, and the ipvs
// collector must report every service port in sync for several listings,
// then the changes kube-proxy misses while stopped (SIGSTOP) as drift, and
// all clear after SIGCONT, as TestDriftRealKubeProxy does for the other
// modes. The iptables collector, which sees kube-proxy's IPVS-mode rules,
// judges nothing.
func TestIPVSDriftGuest(t *testing.T) {
	vm.RequireGuest(t)
	kubeconfig, bin := guestKubeProxyEnv(t)
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	// test/kpfixture's Services, IPv4 only (the guest has no ip6tables, so
	// kube-proxy runs single-stack), created here after
	// TestIPVSKubeProxyGuest, whose checks count every virtual server.
	svcs := kpfixture.IPv4Only(kpfixture.Services())
	slices := kpfixture.SetUp(t, client, svcs)
	ctx := context.Background()
	all, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	allSlices, err := client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d fixture Services and %d EndpointSlices; %d and %d in the cluster", len(svcs), slices, len(all.Items), len(allSlices.Items))
	ix := driftIndex(t, rc, len(all.Items), len(allSlices.Items))
	kp := startGuestKubeProxy(t, bin, kubeconfig, kpfixture.Node)

	deps := Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ix}
	c := must(NewIPVS(IPVSConfig{Backends: true, RefreshInterval: driftRefresh, Drift: DriftConfig{MaxSeries: 50, Grace: DriftGrace{Intervals: 2}}}, deps))(t)
	t.Cleanup(c.Close)
	ipt := must(NewIPTables(IPTablesConfig{RefreshInterval: driftRefresh, Drift: DriftConfig{MaxSeries: 50}}, deps))(t)
	t.Cleanup(ipt.Close)
	pending := func() (int, time.Time) {
		s := c.Snapshot()
		if s == nil || s.Value == nil || s.Value.drift == nil {
			return -1, time.Time{}
		}
		return s.Value.drift.Pending, s.Started
	}
	driftInSync(t, c, ix, kp, pending)
	if st := rulesWaitRefresh(t, ipt, time.Time{}, nil); st.Mode != kubeproxy.ModeIPVS || st.Drift != nil {
		t.Errorf("iptables collector: mode %q, drift %+v; want ipvs and no judgment", st.Mode, st.Drift)
	}
	if v := driftGather(t, ipt); v.hasDriftSeries {
		t.Errorf("the iptables collector judges drift in IPVS mode: %s", v)
	}
	// qemu's software emulation makes every syscall dear: kube-proxy's
	// IPVS sync of the fixture (netlink, ipset, iptables-restore) takes
	// seconds here, not milliseconds.
	driftInduced(t, client, c, ix, kp, pending, 45*time.Second)
}
