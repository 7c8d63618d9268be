package collector

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	mobyipvs "github.com/moby/ipvs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/source/ipvs"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/vm"
)

// TestVMIPVS boots the qemu VM (Debian's kernel, which has IPVS; the host's
// has not) and runs the TestIPVSGuest* tests there. It fails unless each of
// them printed --- PASS in the guest.
func TestVMIPVS(t *testing.T) {
	res := vm.Run(t, vm.Config{
		Package:  ".",
		Run:      "^TestIPVSGuest",
		Modules:  append(append([]string(nil), vm.DefaultModules...), "ip_vs_sh"),
		Commands: []string{"ip"},
		Timeout:  8 * time.Minute,
	})
	res.RequirePassed(t, "TestIPVSGuestCollector", "TestIPVSGuestBackendLabels", "TestIPVSGuestInfo", "TestIPVSGuestBackendSourcesAgree", "TestIPVSGuestDefaultSeries")
}

// ipvsTopology is a node with IPVS, a client and a backend namespace, wired
// the way kube-proxy's IPVS mode sees a node (LVS-NAT):
//
//	client 10.0.1.2 --veth-- 10.0.1.1 node 10.0.2.1 --veth-- backends 10.0.2.11-13
//
// The node holds the virtual IPs on a dummy kube-ipvs0 and forwards.
type ipvsTopology struct {
	node, client, backends *netns.NS
	h                      *mobyipvs.Handle
}

func newIPVSTopology(t *testing.T) *ipvsTopology {
	t.Helper()
	tp := &ipvsTopology{
		node:     netns.New(t, "node"),
		client:   netns.New(t, "cli"),
		backends: netns.New(t, "be"),
	}
	n, c, b := tp.node, tp.client, tp.backends
	n.MustRun("ip", "link", "add", "c0", "type", "veth", "peer", "name", "c1", "netns", c.Name)
	n.MustRun("ip", "link", "add", "b0", "type", "veth", "peer", "name", "b1", "netns", b.Name)
	n.MustRun("ip", "addr", "add", "10.0.1.1/24", "dev", "c0")
	n.MustRun("ip", "addr", "add", "10.0.2.1/24", "dev", "b0")
	n.MustRun("ip", "link", "set", "c0", "up")
	n.MustRun("ip", "link", "set", "b0", "up")
	n.MustRun("ip", "link", "add", "kube-ipvs0", "type", "dummy")
	for _, vip := range []string{"10.96.0.10", "10.96.0.11", "10.96.0.12", "10.96.0.20"} {
		n.MustRun("ip", "addr", "add", vip+"/32", "dev", "kube-ipvs0")
	}
	n.SetSysctl("net.ipv4.ip_forward", "1")
	c.MustRun("ip", "addr", "add", "10.0.1.2/24", "dev", "c1")
	c.MustRun("ip", "link", "set", "c1", "up")
	c.MustRun("ip", "route", "add", "default", "via", "10.0.1.1")
	for _, ip := range []string{"10.0.2.11", "10.0.2.12", "10.0.2.13"} {
		b.MustRun("ip", "addr", "add", ip+"/24", "dev", "b1")
	}
	b.MustRun("ip", "link", "set", "b1", "up")
	b.MustRun("ip", "route", "add", "default", "via", "10.0.2.1")

	h, err := mobyipvs.New(n.Path())
	if err != nil {
		t.Fatalf("ipvs handle in %s: %v", n.Name, err)
	}
	t.Cleanup(h.Close)
	tp.h = h
	return tp
}

// addService creates a virtual server and its backends through netlink as
// kube-proxy does (moby/ipvs, NAT forwarding).
func (tp *ipvsTopology) addService(t *testing.T, svc *mobyipvs.Service, weights map[string]int) {
	t.Helper()
	svc.AddressFamily, svc.Netmask = unix.AF_INET, 0xffffffff
	if svc.Address != nil && svc.Address.To4() == nil {
		svc.AddressFamily, svc.Netmask = unix.AF_INET6, 128
	}
	if err := tp.h.NewService(svc); err != nil {
		t.Fatalf("create IPVS service %+v: %v", svc, err)
	}
	for addr, w := range weights {
		ap := netip.MustParseAddrPort(addr)
		af := uint16(unix.AF_INET)
		if ap.Addr().Is6() {
			af = unix.AF_INET6
		}
		d := &mobyipvs.Destination{Address: net.IP(ap.Addr().AsSlice()), Port: ap.Port(), Weight: w, AddressFamily: af}
		if err := tp.h.NewDestination(svc, d); err != nil {
			t.Fatalf("add backend %s: %v", addr, err)
		}
	}
}

