package collector

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/test/topology"
)

const (
	testNode      = "node-1"
	testNamespace = "default"
	hostNetPod    = "host-agent"
)

// vethEnv is a node namespace with the standard layout, and a Pod object
// for every pod namespace but the orphan, plus a hostNetwork Pod.
type vethEnv struct {
	topo  *topology.Topology
	pods  podStore
	index *kube.Index
}

func newVethEnv(t testing.TB, pods podStore) *vethEnv {
	t.Helper()
	e := &vethEnv{topo: topology.New(t), pods: pods, index: pods.Index()}
	e.topo.AddStandard()
	for _, s := range topology.StandardSpecs() {
		if s.Name != topology.PodOrphan {
			e.addPodObject(t, s.Name)
		}
	}
	pods.Set(t, kube.PodInfo{Namespace: testNamespace, Name: hostNetPod, Node: testNode,
		HostNetwork: true, IPs: []netip.Addr{netip.MustParseAddr(topology.NodeIP)}})
	return e
}

// addPodObject creates the Pod of a topology pod, with its first
// interface's addresses as status.podIPs (as for a Multus pod, whose other
// interfaces' addresses are not in the Pod's status).
func (e *vethEnv) addPodObject(t testing.TB, name string) {
	t.Helper()
	var ips []netip.Addr
	for _, a := range e.topo.Pod(name).Interfaces[0].Addrs {
		ips = append(ips, a.Addr())
	}
	e.pods.Set(t, kube.PodInfo{Namespace: testNamespace, Name: name, Node: testNode, IPs: ips})
}

func (e *vethEnv) collector(t testing.TB, logger *zap.Logger, cfg VethConfig) *Veth {
	t.Helper()
	c, err := NewVeth(cfg, Deps{Logger: logger, Paths: Paths{ProcFS: "/proc", NetNS: e.topo.NetNSDir}, Index: e.index})
	if err != nil {
		t.Fatal(err)
	}
	return in(c, e.topo.Node)
}

// vethRegistry registers the collector through the Set adapter, as the
// binary does.
func vethRegistry(t testing.TB, c Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	set := NewSet(zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), map[string]Collector{VethName: c})
	reg.MustRegister(set.Scrape(context.Background()))
	return reg
}

func hostName(e *vethEnv, pod, iface string) string {
	for _, i := range e.topo.Pod(pod).Interfaces {
		if i.Name == iface {
			return i.HostName
		}
	}
	panic("no interface " + pod + "/" + iface)
}

func infoLine(pod, iface, host, method string) string {
	return fmt.Sprintf(`netinspect_pod_interface_info{host_interface=%q,interface=%q,method=%q,namespace=%q,pod=%q} 1`,
		host, iface, method, testNamespace, pod)
}

func expectMapping(t *testing.T, reg *prometheus.Registry, unmapped int, lines ...string) {
	t.Helper()
	sort.Strings(lines)
	want := ""
	if len(lines) > 0 {
		want = "# HELP netinspect_pod_interface_info A pod interface whose host end (a veth) is on this node, and how it was mapped: netns, route or fdb.\n" +
			"# TYPE netinspect_pod_interface_info gauge\n" + strings.Join(lines, "\n") + "\n"
	}
	want += "# HELP netinspect_veth_unmapped Host veth interfaces whose peer is in another network namespace but belongs to no known pod.\n" +
		"# TYPE netinspect_veth_unmapped gauge\n" +
		fmt.Sprintf("netinspect_veth_unmapped %d\n", unmapped) +
		"# HELP netinspect_scrape_collector_success Whether the collector succeeded in this scrape (1) or failed, timed out or found its source absent (0).\n" +
		"# TYPE netinspect_scrape_collector_success gauge\n" +
		"netinspect_scrape_collector_success{collector=\"veth\"} 1\n"
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"netinspect_pod_interface_info", "netinspect_veth_unmapped", "netinspect_scrape_collector_success"); err != nil {
		t.Fatal(err)
	}
}

