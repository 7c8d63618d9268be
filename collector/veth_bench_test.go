package collector

import (
	"context"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/test/topology"
)

// BenchmarkVethScrape measures one scrape of a node with 250 pods (the
// common max-pods ceiling): half on the bridge, half point-to-point with
// dual-stack host routes. Baselines in the same run: floor is the one link
// dump every scrape needs (the kernel's and the netlink library's share);
// cached is a scrape reusing the mapping (the steady state); rescan rebuilds
// the mapping by every method (a scrape right after a pod came or went);
// rescan-route-fdb rebuilds it without entering any namespace (methods
// route and fdb only); cached-pod-conntrack is cached plus the pods' own
// conntrack tables. roundtrips/op counts netlink request/response
// exchanges of the mapping.
func BenchmarkVethScrape(b *testing.B) {
	const pods = 250
	tp := topology.New(b)
	ix := kube.NewIndex(testNode)
	var specs []topology.PodSpec
	for i := range pods {
		s := topology.PodSpec{Name: fmt.Sprintf("pod-%03d", i)}
		if i%2 == 0 {
			s.Interfaces = []topology.IfaceSpec{{Name: "eth0", Attach: topology.Bridge,
				Addrs: []string{fmt.Sprintf("10.244.0.%d/24", 2+i/2)}, DefaultRoute: true}}
		} else {
			s.Interfaces = []topology.IfaceSpec{{Name: "eth0", Attach: topology.PTP,
				Addrs: []string{fmt.Sprintf("10.244.%d.%d/32", 8+i/200, i%200), fmt.Sprintf("fd00:10:246::%x/128", i)}, DefaultRoute: true}}
		}
		specs = append(specs, s)
	}
	tp.AddPods(specs)
	for _, name := range tp.Pods() {
		ix.SetPod(kube.PodInfo{Namespace: testNamespace, Name: name, Node: testNode, IPs: tp.Pod(name).IPs()})
	}
	newC := func(podConntrack bool, methods ...string) *Veth {
		c, err := inNS(NewVeth(VethConfig{Methods: methods, PodConntrack: podConntrack}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc", NetNS: tp.NetNSDir}, Index: ix}))(tp.Node)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	ch := make(chan prometheus.Metric, 16*pods)
	scrape := func(c *Veth) int {
		if err := c.Update(context.Background(), ch); err != nil {
			b.Fatal(err)
		}
		n := len(ch)
		for range n {
			<-ch
		}
		return n
	}
	// 250 pods x (1 info + 8 counters) + unmapped + age.
	if n := scrape(newC(false)); n != pods*9+2 {
		b.Fatalf("one scrape sent %d metrics, want %d", n, pods*9+2)
	}

	b.Run("floor", func(b *testing.B) {
		h, err := netlink.NewHandleAt(netns.NsHandle(tp.Node.FD()), unix.NETLINK_ROUTE)
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close()
		for b.Loop() {
			if _, err := h.LinkList(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(1, "roundtrips/op")
	})
	run := func(name string, rescan, podConntrack bool, methods ...string) {
		b.Run(name, func(b *testing.B) {
			c := newC(podConntrack, methods...)
			scrape(c)
			c.roundTrips.Store(0)
			for b.Loop() {
				if rescan {
					c.mu.Lock()
					c.scan = nil
					c.mu.Unlock()
				}
				scrape(c)
			}
			b.ReportMetric(float64(c.roundTrips.Load())/float64(b.N), "roundtrips/op")
		})
	}
	run("cached", false, false)
	// The same with every pod's own conntrack table read (one ctnetlink
	// request per pod namespace, through the path the mapping recorded).
	run("cached-pod-conntrack", false, true)
	run("rescan", true, false)
	run("rescan-route-fdb", true, false, VethMethodRoute, VethMethodFDB)
}