// ipvsEchoServers listens on addr:8080 in the backends namespace for each
// address and echoes what it reads until the client closes.
func ipvsEchoServers(t *testing.T, ns *netns.NS, addrs ...string) {
	t.Helper()
	var wg sync.WaitGroup
	var lns []net.Listener
	t.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
		wg.Wait()
	})
	for _, a := range addrs {
		var ln net.Listener
		if err := ns.Do(func() (err error) {
			ln, err = net.Listen("tcp", a)
			return err
		}); err != nil {
			t.Fatalf("listen %s: %v", a, err)
		}
		lns = append(lns, ln)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					io.Copy(c, c)
				}()
			}
		}()
	}
}

// ipvsDialEcho connects from the client namespace, sends a line and reads it
// back, and returns the open connection.
func ipvsDialEcho(t *testing.T, ns *netns.NS, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	if err := ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 10*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	msg := []byte("hello through ipvs\n")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through %s: %q, %v", addr, got, err)
	}
	return c
}

func ipvsTestIndex() *kube.Index {
	ix := kube.NewIndex("node1")
	ix.SetService(kube.ServiceInfo{Namespace: "shop", Name: "web", Type: "ClusterIP",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::a")},
		Ports:      []kube.ServicePortInfo{{Name: "http", Port: 80, Protocol: "tcp"}}})
	ix.SetService(kube.ServiceInfo{Namespace: "shop", Name: "api", Type: "ClusterIP",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.11")},
		Ports:      []kube.ServicePortInfo{{Port: 80, Protocol: "tcp"}}})
	ix.SetService(kube.ServiceInfo{Namespace: "kube-system", Name: "dns", Type: "ClusterIP",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.12")},
		Ports:      []kube.ServicePortInfo{{Name: "dns", Port: 53, Protocol: "udp"}}})
	ix.SetService(kube.ServiceInfo{Namespace: "shop", Name: "front", Type: "NodePort",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")},
		Ports:      []kube.ServicePortInfo{{Name: "web", Port: 80, Protocol: "tcp", NodePort: 30080}}})
	pod := func(name, ip string) kube.EndpointInfo {
		return kube.EndpointInfo{IP: netip.MustParseAddr(ip), Ready: true, Node: "node1",
			Pod: kube.PodRef{Namespace: "shop", Name: name, UID: name + "-uid"}}
	}
	ix.SetEndpointSlice("shop", "web-abc", "web", []kube.EndpointInfo{pod("web-1", "10.0.2.11"), pod("web-2", "10.0.2.12"), pod("web-3", "10.0.2.13")})
	return ix
}

// procIPVS reads /proc/net/ip_vs and /proc/net/ip_vs_stats as seen in ns.
func procIPVS(t *testing.T, ns *netns.NS) ([]ipvs.ProcService, ipvs.ProcStats) {
	t.Helper()
	svcs, err := ipvs.ParseProc(strings.NewReader(ns.MustRun("cat", "/proc/net/ip_vs")))
	if err != nil {
		t.Fatalf("parse /proc/net/ip_vs: %v", err)
	}
	st, err := ipvs.ParseProcStats(strings.NewReader(ns.MustRun("cat", "/proc/net/ip_vs_stats")))
	if err != nil {
		t.Fatalf("parse /proc/net/ip_vs_stats: %v", err)
	}
	return svcs, st
}

// gatherIPVS runs one Update and returns the samples by name and labels
// ("name{k=v,...}" with labels sorted as the registry sorts them).
func gatherIPVS(t *testing.T, c *IPVS) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, mf := range gatherIPVSFamilies(t, c) {
		for _, m := range mf.Metric {
			out[seriesKey(mf.GetName(), m)] = sampleValue(m)
		}
	}
	return out
}

// gatherIPVSFamilies runs one Update through a pedantic registry.
func gatherIPVSFamilies(t *testing.T, c *IPVS) []*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(ipvsUpdateCollector{c})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	return mfs
}

// ipvsUpdateCollector adapts a Collector to prometheus.Collector for tests,
// failing the Collect on error through an invalid metric.
type ipvsUpdateCollector struct{ c Collector }

func (ipvsUpdateCollector) Describe(chan<- *prometheus.Desc) {}

func (u ipvsUpdateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := u.c.Update(ctx, ch); err != nil {
		ch <- prometheus.NewInvalidMetric(prometheus.NewDesc("update_error", "", nil, nil), err)
	}
}

// ipvsTotals sums the counters the collector exported per virtual server
// (kind "service") or per backend (kind "backend").
func ipvsTotals(samples map[string]float64, kind string) ipvs.ProcStats {
	var st ipvs.ProcStats
	for k, v := range samples {
		name, _, _ := strings.Cut(k, "{")
		switch name {
		case "netinspect_ipvs_" + kind + "_connections_total":
			st.Conns += uint64(v)
		case "netinspect_ipvs_" + kind + "_in_packets_total":
			st.InPkts += uint64(v)
		case "netinspect_ipvs_" + kind + "_out_packets_total":
			st.OutPkts += uint64(v)
		case "netinspect_ipvs_" + kind + "_in_bytes_total":
			st.InBytes += uint64(v)
		case "netinspect_ipvs_" + kind + "_out_bytes_total":
			st.OutBytes += uint64(v)
		}
	}
	return st
}