// TestVethMapping checks every pod interface of the standard layout with
// each method alone and with all of them.
func TestVethMapping(t *testing.T) {
	e := newVethEnv(t, vethPods(t))
	P := func(pod, iface string, method string) string {
		return infoLine(pod, iface, hostName(e, pod, iface), method)
	}
	const (
		a, b, ptp, dual, multus, proc = topology.PodBridgeA, topology.PodBridgeB, topology.PodPTP,
			topology.PodDual, topology.PodMultus, topology.PodProc
	)

	// Entries of the netns directory that are no network namespace are
	// skipped without error.
	if err := os.WriteFile(filepath.Join(e.topo.NetNSDir, "not-a-netns"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(e.topo.NetNSDir, "a-directory"), 0o755); err != nil {
		t.Fatal(err)
	}

	t.Run("netns", func(t *testing.T) {
		reg := vethRegistry(t, e.collector(t, zap.NewNop(), VethConfig{Methods: []string{VethMethodNetNS}}))
		// The orphan namespace has addresses but no Pod: unmapped.
		expectMapping(t, reg, 1,
			P(a, "eth0", "netns"), P(b, "eth0", "netns"), P(ptp, "eth0", "netns"), P(dual, "eth0", "netns"),
			P(multus, "eth0", "netns"), P(multus, "net1", "netns"), P(proc, "eth0", "netns"))
	})

	t.Run("route", func(t *testing.T) {
		reg := vethRegistry(t, e.collector(t, zap.NewNop(), VethConfig{Methods: []string{VethMethodRoute}}))
		// Without entering namespaces the pod-side name is unknown; the
		// bridge pods have no host route; the Multus pod's net1 has one, but
		// its address is not among the Pod's status.podIPs.
		expectMapping(t, reg, 5,
			infoLine(ptp, "", hostName(e, ptp, "eth0"), "route"),
			infoLine(dual, "", hostName(e, dual, "eth0"), "route"),
			infoLine(proc, "", hostName(e, proc, "eth0"), "route"))
	})

	t.Run("route-ipv6-only", func(t *testing.T) {
		// The dual-stack pod is found by its /128 alone.
		ix := kube.NewIndex(testNode)
		ix.SetPod(kube.PodInfo{Namespace: testNamespace, Name: dual, Node: testNode, IPs: []netip.Addr{netip.MustParseAddr("fd00:10:245::6")}})
		c, err := inNS(NewVeth(VethConfig{Methods: []string{VethMethodRoute}}, Deps{Index: ix}))(e.topo.Node)
		if err != nil {
			t.Fatal(err)
		}
		expectMapping(t, vethRegistry(t, c), 7, infoLine(dual, "", hostName(e, dual, "eth0"), "route"))
	})

	t.Run("fdb", func(t *testing.T) {
		c := e.collector(t, zap.NewNop(), VethConfig{Methods: []string{VethMethodFDB}})
		reg := vethRegistry(t, c)
		// Before any traffic the bridge has learned nothing.
		expectMapping(t, reg, 8)
		// A datagram to the gateway makes the pod ARP for it (the node
		// learns the pod's IP -> MAC) and the bridge learn the pod's MAC.
		for _, p := range []string{a, b, multus} {
			e.topo.SendUDP(e.topo.Pod(p), netip.MustParseAddr("10.244.0.1"), 9, 1)
		}
		c.mu.Lock()
		c.scan = nil // the bridge tables changed, not the links: force a rescan
		c.mu.Unlock()
		expectMapping(t, reg, 5,
			infoLine(a, "", hostName(e, a, "eth0"), "fdb"),
			infoLine(b, "", hostName(e, b, "eth0"), "fdb"),
			infoLine(multus, "", hostName(e, multus, "eth0"), "fdb"))
	})

	t.Run("all", func(t *testing.T) {
		core, logs := observer.New(zap.DebugLevel)
		reg := vethRegistry(t, e.collector(t, zap.New(core), VethConfig{}))
		all := []string{P(a, "eth0", "netns"), P(b, "eth0", "netns"), P(ptp, "eth0", "netns"), P(dual, "eth0", "netns"),
			P(multus, "eth0", "netns"), P(multus, "net1", "netns"), P(proc, "eth0", "netns")}
		expectMapping(t, reg, 1, all...)
		if n := logs.FilterMessageSnippet("disagree").Len(); n != 0 {
			t.Errorf("methods agree, yet %d disagreements were logged: %v", n, logs.All())
		}
		if got := logs.FilterMessage("host veths with no pod").All(); len(got) != 1 || got[0].Level != zap.DebugLevel {
			t.Errorf("unmapped veths logged %v, want once at debug", got)
		}
	})

	t.Run("disagreement", func(t *testing.T) {
		// A wrong /32 route for bridge-b's address through bridge-a's veth:
		// the route method says bridge-b, netns says bridge-a and wins.
		hostA := hostName(e, a, "eth0")
		e.topo.Node.MustRun("ip", "route", "add", "10.244.0.3/32", "dev", hostA)
		defer e.topo.Node.MustRun("ip", "route", "del", "10.244.0.3/32", "dev", hostA)
		core, logs := observer.New(zap.DebugLevel)
		c := e.collector(t, zap.New(core), VethConfig{})
		reg := vethRegistry(t, c)
		for range 2 {
			c.mu.Lock()
			c.scan = nil
			c.mu.Unlock()
			expectMapping(t, reg, 1, P(a, "eth0", "netns"), P(b, "eth0", "netns"), P(ptp, "eth0", "netns"), P(dual, "eth0", "netns"),
				P(multus, "eth0", "netns"), P(multus, "net1", "netns"), P(proc, "eth0", "netns"))
		}
		got := logs.FilterMessageSnippet("disagree").All()
		if len(got) != 1 {
			t.Fatalf("disagreement logged %d times over two scrapes, want once: %v", len(got), got)
		}
		if f := got[0].ContextMap(); f["host_interface"] != hostA || f["pod"] != testNamespace+"/"+a {
			t.Errorf("disagreement log fields = %v", f)
		}
	})

	t.Run("no-index", func(t *testing.T) {
		// Enrichment off: every veth is unmapped, nothing is invented.
		c, err := inNS(NewVeth(VethConfig{}, Deps{Paths: Paths{ProcFS: "/proc", NetNS: e.topo.NetNSDir}}))(e.topo.Node)
		if err != nil {
			t.Fatal(err)
		}
		expectMapping(t, vethRegistry(t, c), 8)
	})
}

// series reads every sample of a gather as "name{labels}" -> value.
func series(t testing.TB, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out[seriesKey(mf.GetName(), m)] = sampleValue(m)
		}
	}
	return out
}

