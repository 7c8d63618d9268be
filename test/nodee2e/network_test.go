package nodee2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netinspect/netinspect/test/controlplane"
)

// hostVeth returns the name of the host end (in the node's namespace) of
// the pod's eth0, from the peer index the pod's end reports.
func (c *cluster) hostVeth(t *testing.T, p *corev1.Pod) string {
	t.Helper()
	h := c.podHandle(t, p)
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatalf("eth0 of pod %s: %v", p.Name, err)
	}
	peer := eth0.Attrs().ParentIndex // IFLA_LINK: the peer's index in the node's namespace
	out := c.n.MustRun(t, "ip", "-o", "link", "show")
	m := regexp.MustCompile(`(?m)^` + strconv.Itoa(peer) + `: ([^@:]+)[@:]`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no link %d (the peer of pod %s's eth0) on the node:\n%s", peer, p.Name, out)
	}
	return m[1]
}

// podHandle is a netlink handle in the pod's network namespace.
func (c *cluster) podHandle(t *testing.T, p *corev1.Pod) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(c.n.NetNSPath(t, p, "c"))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// checkVeths: the bridge pod created before the exporter and the ptp pod
// created after it are mapped to their host veths by their network
// namespaces (method netns, found under the runtime's /run/netns through
// the HostToContainer mount), the hostNetwork pod has no interface series
// but its pod_info says host_network, and no host veth is left unmapped.
func (c *cluster) checkVeths(t *testing.T) {
	want := map[string]string{c.before.Name: c.hostVeth(t, c.before), c.after.Name: c.hostVeth(t, c.after)}
	c.s.waitFor(t, time.Minute, "both pods mapped by netns", func(s series) (bool, string) {
		for pod, veth := range want {
			if v, ok := s.one("netinspect_pod_interface_info", map[string]string{"namespace": appNS, "pod": pod, "interface": "eth0", "host_interface": veth, "method": "netns"}); !ok || v != 1 {
				return false, fmt.Sprintf("pod %s: %v", pod, s.match("netinspect_pod_interface_info", map[string]string{"pod": pod}))
			}
		}
		if v, ok := s.one("netinspect_veth_unmapped", nil); !ok || v != 0 {
			return false, fmt.Sprintf("netinspect_veth_unmapped = %v", v)
		}
		return true, ""
	})
	s := c.s.mustScrape(t)
	if got := s.match("netinspect_pod_interface_info", nil); len(got) != 2 {
		t.Errorf("pod_interface_info series: %v, want the two pods' eth0 only", got)
	}
	if v, ok := s.one("netinspect_pod_info", map[string]string{"namespace": appNS, "pod": c.host.Name, "host_network": "true"}); !ok || v != 1 {
		t.Errorf("pod_info of the hostNetwork pod: %v", s.match("netinspect_pod_info", map[string]string{"pod": c.host.Name}))
	}
}

// linkStats are a pod's eth0 counters as its own namespace counts them.
type linkStats struct{ rxBytes, txBytes, rxPackets, txPackets float64 }

func (c *cluster) kernelStats(t *testing.T, p *corev1.Pod) linkStats {
	t.Helper()
	h := c.podHandle(t, p)
	defer h.Close()
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	st := l.Attrs().Statistics
	return linkStats{float64(st.RxBytes), float64(st.TxBytes), float64(st.RxPackets), float64(st.TxPackets)}
}

func exportedStats(s series, p *corev1.Pod) (linkStats, bool) {
	labels := map[string]string{"namespace": p.Namespace, "pod": p.Name, "interface": "eth0"}
	var st linkStats
	for _, f := range []struct {
		name string
		dst  *float64
	}{
		{"netinspect_pod_network_receive_bytes_total", &st.rxBytes},
		{"netinspect_pod_network_transmit_bytes_total", &st.txBytes},
		{"netinspect_pod_network_receive_packets_total", &st.rxPackets},
		{"netinspect_pod_network_transmit_packets_total", &st.txPackets},
	} {
		v, ok := s.one(f.name, labels)
		if !ok {
			return st, false
		}
		*f.dst = v
	}
	return st, true
}