// ipvsWaitStable polls until the collector's totals equal /proc/net/ip_vs_stats
// and stop changing between two readings. The kernel folds its per-CPU
// counters into the figures both interfaces show on the estimator's 2 s
// tick (ip_vs_est.c, kernel 6.1), so a reading right after traffic may lag.
func ipvsWaitStable(t *testing.T, tp *ipvsTopology, c *IPVS, want func(ipvs.ProcStats) bool) (map[string]float64, []ipvs.ProcService, ipvs.ProcStats) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last ipvs.ProcStats
	for {
		samples := gatherIPVS(t, c)
		procSvcs, procStats := procIPVS(t, tp.node)
		got := ipvsTotals(samples, "service")
		if got == procStats && got == last && want(got) {
			return samples, procSvcs, procStats
		}
		last = got
		if time.Now().After(deadline) {
			t.Fatalf("IPVS totals did not settle: collector %+v, /proc/net/ip_vs_stats %+v", got, procStats)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// ipvsCheckBackends asserts each backend series equals the
// /proc/net/ip_vs line of the same virtual server and backend.
func ipvsCheckBackends(t *testing.T, samples map[string]float64, procSvcs []ipvs.ProcService, ix *kube.Index) {
	t.Helper()
	n := 0
	for _, s := range procSvcs {
		proto, addr, port := strings.ToLower(s.Protocol), s.Addr.String(), fmt.Sprint(s.Port)
		if s.Protocol == "FWM" {
			proto, addr, port = "fwmark", "0.0.0.0", fmt.Sprint(s.FWMark)
		}
		ref, ok := ix.ServiceByAddrPort(proto, s.Addr, s.Port)
		if !ok && addr == "10.0.1.1" {
			ref, _ = ix.ServiceByNodePort(proto, s.Port)
		}
		for _, b := range s.Backends {
			pod, _ := ix.EndpointPodByIP(b.Addr)
			ns := ref.Namespace
			if ns == "" {
				ns = pod.Namespace
			}
			labels := fmt.Sprintf("{address=%s,backend_address=%s,backend_port=%d,namespace=%s,pod=%s,port=%s,protocol=%s,service=%s}",
				addr, b.Addr, b.Port, ns, pod.Name, port, proto, ref.Service)
			for name, want := range map[string]uint32{
				"netinspect_ipvs_backend_connections_active":   b.Active,
				"netinspect_ipvs_backend_connections_inactive": b.Inactive,
				"netinspect_ipvs_backend_weight":               b.Weight,
			} {
				got, ok := samples[name+labels]
				if !ok {
					t.Errorf("no series %s%s", name, labels)
					continue
				}
				if got != float64(want) {
					t.Errorf("%s%s = %v, /proc/net/ip_vs says %d", name, labels, got, want)
				}
			}
			n++
		}
	}
	var series int
	for k := range samples {
		if strings.HasPrefix(k, "netinspect_ipvs_backend_weight{") {
			series++
		}
	}
	if series != n {
		t.Errorf("collector exported %d backends, /proc/net/ip_vs lists %d", series, n)
	}
}

// TestIPVSGuestCollector runs inside the VM: virtual servers made through
// netlink as kube-proxy makes them, real backends and clients in network
// namespaces, and the collector's figures against /proc/net/ip_vs and
// /proc/net/ip_vs_stats read in the same test.
func TestIPVSGuestCollector(t *testing.T) {
	vm.RequireGuest(t)
	tp := newIPVSTopology(t)
	ipvsEchoServers(t, tp.backends, "10.0.2.11:8080", "10.0.2.12:8080", "10.0.2.13:8080")

	web := &mobyipvs.Service{Address: net.IPv4(10, 96, 0, 10), Protocol: unix.IPPROTO_TCP, Port: 80, SchedName: "rr"}
	tp.addService(t, web, map[string]int{"10.0.2.11:8080": 1, "10.0.2.12:8080": 1, "10.0.2.13:8080": 1})
	api := &mobyipvs.Service{Address: net.IPv4(10, 96, 0, 11), Protocol: unix.IPPROTO_TCP, Port: 80, SchedName: "wrr"}
	tp.addService(t, api, map[string]int{"10.0.2.11:8080": 2, "10.0.2.12:8080": 1})
	nodePort := &mobyipvs.Service{Address: net.IPv4(10, 0, 1, 1), Protocol: unix.IPPROTO_TCP, Port: 30080, SchedName: "rr"}
	tp.addService(t, nodePort, map[string]int{"10.0.2.13:8080": 1})
	mark := &mobyipvs.Service{FWMark: 100, SchedName: "rr"}
	tp.addService(t, mark, map[string]int{"10.0.2.13:8080": 1})
	// A service whose backends were all removed: kube-proxy keeps the
	// virtual server of a Service with no ready endpoints.
	dns := &mobyipvs.Service{Address: net.IPv4(10, 96, 0, 12), Protocol: unix.IPPROTO_UDP, Port: 53, SchedName: "rr"}
	tp.addService(t, dns, map[string]int{"10.0.2.11:53": 1})
	if err := tp.h.DelDestination(dns, &mobyipvs.Destination{Address: net.IPv4(10, 0, 2, 11), Port: 53, AddressFamily: unix.AF_INET}); err != nil {
		t.Fatalf("remove backend: %v", err)
	}
	// An IPv6 virtual server (dual-stack ClusterIP), no traffic.
	v6 := &mobyipvs.Service{Address: net.ParseIP("fd00::a"), Protocol: unix.IPPROTO_TCP, Port: 80, SchedName: "rr"}
	tp.addService(t, v6, map[string]int{"[fd00::2:b]:8080": 1, "[fd00::2:c]:8080": 1})

	ix := ipvsTestIndex()
	c, err := inNS(NewIPVS(IPVSConfig{ServiceSeries: ServiceSeriesAll, Backends: true, BackendStats: true}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ix}))(tp.node)
	if err != nil {
		t.Fatal(err)
	}

	// Phase 1: connections held open. rr spreads six over three backends;
	// wrr 2:1 sends two of three to .11.
	var conns []net.Conn
	for range 6 {
		conns = append(conns, ipvsDialEcho(t, tp.client, "10.96.0.10:80"))
	}
	for range 3 {
		conns = append(conns, ipvsDialEcho(t, tp.client, "10.96.0.11:80"))
	}
	conns = append(conns, ipvsDialEcho(t, tp.client, "10.0.1.1:30080"))
	samples, procSvcs, procStats := ipvsWaitStable(t, tp, c, func(s ipvs.ProcStats) bool { return s.Conns == 10 })
	t.Logf("/proc/net/ip_vs_stats totals: %+v", procStats)
	// Each backend's own counters add up to the totals too (no backend was
	// removed while it had traffic).
	beTotals := ipvsTotals(samples, "backend")
	if beTotals != procStats {
		t.Errorf("backend counters sum to %+v, /proc/net/ip_vs_stats says %+v", beTotals, procStats)
	}
	ipvsCheckBackends(t, samples, procSvcs, ix)

	const svcHeader = "# HELP netinspect_ipvs_service_connections_total Connections scheduled by the IPVS virtual server since it was created.\n# TYPE netinspect_ipvs_service_connections_total counter\n"
	wantSvc := svcHeader + `netinspect_ipvs_service_connections_total{address="0.0.0.0",namespace="",port="100",port_name="",protocol="fwmark",scheduler="rr",service=""} 0
netinspect_ipvs_service_connections_total{address="10.0.1.1",namespace="shop",port="30080",port_name="web",protocol="tcp",scheduler="rr",service="front"} 1
netinspect_ipvs_service_connections_total{address="10.96.0.10",namespace="shop",port="80",port_name="http",protocol="tcp",scheduler="rr",service="web"} 6
netinspect_ipvs_service_connections_total{address="10.96.0.11",namespace="shop",port="80",port_name="80",protocol="tcp",scheduler="wrr",service="api"} 3
netinspect_ipvs_service_connections_total{address="10.96.0.12",namespace="kube-system",port="53",port_name="dns",protocol="udp",scheduler="rr",service="dns"} 0
netinspect_ipvs_service_connections_total{address="fd00::a",namespace="shop",port="80",port_name="http",protocol="tcp",scheduler="rr",service="web"} 0
`
	if err := testutil.CollectAndCompare(ipvsUpdateCollector{c}, strings.NewReader(wantSvc), "netinspect_ipvs_service_connections_total"); err != nil {
		t.Error(err)
	}
	wantActive := map[string]float64{
		`{address=10.96.0.10,backend_address=10.0.2.11,backend_port=8080,namespace=shop,pod=web-1,port=80,protocol=tcp,service=web}`:    2,
		`{address=10.96.0.10,backend_address=10.0.2.12,backend_port=8080,namespace=shop,pod=web-2,port=80,protocol=tcp,service=web}`:    2,
		`{address=10.96.0.10,backend_address=10.0.2.13,backend_port=8080,namespace=shop,pod=web-3,port=80,protocol=tcp,service=web}`:    2,
		`{address=10.96.0.11,backend_address=10.0.2.11,backend_port=8080,namespace=shop,pod=web-1,port=80,protocol=tcp,service=api}`:    2,
		`{address=10.96.0.11,backend_address=10.0.2.12,backend_port=8080,namespace=shop,pod=web-2,port=80,protocol=tcp,service=api}`:    1,
		`{address=10.0.1.1,backend_address=10.0.2.13,backend_port=8080,namespace=shop,pod=web-3,port=30080,protocol=tcp,service=front}`: 1,
		`{address=0.0.0.0,backend_address=10.0.2.13,backend_port=8080,namespace=shop,pod=web-3,port=100,protocol=fwmark,service=}`:      0,
		`{address=fd00::a,backend_address=fd00::2:b,backend_port=8080,namespace=shop,pod=,port=80,protocol=tcp,service=web}`:            0,
	}
	for labels, want := range wantActive {
		if got := samples["netinspect_ipvs_backend_connections_active"+labels]; got != want {
			t.Errorf("active connections %s = %v, want %v", labels, got, want)
		}
	}
	for k := range samples {
		if strings.HasPrefix(k, "netinspect_ipvs_backend_") && strings.Contains(k, "address=10.96.0.12,") {
			t.Errorf("drained service has a backend series: %s", k)
		}
	}
	if procStats.InBytes == 0 || procStats.OutBytes == 0 || procStats.InPkts == 0 || procStats.OutPkts == 0 {
		t.Errorf("no traffic counted: %+v", procStats)
	}

	// Phase 2: close every connection: active goes to 0 and the closed
	// connections are inactive (FIN/TIME_WAIT) until IPVS expires them.
	for _, conn := range conns {
		conn.Close()
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		samples = gatherIPVS(t, c)
		var active, inactive float64
		for k, v := range samples {
			switch {
			case strings.HasPrefix(k, "netinspect_ipvs_backend_connections_active{"):
				active += v
			case strings.HasPrefix(k, "netinspect_ipvs_backend_connections_inactive{"):
				inactive += v
			}
		}
		if active == 0 && inactive == 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after closing: active %v, inactive %v; want 0 and 10", active, inactive)
		}
		time.Sleep(200 * time.Millisecond)
	}
	procSvcs, _ = procIPVS(t, tp.node)
	samples = gatherIPVS(t, c)
	ipvsCheckBackends(t, samples, procSvcs, ix)

	// Phase 3: delete and recreate a service: the kernel starts its
	// counters from zero, which Prometheus reads as a counter reset.
	if err := tp.h.DelService(api); err != nil {
		t.Fatal(err)
	}
	tp.addService(t, api, map[string]int{"10.0.2.11:8080": 1})
	samples = gatherIPVS(t, c)
	if got := samples[`netinspect_ipvs_service_connections_total{address=10.96.0.11,namespace=shop,port=80,port_name=80,protocol=tcp,scheduler=wrr,service=api}`]; got != 0 {
		t.Errorf("recreated service connections = %v, want 0", got)
	}
}