func seriesKey(name string, m *dto.Metric) string {
	var ls []string
	for _, l := range m.GetLabel() {
		ls = append(ls, l.GetName()+"="+l.GetValue())
	}
	return name + "{" + strings.Join(ls, ",") + "}"
}

func sampleValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return 0
}

// linkStats reads an interface's counters inside a pod namespace, the way
// `ip -s link` does.
func linkStats(t testing.TB, path, iface string) netlink.LinkStatistics {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	h, err := netlink.NewHandleAt(netns.NsHandle(fd), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(iface)
	if err != nil {
		t.Fatalf("%s in %s: %v", iface, path, err)
	}
	return *l.Attrs().Statistics
}

// TestVethTraffic sends traffic between pods and checks that each pod's
// counters equal the kernel's statistics of the pod's own interface.
func TestVethTraffic(t *testing.T) {
	e := newVethEnv(t, vethPods(t))
	reg := vethRegistry(t, e.collector(t, zap.NewNop(), VethConfig{}))
	type ifc struct{ pod, iface string }
	ifaces := []ifc{{topology.PodBridgeA, "eth0"}, {topology.PodBridgeB, "eth0"}, {topology.PodPTP, "eth0"},
		{topology.PodDual, "eth0"}, {topology.PodMultus, "eth0"}, {topology.PodMultus, "net1"}, {topology.PodProc, "eth0"}}
	key := func(metric string, i ifc) string {
		return fmt.Sprintf("netinspect_pod_network_%s{interface=%s,namespace=%s,pod=%s}", metric, i.iface, testNamespace, i.pod)
	}
	kernel := func() map[ifc]netlink.LinkStatistics {
		out := map[ifc]netlink.LinkStatistics{}
		for _, i := range ifaces {
			out[i] = linkStats(t, e.topo.Pod(i.pod).Path, i.iface)
		}
		return out
	}
	// stable scrapes between two identical kernel readings, so no packet
	// (an IPv6 multicast report, say) slipped in between.
	stable := func() (map[string]float64, map[ifc]netlink.LinkStatistics) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			k1 := kernel()
			s := series(t, reg)
			if k2 := kernel(); fmt.Sprint(k1) == fmt.Sprint(k2) {
				return s, k1
			}
		}
		t.Fatal("the pods' counters did not stay still for one scrape within 30 s")
		return nil, nil
	}
	check := func(s map[string]float64, k map[ifc]netlink.LinkStatistics) {
		t.Helper()
		for _, i := range ifaces {
			st := k[i]
			for metric, want := range map[string]uint64{
				"receive_bytes_total": st.RxBytes, "transmit_bytes_total": st.TxBytes,
				"receive_packets_total": st.RxPackets, "transmit_packets_total": st.TxPackets,
			} {
				got, ok := s[key(metric, i)]
				if !ok {
					t.Errorf("no series %s", key(metric, i))
					continue
				}
				if got != float64(want) {
					t.Errorf("%s = %v, kernel (pod side) says %d", key(metric, i), got, want)
				}
			}
		}
	}
	s0, k0 := stable()
	check(s0, k0)

	sends := []struct {
		from, to string
		n        int
	}{
		{topology.PodBridgeA, "10.244.0.3", 50},  // bridge to bridge
		{topology.PodPTP, "10.244.2.5", 30},      // point-to-point to the Multus pod's second interface
		{topology.PodDual, "fd00:10:244::1", 20}, // IPv6 to the node
		{topology.PodProc, "10.244.0.5", 10},     // routed to a bridge pod
		{topology.PodMultus, "10.244.1.5", 15},   // Multus eth0 (default route) to the ptp pod
		{topology.PodBridgeB, "10.244.1.6", 25},  // bridge to the dual-stack pod
	}
	for _, sd := range sends {
		e.topo.SendUDP(e.topo.Pod(sd.from), netip.MustParseAddr(sd.to), 9, sd.n)
	}
	s1, k1 := stable()
	check(s1, k1)
	for _, sd := range sends {
		i := ifc{sd.from, "eth0"}
		if d := s1[key("transmit_packets_total", i)] - s0[key("transmit_packets_total", i)]; d < float64(sd.n) {
			t.Errorf("%s sent %d datagrams, transmit_packets_total grew by %v", sd.from, sd.n, d)
		}
	}
	if d := s1[key("receive_packets_total", ifc{topology.PodMultus, "net1"})] - s0[key("receive_packets_total", ifc{topology.PodMultus, "net1"})]; d < 30 {
		t.Errorf("multus net1 received %v packets, want >= 30", d)
	}
	for k := range s1 {
		if strings.Contains(k, "pod="+hostNetPod) || strings.Contains(k, "pod="+topology.PodOrphan) {
			t.Errorf("series for a pod that must not be mapped: %s", k)
		}
	}
}

