package collector

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// The full-table fixture: eight client pods p0..p7, four backend pods
// b0..b3 and four services s0..s3 (namespace "load"). Client pi sends to
// service s(i%4), over tcp when i is even and udp when odd; the flows of
// p0..p3 are DNATed to b0..b3, those of p4..p7 are not (their replies come
// from the service address, which is no pod). Each fill level uses its own
// service port (80+level) and backend port (8080+level), so levels add
// entries without clashing with earlier ones.
const fullClients, fullServices = 8, 4

func fullTableIndex() *kube.Index {
	ix := kube.NewIndex(attrNode)
	for i := range fullClients {
		ix.SetPod(kube.PodInfo{Namespace: "load", Name: fmt.Sprintf("p%d", i), UID: fmt.Sprintf("p%d", i), Node: attrNode,
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, 1, byte(i + 1)})}})
	}
	for i := range fullServices {
		ix.SetPod(kube.PodInfo{Namespace: "load", Name: fmt.Sprintf("b%d", i), UID: fmt.Sprintf("b%d", i), Node: attrNode,
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, 2, byte(i + 1)})}})
		var ports []kube.ServicePortInfo
		for level := range 4 {
			for _, proto := range []string{"tcp", "udp"} {
				ports = append(ports, kube.ServicePortInfo{Name: fmt.Sprintf("%s-%d", proto, level), Port: uint16(80 + level), Protocol: proto})
			}
		}
		ix.SetService(kube.ServiceInfo{Namespace: "load", Name: fmt.Sprintf("s%d", i), Type: "ClusterIP",
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 1, byte(i + 1)})}, Ports: ports})
	}
	return ix
}

// fullTableSpecs are the flows of one fill level, perClient flows per client.
func fullTableSpecs(level, perClient int) []ctfill.Spec {
	var specs []ctfill.Spec
	for i := range fullClients {
		s := ctfill.Spec{
			Count:   perClient,
			Src:     netip.AddrFrom4([4]byte{10, 244, 1, byte(i + 1)}),
			Dst:     netip.AddrFrom4([4]byte{10, 96, 1, byte(i%fullServices + 1)}),
			DstPort: uint16(80 + level),
			Proto:   17,
			// Assured entries are never evicted to make room, so a full
			// table keeps exactly what was created.
			Assured: true,
		}
		if i%2 == 0 {
			s.Proto = 6
		}
		if i < fullServices {
			s.ReplySrc = netip.AddrFrom4([4]byte{10, 244, 2, byte(i + 1)})
			s.ReplySrcPort = uint16(8080 + level)
		}
		specs = append(specs, s)
	}
	return specs
}

// fullTableWant is the ground truth of a table filled with perClient flows
// per client at every level: "pod/proto" and "service/proto" to entries.
func fullTableWant(perClient int) map[string]float64 {
	want := map[string]float64{}
	for i := range fullClients {
		proto := "udp"
		if i%2 == 0 {
			proto = "tcp"
		}
		want[fmt.Sprintf("pod load/p%d/%s", i, proto)] += float64(perClient)
		if i < fullServices {
			want[fmt.Sprintf("pod load/b%d/%s", i, proto)] += float64(perClient)
		}
		want[fmt.Sprintf("service load/s%d/%s", i%fullServices, proto)] += float64(perClient)
	}
	return want
}

// attributionSeries collects the pod and service series of one Update.
func attributionSeries(t testing.TB, a *Attribution) (map[string]float64, float64) {
	t.Helper()
	ch := make(chan prometheus.Metric, 1024)
	if err := a.Update(t.Context(), ch); err != nil {
		t.Fatalf("update: %v", err)
	}
	close(ch)
	got := map[string]float64{}
	var scanned float64
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		l := map[string]string{}
		for _, lp := range pb.GetLabel() {
			l[lp.GetName()] = lp.GetValue()
		}
		switch m.Desc() {
		case a.podEntries:
			got[fmt.Sprintf("pod %s/%s/%s", l["namespace"], l["pod"], l["protocol"])] = pb.GetGauge().GetValue()
		case a.svcEntries:
			got[fmt.Sprintf("service %s/%s/%s", l["namespace"], l["service"], l["protocol"])] = pb.GetGauge().GetValue()
		case a.scanned:
			scanned = pb.GetGauge().GetValue()
		}
	}
	return got, scanned
}

// TestAttributionAtAFullTable fills a namespace's table to its limit
// (nf_conntrack_max, 262,144 on this machine kind), which must split evenly
// over the clients and leave each at most 60,000 flows (one source address
// in ctfill), and checks one pass against the ground truth.
func TestAttributionAtAFullTable(t *testing.T) {
	testenv.RequireCommand(t, "conntrack")
	ns := netns.New(t, "attr-full")
	var limit int
	if _, err := fmt.Sscan(ns.Sysctl("net.netfilter.nf_conntrack_max"), &limit); err != nil {
		t.Fatal(err)
	}
	testenv.Require(t, limit%fullClients == 0 && limit/fullClients <= 60000,
		fmt.Sprintf("nf_conntrack_max is %d; the test fills a table of up to %d entries (8 clients of at most 60,000 flows)", limit, 8*60000))

	start := time.Now()
	perClient := limit / fullClients
	fillFlows(t, ns, fullTableSpecs(0, perClient))
	t.Logf("filled %d entries in %v", limit, time.Since(start).Round(time.Millisecond))
	if n := conntrackCount(t, ns); n != limit {
		t.Fatalf("conntrack -C = %d, want the table full at %d", n, limit)
	}
	// The table is full: one more entry is refused.
	if _, err := ctfill.Create(ns.FD(), ctfill.Spec{Count: 1, Src: netip.MustParseAddr("10.9.9.9"), Dst: netip.MustParseAddr("10.9.9.10"), DstPort: 1}); err == nil {
		t.Fatal("an entry beyond nf_conntrack_max was accepted; the table is not full")
	}

	a := newNetnsAttribution(t, ns, fullTableIndex(), 0)
	start = time.Now()
	mustPass(t, a)
	t.Logf("pass over %d entries took %v", limit, time.Since(start).Round(time.Millisecond))
	got, scanned := attributionSeries(t, a)
	if scanned != float64(limit) {
		t.Errorf("entries_scanned = %v, want %d", scanned, limit)
	}
	want := fullTableWant(perClient)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected series %s = %v", k, v)
		}
	}
	if n := conntrackCount(t, ns); n != limit {
		t.Errorf("conntrack -C after the pass = %d, want %d (a pass must not change the table)", n, limit)
	}
}