// TestIPVSGuestBackendLabels runs inside the VM: dropping backend labels
// sums backends, and Backends=false drops the backend series.
func TestIPVSGuestBackendLabels(t *testing.T) {
	vm.RequireGuest(t)
	tp := newIPVSTopology(t)
	web := &mobyipvs.Service{Address: net.IPv4(10, 96, 0, 10), Protocol: unix.IPPROTO_TCP, Port: 80, SchedName: "wrr"}
	tp.addService(t, web, map[string]int{"10.0.2.11:8080": 3, "10.0.2.12:8080": 2, "10.0.2.13:8080": 1})
	deps := Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ipvsTestIndex()}

	c, err := inNS(NewIPVS(IPVSConfig{ServiceSeries: ServiceSeriesAll, Backends: true, BackendStats: true, BackendLabels: []string{"namespace", "service"}}, deps))(tp.node)
	if err != nil {
		t.Fatal(err)
	}
	want := `# HELP netinspect_ipvs_backend_weight Scheduling weight of the IPVS backend (0: takes no new connections).
# TYPE netinspect_ipvs_backend_weight gauge
netinspect_ipvs_backend_weight{namespace="shop",service="web"} 6
# HELP netinspect_ipvs_backend_connections_total Connections the IPVS virtual server scheduled to the backend since the backend was added.
# TYPE netinspect_ipvs_backend_connections_total counter
netinspect_ipvs_backend_connections_total{namespace="shop",service="web"} 0
`
	if err := testutil.CollectAndCompare(ipvsUpdateCollector{c}, strings.NewReader(want), "netinspect_ipvs_backend_weight", "netinspect_ipvs_backend_connections_total"); err != nil {
		t.Error(err)
	}

	c, err = inNS(NewIPVS(IPVSConfig{ServiceSeries: ServiceSeriesAll, Backends: false}, deps))(tp.node)
	if err != nil {
		t.Fatal(err)
	}
	samples := gatherIPVS(t, c)
	if len(samples) != 6 {
		t.Errorf("with backends off want the 5 service series and service_info, got %d: %v", len(samples), samples)
	}
}