func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestVethChurn creates and deletes 100 pods while scraping, then checks
// that only the standard pods' series remain and that no file descriptor or
// goroutine was left behind.
func TestVethChurn(t *testing.T) {
	e := newVethEnv(t, newAPIPods(t))
	c := e.collector(t, zap.NewNop(), VethConfig{})
	c.retryInterval = time.Millisecond
	reg := vethRegistry(t, c)
	infoSeries := func(s map[string]float64) []string {
		var out []string
		for k := range s {
			if strings.HasPrefix(k, "netinspect_pod_") || strings.HasPrefix(k, "netinspect_veth_unmapped") {
				out = append(out, k)
			}
		}
		sort.Strings(out)
		return out
	}
	before := infoSeries(series(t, reg))
	fds, goroutines := countFDs(t), runtime.NumGoroutine()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var scrapes, maxPods, failed int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			mfs, err := reg.Gather()
			if err != nil {
				t.Errorf("gather during churn: %v", err)
				return
			}
			scrapes++
			for _, mf := range mfs {
				switch mf.GetName() {
				case "netinspect_pod_interface_info":
					maxPods = max(maxPods, len(mf.GetMetric()))
				case "netinspect_scrape_collector_success":
					// Namespaces and links vanishing mid-scan are skipped,
					// not errors.
					if v := mf.GetMetric()[0].GetGauge().GetValue(); v != 1 {
						failed++
					}
				}
			}
		}
	}()
	const n = 100
	var names []string
	for i := range n {
		name := fmt.Sprintf("churn-%03d", i)
		spec := topology.PodSpec{Name: name}
		if i%2 == 0 {
			spec.Interfaces = []topology.IfaceSpec{{Name: "eth0", Attach: topology.Bridge, Addrs: []string{fmt.Sprintf("10.244.0.%d/24", 100+i)}, DefaultRoute: true}}
		} else {
			spec.Interfaces = []topology.IfaceSpec{{Name: "eth0", Attach: topology.PTP, Addrs: []string{fmt.Sprintf("10.244.4.%d/32", i), fmt.Sprintf("fd00:10:246::%x/128", i)}, DefaultRoute: true}}
		}
		e.topo.AddPod(spec)
		e.addPodObject(t, name)
		names = append(names, name)
		if len(names) > 20 { // keep a window of live pods, deleting the oldest
			old := names[0]
			names = names[1:]
			e.pods.Delete(t, testNamespace, old)
			e.topo.DeletePod(old)
		}
	}
	for _, old := range names {
		e.pods.Delete(t, testNamespace, old)
		e.topo.DeletePod(old)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d scrapes during the churn; at most %d pod interfaces at once", scrapes, maxPods)
	if failed > 0 {
		t.Errorf("%d of %d scrapes during the churn failed", failed, scrapes)
	}
	if maxPods <= 7 {
		t.Errorf("no churn pod was ever mapped during the churn (max %d interfaces)", maxPods)
	}

	after := infoSeries(series(t, reg))
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("series after the churn differ from before:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
	// Fewer is fine (the API client may have closed an idle connection);
	// more is a leak.
	if got := countFDs(t); got > fds {
		t.Errorf("open file descriptors: %d before the churn, %d after", fds, got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
	if got := runtime.NumGoroutine(); got > goroutines {
		t.Errorf("goroutines: %d before the churn, %d after", goroutines, got)
	}
}