// checkTraffic sends 1 MiB over TCP from the bridge pod to the ptp pod (the
// node routes between the two networks), then requires the exporter's
// counters of both pods to equal the kernel's: counters read before and
// after a scrape bracket it, and a quiet moment (both readings equal) is
// waited for, so the comparison is exact.
func (c *cluster) checkTraffic(t *testing.T) {
	const size = 1 << 20
	afterNS, beforeNS := c.n.NetNSPath(t, c.after, "c"), c.n.NetNSPath(t, c.before, "c")
	addr := net.JoinHostPort(c.after.Status.PodIP, "9000")
	l, err := controlplane.ListenIn(afterNS, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	received := make(chan int64, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			received <- -1
			return
		}
		defer conn.Close()
		n, _ := io.Copy(io.Discard, conn)
		received <- n
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := controlplane.DialerIn(beforeNS)(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("connect from pod %s to pod %s at %s: %v", c.before.Name, c.after.Name, addr, err)
	}
	if _, err := conn.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if n := <-received; n != size {
		t.Fatalf("pod %s received %d bytes, want %d", c.after.Name, n, size)
	}

	for _, p := range []*corev1.Pod{c.before, c.after} {
		deadline := time.Now().Add(time.Minute)
		for {
			k1 := c.kernelStats(t, p)
			s, err := c.s.scrape()
			k2 := c.kernelStats(t, p)
			e, ok := exportedStats(s, p)
			if err == nil && ok && k1 == k2 && e == k1 {
				t.Logf("pod %s eth0: exporter and kernel agree: %+v", p.Name, e)
				if p == c.before && e.txBytes < size {
					t.Errorf("pod %s transmitted %v bytes, want at least %d", p.Name, e.txBytes, size)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pod %s eth0: exporter %+v (present %v, %v), kernel %+v then %+v", p.Name, e, ok, err, k1, k2)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
}

// conntrackStats sums `conntrack -S` over CPUs, by the field names the
// exporter's conntrack_stat_<name>_total series use.
func (c *cluster) conntrackStats(t *testing.T) map[string]float64 {
	t.Helper()
	out := c.n.MustRun(t, "conntrack", "-S")
	sum := map[string]float64{}
	for _, l := range lines(out) {
		for _, f := range strings.Fields(l) {
			k, v, ok := strings.Cut(f, "=")
			if !ok || k == "cpu" {
				continue
			}
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("conntrack -S: %q", l)
			}
			sum[k] += n
		}
	}
	return sum
}

func (c *cluster) conntrackCount(t *testing.T) float64 {
	t.Helper()
	out := c.n.MustRun(t, "conntrack", "-C")
	v, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
	if err != nil {
		t.Fatalf("conntrack -C: %q", out)
	}
	return v
}

// checkConntrack: the exporter's table size and statistics are the node
// namespace's, as `conntrack -C` and `conntrack -S` report them, taken at a
// moment no connection came or went (readings before and after a scrape
// equal).
func (c *cluster) checkConntrack(t *testing.T) {
	c.s.mustScrape(t) // the kept-alive scrape connection's entry exists from now on
	deadline := time.Now().Add(time.Minute)
	for {
		n1, s1 := c.conntrackCount(t), c.conntrackStats(t)
		s, err := c.s.scrape()
		n2, s2 := c.conntrackCount(t), c.conntrackStats(t)
		if err != nil {
			t.Fatal(err)
		}
		var diff []string
		if v, ok := s.one("netinspect_conntrack_entries", nil); !ok || v != n1 || n1 != n2 {
			diff = append(diff, fmt.Sprintf("entries exporter %v, conntrack -C %v then %v", v, n1, n2))
		}
		for k, v1 := range s1 {
			v, ok := s.one("netinspect_conntrack_stat_"+k+"_total", nil)
			if !ok || v != v1 || s2[k] != v1 {
				diff = append(diff, fmt.Sprintf("%s exporter %v (present %v), conntrack -S %v then %v", k, v, ok, v1, s2[k]))
			}
		}
		if len(diff) == 0 {
			t.Logf("conntrack: %v entries; statistics %v", n1, s1)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("exporter and conntrack disagree at every try for 1 min; last: %s", strings.Join(diff, "; "))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// serviceConns is how many connections connectService opens.
const serviceConns = 3

// connectService opens serviceConns connections from the node to Service
// web's ClusterIP (kube-proxy DNATs them to the before pod, which accepts
// them), kept open until the test ends. Opened before the exporter starts,
// they are in its first attribution pass, so checkKubeProxy need not wait
// for a later one (every 30 s, the manifest's default). It returns the
// ClusterIP.
func (c *cluster) connectService(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc, err := c.n.Client.CoreV1().Services(appNS).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The backend listens in the pod's namespace on the target port.
	l, err := controlplane.ListenIn(c.n.NetNSPath(t, c.before, "c"), "tcp", net.JoinHostPort(c.before.Status.PodIP, "8080"))
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, conn)
		}
	}()
	t.Cleanup(func() { l.Close(); <-accepted })
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	deadline := time.Now().Add(time.Minute)
	for i := 0; i < serviceConns; {
		// Each attempt is a new connection with its own short timeout: a
		// SYN sent before kube-proxy's first sync made a conntrack entry
		// without DNAT, which its retransmissions would keep following.
		dctx, dcancel := context.WithTimeout(context.Background(), 3*time.Second)
		conn, err := controlplane.DialerIn(c.n.NS.Path())(dctx, "tcp", vip)
		dcancel()
		if err != nil {
			if time.Now().After(deadline) {
				t.Fatalf("connect to Service web at %s: %v", vip, err)
			}
			time.Sleep(500 * time.Millisecond) // kube-proxy's next sync
			continue
		}
		t.Cleanup(func() { conn.Close() })
		i++
	}
	return svc.Spec.ClusterIP
}

// checkKubeProxy: with kube-proxy's iptables rules for Service web on the
// node, the exporter reports the mode, the nat KUBE-SERVICES chain's rules
// as iptables-save lists them, no drift, and attributes the DNATed
// connections connectService opened from the node to the Service and its
// backend pod.
func (c *cluster) checkKubeProxy(t *testing.T, clusterIP string) {
	// (conntrack prints its summary line on standard error.)
	tracked := strings.Count(c.n.MustRun(t, "conntrack", "-L", "-p", "tcp", "-d", clusterIP, "--dport", "80", "--state", "ESTABLISHED"), " ESTABLISHED src=")

	nat := c.n.MustRun(t, "iptables-save", "-t", "nat")
	rules := float64(strings.Count(nat, "\n-A KUBE-SERVICES "))
	// The rule and attribution snapshots refresh every 30 s (the manifest's
	// defaults); the first ones, at start-up, saw the rules and connections.
	c.s.waitFor(t, 90*time.Second, "kube-proxy's rules and the Service's connections", func(s series) (bool, string) {
		checks := []expect{
			{"netinspect_kube_proxy_mode_info", map[string]string{"mode": "iptables"}, 1},
			{"netinspect_iptables_rules", map[string]string{"family": "ipv4", "table": "nat", "chain": "KUBE-SERVICES"}, rules},
			{"netinspect_conntrack_service_entries", map[string]string{"namespace": appNS, "service": "web", "protocol": "tcp"}, float64(tracked)},
		}
		// The drift judgment (the default output has no per-Service series):
		// a healthy node has nothing missing, stale or with other endpoints,
		// and web is one of the service ports in sync.
		for _, state := range []string{"missing", "stale", "endpoints"} {
			checks = append(checks, expect{"netinspect_kube_proxy_service_ports", map[string]string{"family": "ipv4", "state": state}, 0})
		}
		if v, ok := s.one("netinspect_kube_proxy_service_ports", map[string]string{"family": "ipv4", "state": "in_sync"}); !ok || v < 2 {
			return false, fmt.Sprintf("kube_proxy_service_ports{in_sync} = %v (present %v), want at least 2 (kubernetes and web)", v, ok)
		}
		if n := len(s.match("netinspect_iptables_service_endpoints", nil)); n != 0 {
			return false, fmt.Sprintf("%d iptables_service_endpoints series with the default flags, want none", n)
		}
		for _, ch := range checks {
			if v, ok := s.one(ch.name, ch.labels); !ok || v != ch.value {
				return false, fmt.Sprintf("%s%v = %v (present %v), want %v", ch.name, ch.labels, v, ok, ch.value)
			}
		}
		if v, ok := s.one("netinspect_conntrack_pod_entries", map[string]string{"namespace": appNS, "pod": c.before.Name, "protocol": "tcp"}); !ok || v < float64(tracked) {
			return false, fmt.Sprintf("conntrack_pod_entries of the backend = %v (present %v), want at least %d", v, ok, tracked)
		}
		return true, ""
	})
	if tracked != serviceConns {
		t.Errorf("conntrack lists %d established connections to %s:80, want %d", tracked, clusterIP, serviceConns)
	}
}

// checkDeletedPod deletes the ptp pod; the kubelet and the CNI plugin
// remove its sandbox and veth, and the exporter's next scrapes carry no
// series of it.
func (c *cluster) checkDeletedPod(t *testing.T) {
	start := time.Now()
	c.deletePod(t, appNS, c.after.Name)
	t.Logf("pod %s gone from the API %v after its deletion", c.after.Name, time.Since(start).Round(100*time.Millisecond))
	defer func() { t.Logf("its series gone %v after its deletion", time.Since(start).Round(100*time.Millisecond)) }()
	// When each series of the pod was last seen: snapshot collectors
	// (conntrack attribution) drop a pod at their next pass.
	lastSeen := map[string]time.Duration{}
	defer func() {
		for k, d := range lastSeen {
			t.Logf("last seen %v after the deletion: %s", d.Round(100*time.Millisecond), k)
		}
	}()
	c.s.waitFor(t, time.Minute, "no series of the deleted pod", func(s series) (bool, string) {
		if keys := s.withPod(appNS, c.after.Name); len(keys) > 0 {
			for _, k := range keys {
				lastSeen[k] = time.Since(start)
			}
			return false, strings.Join(keys, " ")
		}
		if v, ok := s.one("netinspect_veth_unmapped", nil); !ok || v != 0 {
			return false, fmt.Sprintf("netinspect_veth_unmapped = %v", v)
		}
		return true, ""
	})
}

// expect is a series' expected value.
type expect struct {
	name   string
	labels map[string]string
	value  float64
}