// TestIPVSGuestInfo runs inside the VM: virtual server flags, persistence
// timeout and backend forwarding methods as set through netlink, checked
// against /proc/net/ip_vs read in the same test.
func TestIPVSGuestInfo(t *testing.T) {
	vm.RequireGuest(t)
	tp := newIPVSTopology(t)
	// sessionAffinity: ClientIP makes kube-proxy create a persistent
	// virtual server with the affinity timeout (10800 s by default).
	sticky := &mobyipvs.Service{Address: net.IPv4(10, 96, 0, 10), Protocol: unix.IPPROTO_TCP, Port: 80, SchedName: "rr",
		Flags: ipvs.FlagPersistent, Timeout: 10800}
	tp.addService(t, sticky, nil)
	hashed := &mobyipvs.Service{Address: net.IPv4(10, 96, 0, 11), Protocol: unix.IPPROTO_TCP, Port: 80, SchedName: "sh",
		Flags: ipvs.FlagSched1 | ipvs.FlagSched2}
	tp.addService(t, hashed, nil)
	for addr, fwd := range map[string]uint32{
		"10.0.2.11": mobyipvs.ConnectionFlagMasq,
		"10.0.2.12": mobyipvs.ConnectionFlagDirectRoute,
		"10.0.2.13": mobyipvs.ConnectionFlagTunnel,
	} {
		d := &mobyipvs.Destination{Address: net.ParseIP(addr), Port: 8080, Weight: 1, AddressFamily: unix.AF_INET, ConnectionFlags: fwd}
		if err := tp.h.NewDestination(sticky, d); err != nil {
			t.Fatalf("add backend %s: %v", addr, err)
		}
	}
	c, err := inNS(NewIPVS(IPVSConfig{ServiceSeries: ServiceSeriesAll, Backends: true}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ipvsTestIndex()}))(tp.node)
	if err != nil {
		t.Fatal(err)
	}
	want := `# HELP netinspect_ipvs_service_info Flags of the IPVS virtual server as ipvsadm names them (persistent, ops, sh-fallback, sh-port, mh-fallback, mh-port, flag-1..3), comma separated; always 1.
# TYPE netinspect_ipvs_service_info gauge
netinspect_ipvs_service_info{address="10.96.0.10",flags="persistent",namespace="shop",port="80",port_name="http",protocol="tcp",scheduler="rr",service="web"} 1
netinspect_ipvs_service_info{address="10.96.0.11",flags="sh-fallback,sh-port",namespace="shop",port="80",port_name="80",protocol="tcp",scheduler="sh",service="api"} 1
# HELP netinspect_ipvs_service_persistence_timeout_seconds Persistence (session affinity) timeout of a persistent IPVS virtual server.
# TYPE netinspect_ipvs_service_persistence_timeout_seconds gauge
netinspect_ipvs_service_persistence_timeout_seconds{address="10.96.0.10",namespace="shop",port="80",port_name="http",protocol="tcp",scheduler="rr",service="web"} 10800
# HELP netinspect_ipvs_backend_info Forwarding method of the IPVS backend (masq, local, tunnel, route, bypass); always 1. Only with every backend label kept.
# TYPE netinspect_ipvs_backend_info gauge
netinspect_ipvs_backend_info{address="10.96.0.10",backend_address="10.0.2.11",backend_port="8080",forwarding_method="masq",namespace="shop",pod="web-1",port="80",protocol="tcp",service="web"} 1
netinspect_ipvs_backend_info{address="10.96.0.10",backend_address="10.0.2.12",backend_port="8080",forwarding_method="route",namespace="shop",pod="web-2",port="80",protocol="tcp",service="web"} 1
netinspect_ipvs_backend_info{address="10.96.0.10",backend_address="10.0.2.13",backend_port="8080",forwarding_method="tunnel",namespace="shop",pod="web-3",port="80",protocol="tcp",service="web"} 1
`
	if err := testutil.CollectAndCompare(ipvsUpdateCollector{c}, strings.NewReader(want),
		"netinspect_ipvs_service_info", "netinspect_ipvs_service_persistence_timeout_seconds", "netinspect_ipvs_backend_info"); err != nil {
		t.Error(err)
	}

	// The kernel's own view agrees: /proc/net/ip_vs prints "persistent" on
	// the persistent service's line and each backend's method.
	proc := tp.node.MustRun("cat", "/proc/net/ip_vs")
	t.Logf("/proc/net/ip_vs:\n%s", proc)
	for _, line := range strings.Split(proc, "\n") {
		switch {
		case strings.HasPrefix(line, "TCP  0A60000A:0050 rr ") && !strings.Contains(line, "persistent"):
			t.Errorf("/proc/net/ip_vs shows the sticky service without persistence: %q", line)
		case strings.HasPrefix(line, "TCP  0A60000B:0050 sh ") && strings.Contains(line, "persistent"):
			t.Errorf("/proc/net/ip_vs shows the sh service as persistent: %q", line)
		}
	}
	svcs, err := ipvs.ParseProc(strings.NewReader(proc))
	if err != nil {
		t.Fatal(err)
	}
	samples := gatherIPVS(t, c)
	checked := 0
	for _, s := range svcs {
		for _, b := range s.Backends {
			key := fmt.Sprintf("netinspect_ipvs_backend_info{address=%s,backend_address=%s,backend_port=%d,forwarding_method=%s,namespace=shop,pod=%s,port=80,protocol=tcp,service=web}",
				s.Addr, b.Addr, b.Port, strings.ToLower(b.Forward), map[string]string{"10.0.2.11": "web-1", "10.0.2.12": "web-2", "10.0.2.13": "web-3"}[b.Addr.String()])
			if samples[key] != 1 {
				t.Errorf("/proc/net/ip_vs backend %s %s: no series %s", b.Addr, b.Forward, key)
			}
			checked++
		}
	}
	if checked != 3 {
		t.Errorf("/proc/net/ip_vs lists %d backends, want 3", checked)
	}

	// Backend info is per backend: with labels dropped it is not exported.
	c, err = inNS(NewIPVS(IPVSConfig{ServiceSeries: ServiceSeriesAll, Backends: true, BackendLabels: []string{"namespace", "service"}}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ipvsTestIndex()}))(tp.node)
	if err != nil {
		t.Fatal(err)
	}
	for k := range gatherIPVS(t, c) {
		if strings.HasPrefix(k, "netinspect_ipvs_backend_info{") {
			t.Errorf("backend info exported with reduced backend labels: %s", k)
		}
	}
}

