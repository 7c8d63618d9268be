package collector

import (
	"fmt"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source/conntrack"
	"github.com/netinspect/netinspect/test/natfill"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// snatAttribution is an attribution collector reading m's router, which
// masquerades, with every SNAT tuple exported.
func snatAttribution(t *testing.T, m *natfill.Masquerade) *Attribution {
	t.Helper()
	return in(must(NewAttribution(AttributionConfig{Interval: time.Hour, TopSNATTuples: 100},
		Deps{Logger: zaptest.NewLogger(t), Paths: Paths{ProcFS: "/proc"}}))(t), m.Router)
}

// snatByKey is the pass's tuples keyed as natfill keys them.
func snatByKey(r SNATResult) map[natfill.SNATKey]conntrack.SNATUsage {
	out := map[natfill.SNATKey]conntrack.SNATUsage{}
	for _, u := range r.Top {
		out[natfill.SNATKey{Proto: u.Protocol, Translated: u.Translated, Dst: u.Destination}] = u
	}
	return out
}

// TestSNATCountsMatchConntrackSrcNAT opens real TCP connections and UDP
// flows from several clients (IPv4 and IPv6) through a masquerading router
// to one server, and checks the per-tuple counts against the router's
// `conntrack -L --src-nat` and the server's peers, and the ratios against
// the 64,512 ports MASQUERADE without a range picks from.
func TestSNATCountsMatchConntrackSrcNAT(t *testing.T) {
	testenv.RequireRoot(t)
	m := natfill.NewMasquerade(t, natfill.MasqueradeSpec{Clients: 4, RandomFully: true})
	const tcpPerClient, udpPerClient = 30, 10
	for _, c := range m.ClientAddrs {
		for range tcpPerClient {
			if err := m.DialTCP(c, 0, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		for range udpPerClient {
			if err := m.SendUDP(c, 0, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
	m.WaitServerPeers(unix.IPPROTO_TCP, len(m.ClientAddrs)*tcpPerClient)
	m.WaitServerPeers(unix.IPPROTO_UDP, len(m.ClientAddrs)*udpPerClient)
	listed := natfill.SNATCounts(m.RouterSNAT())
	if len(listed) != 4 {
		t.Fatalf("router conntrack -L --src-nat: %v, want 4 tuples (tcp and udp, IPv4 and IPv6)", listed)
	}

	a := snatAttribution(t, m)
	mustPass(t, a)
	r := a.current().SNAT
	got := snatByKey(r)
	worst, total := 0.0, 0
	for k, n := range listed {
		u, ok := got[k]
		if !ok || u.Entries != uint64(n) {
			t.Errorf("%s: counted %d (present %v), conntrack -L --src-nat lists %d", k, u.Entries, ok, n)
			continue
		}
		if u.Ports != conntrack.SNATDefaultPorts || u.Ratio != float64(n)/conntrack.SNATDefaultPorts {
			t.Errorf("%s: ratio %v of %d ports, want %d/%d", k, u.Ratio, u.Ports, n, conntrack.SNATDefaultPorts)
		}
		worst = math.Max(worst, u.Ratio)
		total += n
	}
	if len(got) != len(listed) || r.Entries != uint64(total) || r.Undercount != 0 {
		t.Errorf("%d tuples of %d entries (undercount %d), want %d of %d, exact", len(got), r.Entries, r.Undercount, len(listed), total)
	}
	series := gather(t, a)
	if v := series["netinspect_conntrack_snat_port_usage_ratio"]; v != worst || worst != float64(len(m.ClientAddrs)/2*tcpPerClient)/conntrack.SNATDefaultPorts {
		t.Errorf("netinspect_conntrack_snat_port_usage_ratio = %v, want %v (the TCP tuples)", v, worst)
	}
	k := fmt.Sprintf(`netinspect_conntrack_snat_tuple_entries{destination=%q,destination_port="%d",protocol="tcp",translated=%q}`, m.Server4, m.TCPPort, m.RouterWAN4)
	if v := series[k]; v != float64(len(m.ClientAddrs)/2*tcpPerClient) {
		t.Errorf("%s = %v, want %d", k, v, len(m.ClientAddrs)/2*tcpPerClient)
	}
}

// TestSNATRatioAgainstANarrowedRuleRange narrows the masquerade rule's
// range to 10 ports (nft and iptables-nft rules), fills it with real
// connections until new ones fail, and checks that the ratio reaches
// exactly 1 against the rule's range, which the collector read from the
// rules, while the router's insert_failed and drop counters move.
func TestSNATRatioAgainstANarrowedRuleRange(t *testing.T) {
	testenv.RequireRoot(t)
	const lo, hi = 40000, 40009
	for _, rule := range []string{natfill.RuleNFT, natfill.RuleIPTables} {
		t.Run(rule, func(t *testing.T) {
			m := natfill.NewMasquerade(t, natfill.MasqueradeSpec{Rule: rule, ToPorts: [2]uint16{lo, hi}, Clients: 4})
			router := in(must(NewConntrack(ConntrackConfig{}, Deps{Logger: zaptest.NewLogger(t), Paths: Paths{ProcFS: "/proc"}}))(t), m.Router)
			before := gather(t, router)
			a := snatAttribution(t, m)
			clients := m.ClientAddrs[:4] // IPv4
			ok := 0
			for i := 0; i < 12; i++ {
				if err := m.DialTCP(clients[i%len(clients)], 0, 700*time.Millisecond); err == nil {
					ok++
				}
				mustPass(t, a)
				want := float64(min(ok, hi-lo+1)) / (hi - lo + 1)
				if got := a.current().SNAT.Worst; got != want {
					t.Fatalf("after %d connections: worst ratio %v, want %v", ok, got, want)
				}
			}
			if ok != hi-lo+1 {
				t.Fatalf("%d of 12 connections got through, want %d", ok, hi-lo+1)
			}
			listed := natfill.SNATCounts(m.RouterSNAT())
			key := natfill.SNATKey{Proto: unix.IPPROTO_TCP, Translated: m.RouterWAN4, Dst: netip.AddrPortFrom(m.Server4, m.TCPPort)}
			u := snatByKey(a.current().SNAT)[key]
			if listed[key] != hi-lo+1 || u.Entries != uint64(listed[key]) || u.Ports != hi-lo+1 || u.Ratio != 1 {
				t.Errorf("tuple %s: %d entries of %d ports (ratio %v), conntrack -L --src-nat lists %d", key, u.Entries, u.Ports, u.Ratio, listed[key])
			}
			after := gather(t, router)
			for _, s := range []string{"netinspect_conntrack_stat_insert_failed_total", "netinspect_conntrack_stat_drop_total"} {
				if after[s] <= before[s] {
					t.Errorf("%s %v -> %v, want it to move when the range ran out", s, before[s], after[s])
				}
			}
			ranges := a.current().SNAT.Ranges
			if len(ranges) == 0 || !containsRange(ranges, conntrack.PortRange{Family: "ipv4", Lo: lo, Hi: hi}) {
				t.Errorf("ranges read from the rules %v, want ipv4 %d-%d", ranges, lo, hi)
			}
		})
	}
}

func containsRange(rs []conntrack.PortRange, r conntrack.PortRange) bool {
	for _, x := range rs {
		if x == r {
			return true
		}
	}
	return false
}

// TestSNATHealthyNodeReportsZero: without masquerading, the worst ratio is
// exactly 0 and no tuple series exist.
func TestSNATHealthyNodeReportsZero(t *testing.T) {
	testenv.RequireRoot(t)
	m := natfill.NewMasquerade(t, natfill.MasqueradeSpec{Clients: 1})
	a := in(must(NewAttribution(AttributionConfig{Interval: time.Hour},
		Deps{Logger: zaptest.NewLogger(t), Paths: Paths{ProcFS: "/proc"}}))(t), m.Server)
	// The server's own table holds the connections unNATed.
	if err := m.DialTCP(m.ClientAddrs[0], 0, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	mustPass(t, a)
	compareSeries(t, gather(t, a), map[string]float64{
		"netinspect_conntrack_snat_port_usage_ratio":         0,
		"netinspect_conntrack_snat_entries":                  0,
		"netinspect_conntrack_snat_tuples":                   0,
		"netinspect_conntrack_snat_tuple_undercount_entries": 0,
	}, "netinspect_conntrack_snat_")
}

// TestSNATTupleSeriesAreBounded: 500 source-NATed flows to 500 destination
// ports are 500 tuples; the tuple series are the top-K (10) twice, the
// node series 4.
func TestSNATTupleSeriesAreBounded(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "conntrack")
	ns := netns.New(t, "snat-bound")
	sendNATTraffic(t, ns, 1) // the namespace's link and nat table
	sendSNATTraffic(t, ns, 500)
	a := in(must(NewAttribution(DefaultAttributionConfig(), Deps{Logger: zaptest.NewLogger(t), Paths: Paths{ProcFS: "/proc"}}))(t), ns)
	mustPass(t, a)
	if r := a.current().SNAT; r.Tuples != 500 || r.Entries != 500 {
		t.Fatalf("%d tuples of %d entries, want 500 and 500", r.Tuples, r.Entries)
	}
	tuple, node := 0, 0
	for k := range gather(t, a) {
		switch {
		case strings.HasPrefix(k, "netinspect_conntrack_snat_tuple_entries{"), strings.HasPrefix(k, "netinspect_conntrack_snat_tuple_port_usage_ratio{"):
			tuple++
		case strings.HasPrefix(k, "netinspect_conntrack_snat_"):
			node++
		}
	}
	if tuple != 2*10 || node != 4 {
		t.Errorf("%d tuple series and %d node series, want 20 and 4", tuple, node)
	}
}
