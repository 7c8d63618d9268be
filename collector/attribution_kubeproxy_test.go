package collector

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netinspect/netinspect/kube"
	sourcens "github.com/netinspect/netinspect/source/netns"
	cpl "github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/natfill"
	"github.com/netinspect/netinspect/test/testenv"
	"github.com/netinspect/netinspect/test/topology"
)

// udpEcho answers every datagram on addr inside the namespace at path
// until the test ends.
func udpEcho(t *testing.T, path, addr string) {
	t.Helper()
	var conn *net.UDPConn
	if err := sourcens.Do(path, func() error {
		var err error
		conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
}

// steadyUDPClient opens flows sockets in the namespace at path, each
// connected to dst, and sends a datagram on each every 100 ms until the
// test ends: the same five-tuple, so each flow keeps one conntrack entry
// refreshed, as a statsd or syslog client does.
func steadyUDPClient(t *testing.T, path string, dst netip.AddrPort, flows int) {
	t.Helper()
	var conns []*net.UDPConn
	if err := sourcens.Do(path, func() error {
		for range flows {
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() {
		close(stop)
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, c := range conns {
				_, _ = c.Write([]byte("x")) // ECONNREFUSED while nothing answers
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
}

// TestStaleEntriesWithRealKubeProxy: a UDP client in a pod namespace keeps
// sending to a ClusterIP that the real kube-proxy (iptables mode) balances
// over two backends. With kube-proxy stopped (SIGSTOP), the backend that
// serves some of the flows leaves the EndpointSlice: the service's stale
// count is exactly what `conntrack -L` shows DNATed to that backend, and
// all of them black-hole (the client keeps refreshing them). Resumed,
// kube-proxy's own cleanup deletes them and the count returns to 0.
func TestStaleEntriesWithRealKubeProxy(t *testing.T) {
	testenv.RequireRoot(t)
	for _, cmd := range []string{"nsenter", "iptables", "iptables-save", "conntrack"} {
		testenv.RequireCommand(t, cmd)
	}
	const (
		node      = "node-1"
		clusterIP = "10.96.0.10"
		flows     = 12
	)
	cp := cpl.Start(t)
	cp.EnsureNamespace(t, "kube-system")
	tp := topology.New(t)
	tp.Node.MustRun("ip", "route", "add", cpl.ServiceCIDRv4, "dev", topology.BridgeName)
	cp.CreateNode(t, node, topology.NodeIP)

	backends := map[string]string{"dns-a": "10.244.0.2", "dns-b": "10.244.0.3"}
	var eps []cpl.Endpoint
	for _, name := range []string{"dns-a", "dns-b"} {
		addr := backends[name]
		p := tp.AddPod(topology.PodSpec{Name: name, Interfaces: []topology.IfaceSpec{
			{Name: "eth0", Attach: topology.Bridge, Addrs: []string{addr + "/24"}, DefaultRoute: true}}})
		pod := cp.CreatePod(t, cpl.PodSpec{Namespace: "kube-system", Name: name, Node: node, IPs: []string{addr}})
		eps = append(eps, cpl.Endpoint{IP: addr, Node: node, Pod: name, PodUID: pod.UID})
		udpEcho(t, p.Path, addr+":5353")
	}
	// The client is point-to-point, so the backends' answers go through
	// the node, where conntrack undoes the DNAT.
	client := tp.AddPod(topology.PodSpec{Name: "client", Interfaces: []topology.IfaceSpec{
		{Name: "eth0", Attach: topology.PTP, Addrs: []string{"10.244.1.5/32"}, DefaultRoute: true}}})
	cp.CreatePod(t, cpl.PodSpec{Namespace: "default", Name: "client", Node: node, IPs: []string{"10.244.1.5"}})
	ports := []cpl.ServicePort{{Name: "dns", Port: 53, TargetPort: 5353, Protocol: corev1.ProtocolUDP}}
	cp.CreateService(t, cpl.ServiceSpec{Namespace: "kube-system", Name: "kube-dns", ClusterIPs: []string{clusterIP}, Ports: ports})
	cp.CreateEndpointSlice(t, "kube-system", "kube-dns-1", "kube-dns", discoveryv1.AddressTypeIPv4, ports, eps)

	w, err := kube.NewWatcher(kube.Config{REST: cp.Config, NodeName: node, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w.Start(ctx)
	ix := w.Index()
	cpl.Eventually(t, time.Minute, func() error {
		if n := len(ix.Endpoints("kube-system", "kube-dns")); n != 2 {
			return fmt.Errorf("index: %d kube-dns endpoints", n)
		}
		return nil
	})
	kp := cp.StartKubeProxy(t, tp.Node, cpl.KubeProxyOptions{NodeName: node, Mode: "iptables"})

	steadyUDPClient(t, client.Path, netip.MustParseAddrPort(clusterIP+":53"), flows)
	// Every flow DNATed to a backend, and at least one to each.
	perBackend := func() map[netip.Addr]int {
		out := map[netip.Addr]int{}
		for _, e := range natfill.List(t, tp.Node, natfill.DstNAT) {
			if e.Proto == 17 && e.Orig.Dst == ip(clusterIP) && e.Orig.DstPort == 53 {
				out[e.Reply.Src]++
			}
		}
		return out
	}
	var before map[netip.Addr]int
	cpl.Eventually(t, time.Minute, func() error {
		before = perBackend()
		if before[ip(backends["dns-a"])]+before[ip(backends["dns-b"])] != flows || before[ip(backends["dns-a"])] == 0 || before[ip(backends["dns-b"])] == 0 {
			return fmt.Errorf("flows per backend %v, want %d over both (kube-proxy:\n%s)", before, flows, kp.Tail())
		}
		return nil
	})
	a := in(must(NewAttribution(AttributionConfig{Interval: 5 * time.Second},
		Deps{Logger: zaptest.NewLogger(t), Paths: Paths{ProcFS: "/proc"}, Index: ix}))(t), tp.Node)
	mustPass(t, a)
	if r := a.current().Stale; r.Entries != 0 || len(r.Services) != 0 {
		t.Fatalf("stale entries while both backends serve: %+v", r)
	}

	kp.Pause(t)
	gone := ip(backends["dns-b"])
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	es, err := cp.Client.DiscoveryV1().EndpointSlices("kube-system").Get(sctx, "kube-dns-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kept := es.Endpoints[:0]
	for _, e := range es.Endpoints {
		if e.Addresses[0] != gone.String() {
			kept = append(kept, e)
		}
	}
	es.Endpoints = kept
	if _, err := cp.Client.DiscoveryV1().EndpointSlices("kube-system").Update(sctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cpl.Eventually(t, time.Minute, func() error {
		if n := len(ix.Endpoints("kube-system", "kube-dns")); n != 1 {
			return fmt.Errorf("index: %d kube-dns endpoints, want 1", n)
		}
		return nil
	})

	// conntrack -L -d <ClusterIP> --reply-src <old pod IP>, as the runbook
	// has it.
	listStale := func() int {
		// Stdout only: the CLI prints its summary on stderr.
		out, err := tp.Node.Command(ctx, "conntrack", "-L", "-p", "udp", "-d", clusterIP, "--reply-src", gone.String()).Output()
		if err != nil {
			t.Fatalf("conntrack -L: %v", err)
		}
		entries, err := natfill.ParseList(string(out))
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	want := listStale()
	if want != before[gone] {
		t.Fatalf("conntrack -L --reply-src %s lists %d entries, %d before kube-proxy stopped", gone, want, before[gone])
	}
	mustPass(t, a)
	r := a.current().Stale
	if len(r.Services) != 1 || r.Services[0] != (StaleCount{Namespace: "kube-system", Name: "kube-dns", Protocol: "udp", Entries: uint64(want), Blackhole: uint64(want)}) ||
		r.Entries != uint64(want) || r.Blackhole != uint64(want) {
		t.Fatalf("stale %+v, want kube-system/kube-dns udp %d entries, all black-holing", r, want)
	}
	if len(r.Pairs) != 1 || r.Pairs[0].Frontend != netip.MustParseAddrPort(clusterIP+":53") || r.Pairs[0].ReplySource != netip.AddrPortFrom(gone, 5353) {
		t.Errorf("stale pairs %+v, want %s:53 -> %s:5353", r.Pairs, clusterIP, gone)
	}
	if got := listStale(); got != want {
		t.Errorf("conntrack -L lists %d stale entries after the pass, %d before: kube-proxy is stopped and the client keeps them", got, want)
	}

	t.Logf("kube-proxy stopped, backend %s left: %d stale entries, as conntrack -L lists (flows per backend before: %v)", gone, want, before)
	kp.Resume(t)
	resumed := time.Now()
	cpl.Eventually(t, time.Minute, func() error {
		mustPass(t, a)
		if r := a.current().Stale; r.Entries != 0 || len(r.Services) != 0 {
			return fmt.Errorf("stale %+v after kube-proxy resumed (kube-proxy:\n%s)", r, kp.Tail())
		}
		return nil
	})
	t.Logf("stale count back to 0 %v after kube-proxy resumed", time.Since(resumed).Round(time.Millisecond))
	if n := listStale(); n != 0 {
		t.Errorf("conntrack -L lists %d entries to the old backend after kube-proxy's cleanup", n)
	}
	series := gather(t, a)
	if series["netinspect_conntrack_stale_node_entries"] != 0 || series["netinspect_conntrack_stale_node_blackhole_entries"] != 0 {
		t.Errorf("node totals %v and %v after the cleanup, want 0", series["netinspect_conntrack_stale_node_entries"], series["netinspect_conntrack_stale_node_blackhole_entries"])
	}
}