// TestIPVSAbsent runs on a kernel without IPVS (the host): the collector
// reports ErrNoData. The procfs path is a directory without net/ip_vs so
// the test holds on any kernel.
func TestIPVSAbsent(t *testing.T) {
	c, err := NewIPVS(IPVSConfig{ServiceSeries: ServiceSeriesAll, Backends: true}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: t.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan prometheus.Metric, 16)
	err = c.Update(context.Background(), ch)
	if !errors.Is(err, ErrNoData) {
		t.Fatalf("Update = %v, want ErrNoData", err)
	}
	if len(ch) != 0 {
		t.Errorf("sent %d metrics with IPVS absent", len(ch))
	}
}

// TestIPVSGuestBackendSourcesAgree runs inside the VM: without per-backend
// counters the backends come from one read of /proc/net/ip_vs, with them
// from a netlink request per virtual server; both give the same backend
// series (IPv4, IPv6 and a fwmark service, connections held open).
func TestIPVSGuestBackendSourcesAgree(t *testing.T) {
	vm.RequireGuest(t)
	tp := newIPVSTopology(t)
	ipvsEchoServers(t, tp.backends, "10.0.2.11:8080", "10.0.2.12:8080", "10.0.2.13:8080")
	web := &mobyipvs.Service{Address: net.IPv4(10, 96, 0, 10), Protocol: unix.IPPROTO_TCP, Port: 80, SchedName: "wrr"}
	tp.addService(t, web, map[string]int{"10.0.2.11:8080": 3, "10.0.2.12:8080": 2, "10.0.2.13:8080": 1})
	tp.addService(t, &mobyipvs.Service{Address: net.ParseIP("fd00::a"), Protocol: unix.IPPROTO_TCP, Port: 80, SchedName: "rr"},
		map[string]int{"[fd00::2:b]:8080": 1, "[fd00::2:c]:8080": 1})
	tp.addService(t, &mobyipvs.Service{FWMark: 100, SchedName: "rr"}, map[string]int{"10.0.2.13:8080": 1})
	for range 4 {
		defer ipvsDialEcho(t, tp.client, "10.96.0.10:80").Close()
	}
	deps := Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ipvsTestIndex()}
	fromProc, err := inNS(NewIPVS(IPVSConfig{ServiceSeries: ServiceSeriesAll, Backends: true}, deps))(tp.node)
	if err != nil {
		t.Fatal(err)
	}
	fromNetlink, err := inNS(NewIPVS(IPVSConfig{ServiceSeries: ServiceSeriesAll, Backends: true, BackendStats: true}, deps))(tp.node)
	if err != nil {
		t.Fatal(err)
	}
	backendSeries := func(samples map[string]float64) map[string]float64 {
		out := map[string]float64{}
		for k, v := range samples {
			for _, name := range []string{"active", "inactive", "weight"} {
				if strings.HasPrefix(k, "netinspect_ipvs_backend_connections_"+name+"{") || strings.HasPrefix(k, "netinspect_ipvs_backend_"+name+"{") {
					out[k] = v
				}
			}
			if strings.HasPrefix(k, "netinspect_ipvs_backend_info{") {
				out[k] = v
			}
		}
		return out
	}
	a, b := backendSeries(gatherIPVS(t, fromProc)), backendSeries(gatherIPVS(t, fromNetlink))
	if len(a) != 6*4 {
		t.Errorf("%d backend series from /proc/net/ip_vs, want 24 (6 backends x 4)", len(a))
	}
	var active float64
	for k, v := range a {
		if b[k] != v {
			t.Errorf("%s: %v from /proc/net/ip_vs, %v over netlink", k, v, b[k])
		}
		if strings.HasPrefix(k, "netinspect_ipvs_backend_connections_active{") {
			active += v
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			t.Errorf("%s only over netlink", k)
		}
	}
	if active != 4 {
		t.Errorf("active connections sum to %v, want the 4 held open", active)
	}
}

// TestIPVSGuestDefaultSeries runs inside the VM: with the default
// --collector.ipvs.service-series=drift the collector exports the per-node
// counts and the series of the virtual servers without a usable backend
// only (one with none left, one whose only backend has weight 0), capped
// by MaxNoBackendSeries; the healthy ones have none.
func TestIPVSGuestDefaultSeries(t *testing.T) {
	vm.RequireGuest(t)
	tp := newIPVSTopology(t)
	web := &mobyipvs.Service{Address: net.IPv4(10, 96, 0, 10), Protocol: unix.IPPROTO_TCP, Port: 80, SchedName: "rr"}
	tp.addService(t, web, map[string]int{"10.0.2.11:8080": 1, "10.0.2.12:8080": 1, "10.0.2.13:8080": 1})
	dns := &mobyipvs.Service{Address: net.IPv4(10, 96, 0, 12), Protocol: unix.IPPROTO_UDP, Port: 53, SchedName: "rr"}
	tp.addService(t, dns, map[string]int{"10.0.2.11:53": 1})
	if err := tp.h.DelDestination(dns, &mobyipvs.Destination{Address: net.IPv4(10, 0, 2, 11), Port: 53, AddressFamily: unix.AF_INET}); err != nil {
		t.Fatalf("remove backend: %v", err)
	}
	drained := &mobyipvs.Service{Address: net.IPv4(10, 96, 0, 20), Protocol: unix.IPPROTO_TCP, Port: 8080, SchedName: "rr"}
	tp.addService(t, drained, map[string]int{"10.0.2.13:8080": 0})

	for _, tc := range []struct {
		max      int
		troubled []string // addresses with series
	}{{50, []string{"10.96.0.12", "10.96.0.20"}}, {1, []string{"10.96.0.20"}}} { // by protocol first: tcp before udp
		cfg := DefaultIPVSConfig()
		cfg.MaxNoBackendSeries = tc.max
		c, err := inNS(NewIPVS(cfg, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ipvsTestIndex()}))(tp.node)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		_ = c.Start(t.Context())
		deadline := time.Now().Add(time.Minute)
		for c.Snapshot() == nil && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		samples := gatherIPVS(t, c)
		for k, want := range map[string]float64{
			"netinspect_ipvs_virtual_servers{}":             3,
			"netinspect_ipvs_backends{}":                    4,
			"netinspect_ipvs_virtual_servers_no_backends{}": 2,
		} {
			if samples[k] != want {
				t.Errorf("max %d: %s = %v, want %v", tc.max, k, samples[k], want)
			}
		}
		got := map[string]bool{}
		for k, v := range samples {
			if strings.HasPrefix(k, "netinspect_ipvs_service_usable_backends{") {
				if v != 0 {
					t.Errorf("max %d: %s = %v: a virtual server with a usable backend has its series", tc.max, k, v)
				}
				for _, a := range []string{"10.96.0.10", "10.96.0.12", "10.96.0.20"} {
					if strings.Contains(k, "address="+a+",") {
						got[a] = true
					}
				}
			}
			if strings.HasPrefix(k, "netinspect_ipvs_") && strings.Contains(k, "address=10.96.0.10,") {
				t.Errorf("max %d: the healthy virtual server has a series: %s", tc.max, k)
			}
		}
		var with []string
		for a := range got {
			with = append(with, a)
		}
		sort.Strings(with)
		if fmt.Sprint(with) != fmt.Sprint(tc.troubled) {
			t.Errorf("max %d: virtual servers with series %v, want %v", tc.max, with, tc.troubled)
		}
		if _, ok := samples[`netinspect_ipvs_backend_weight{address=10.96.0.20,backend_address=10.0.2.13,backend_port=8080,namespace=shop,pod=web-3,port=8080,protocol=tcp,service=}`]; !ok {
			t.Errorf("max %d: the weight-0 backend of the drained virtual server has no series", tc.max)
		}
	}
}
