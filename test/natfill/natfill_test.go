package natfill

import (
	"errors"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

func TestParseList(t *testing.T) {
	in := `udp      17 3599 src=10.250.0.1 dst=10.96.0.10 sport=1024 dport=53 [UNREPLIED] src=10.244.1.5 dst=10.250.0.1 sport=53 dport=1024 mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.77.0.10 dst=10.78.0.2 sport=40000 dport=8080 src=10.78.0.2 dst=10.78.0.1 sport=8080 dport=51234 [ASSURED] mark=0 use=1
icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=7 src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=7 mark=0 use=1
udp      17 29 src=fd00:250::1 dst=fd00:96::a sport=1024 dport=53 [UNREPLIED] src=fd00:244::5 dst=fd00:250::1 sport=5353 dport=1024 mark=0 use=1
`
	got, err := ParseList(in)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddr
	want := []Entry{
		{Proto: 17, Orig: Tuple{ap("10.250.0.1"), ap("10.96.0.10"), 1024, 53}, Reply: Tuple{ap("10.244.1.5"), ap("10.250.0.1"), 53, 1024}, Unreplied: true},
		{Proto: 6, Orig: Tuple{ap("10.77.0.10"), ap("10.78.0.2"), 40000, 8080}, Reply: Tuple{ap("10.78.0.2"), ap("10.78.0.1"), 8080, 51234}, Assured: true},
		{Proto: 1, Orig: Tuple{Src: ap("10.0.0.1"), Dst: ap("10.0.0.2")}, Reply: Tuple{Src: ap("10.0.0.2"), Dst: ap("10.0.0.1")}},
		{Proto: 17, Orig: Tuple{ap("fd00:250::1"), ap("fd00:96::a"), 1024, 53}, Reply: Tuple{ap("fd00:244::5"), ap("fd00:250::1"), 5353, 1024}, Unreplied: true},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if e, err := ParseList(""); err != nil || len(e) != 0 {
		t.Errorf("empty output: %v %v", e, err)
	}
	for _, bad := range []string{
		"udp 17 29 src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2",           // one tuple
		"udp xx 29 src=10.0.0.1 dst=10.0.0.2 src=10.0.0.2 dst=10.0.0.1", // protocol number
		"udp 17 29 src=10.0.0.300 dst=10.0.0.2 src=10.0.0.2 dst=10.0.0.1",
		"udp 17 29 src=10.0.0.1 dst=10.0.0.2 sport=70000 src=10.0.0.2 dst=10.0.0.1",
	} {
		if _, err := ParseList(bad); err == nil {
			t.Errorf("ParseList(%q) accepted it", bad)
		}
	}
}

// conntrackCount runs `conntrack -C` in ns.
func conntrackCount(t *testing.T, ns *netns.NS) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(ns.MustRun("conntrack", "-C")))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDNATFillMatchesConntrack fills a namespace with DNATed UDP and TCP
// flows, IPv4 and IPv6, one backend with more flows than one client
// address has ports: `conntrack -L` grouped by (original destination,
// reply source) shows exactly the counts Fill reports, and `conntrack -C`
// the total.
func TestDNATFillMatchesConntrack(t *testing.T) {
	testenv.RequireCommand(t, "conntrack")
	ns := netns.New(t, "natfill-d")
	ap := netip.MustParseAddr
	d := NewDNATFiller(t, ns)
	start := time.Now()
	table := d.Fill([]DNATService{
		{Addr: ap("10.96.0.10"), Port: 53, Backends: []DNATBackend{{Addr: ap("10.244.1.5"), Flows: 70000}, {Addr: ap("10.244.2.6"), Flows: 200}}},
		{Addr: ap("10.96.0.20"), Port: 80, Proto: unix.IPPROTO_TCP, Backends: []DNATBackend{{Addr: ap("10.244.1.5"), Port: 8080, Flows: 150}}},
		{Addr: ap("fd00:96::a"), Port: 53, Backends: []DNATBackend{{Addr: ap("fd00:244::5"), Flows: 250}, {Addr: ap("fd00:244::6"), Port: 5353, Flows: 100}}},
		{Addr: ap("fd00:96::14"), Port: 443, Proto: unix.IPPROTO_TCP, Backends: []DNATBackend{{Addr: ap("fd00:244::5"), Port: 8443, Flows: 60}}},
	})
	filled := time.Since(start)
	// A second call adds to the table.
	more := d.Fill([]DNATService{{Addr: ap("10.96.0.10"), Port: 53, Backends: []DNATBackend{{Addr: ap("10.244.3.7"), Flows: 40}}}})
	t.Logf("%d flows in %v, then %d more", table.Total, filled, more.Total)
	want := maps.Clone(table.Counts)
	for k, n := range more.Counts {
		want[k] += n
	}
	if table.Total != 70000+200+150+250+100+60 || len(want) != 7 {
		t.Fatalf("fill reports %d flows in %d keys", table.Total, len(want))
	}

	got := DNATCounts(List(t, ns, DstNAT))
	if !maps.Equal(got, want) {
		for k := range joinKeys(got, want) {
			if got[k] != want[k] {
				t.Errorf("%v: conntrack -L shows %d, fill made %d", k, got[k], want[k])
			}
		}
	}
	if n := conntrackCount(t, ns); n != table.Total+more.Total {
		t.Errorf("conntrack -C = %d, want %d", n, table.Total+more.Total)
	}
	// The flows are unreplied and stay for DNATTimeout.
	for _, e := range List(t, ns, DstNAT)[:10] {
		if !e.Unreplied {
			t.Errorf("entry %+v has a reply", e)
		}
	}
}

func joinKeys[K comparable, V any](a, b map[K]V) map[K]bool {
	out := map[K]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// TestMasqueradeCountsMatchConntrackAndTheServer opens TCP connections
// and UDP flows from several clients through the router: the router's
// `conntrack -L --src-nat` counts per (translated source, destination)
// equal the connections made, and the translated tuples are exactly the
// peers the server saw.
func TestMasqueradeCountsMatchConntrackAndTheServer(t *testing.T) {
	for _, spec := range []MasqueradeSpec{
		{Rule: RuleNFT},
		{Rule: RuleIPTables, RandomFully: true},
	} {
		t.Run(spec.Rule+map[bool]string{true: "-random-fully"}[spec.RandomFully], func(t *testing.T) {
			m := NewMasquerade(t, spec)
			const perClient = 40
			want := map[SNATKey]int{}
			for _, c := range m.ClientAddrs {
				for range perClient {
					if err := m.DialTCP(c, 0, 5*time.Second); err != nil {
						t.Fatal(err)
					}
					if err := m.SendUDP(c, 0, 5*time.Second); err != nil {
						t.Fatal(err)
					}
				}
				for _, proto := range []uint8{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
					port := m.TCPPort
					if proto == unix.IPPROTO_UDP {
						port = m.UDPPort
					}
					want[SNATKey{Proto: proto, Translated: m.WANFor(c), Dst: netip.AddrPortFrom(m.ServerFor(c), port)}] += perClient
				}
			}
			entries := m.RouterSNAT()
			if got := SNATCounts(entries); !maps.Equal(got, want) {
				t.Errorf("router conntrack -L --src-nat: %v, want %v", got, want)
			}
			n := perClient * len(m.ClientAddrs)
			for _, proto := range []uint8{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
				seen := m.WaitServerPeers(proto, n)
				var translated []netip.AddrPort
				for _, e := range entries {
					if e.Proto == proto {
						translated = append(translated, netip.AddrPortFrom(e.Reply.Dst, e.Reply.DstPort))
					}
				}
				slices.SortFunc(seen, netip.AddrPort.Compare)
				slices.SortFunc(translated, netip.AddrPort.Compare)
				if !slices.Equal(seen, translated) {
					t.Errorf("%s: the server saw %d peers, the router translated to %d others", ProtoName(proto), len(seen), len(translated))
				}
				for _, p := range seen {
					if p.Addr() != m.RouterWAN4 && p.Addr() != m.RouterWAN6 {
						t.Errorf("%s: the server saw %v, not the router's address", ProtoName(proto), p)
					}
				}
			}
		})
	}
}

// TestMasqueradeRulePortRangeRunsOut: with a rule that names a range of
// 10 ports, exactly 10 connections per (translated source, destination)
// get through, the others are dropped, and the router's table holds
// exactly those 10, on ports of the range.
func TestMasqueradeRulePortRangeRunsOut(t *testing.T) {
	const lo, hi = 40000, 40009
	for _, rule := range []string{RuleNFT, RuleIPTables} {
		t.Run(rule, func(t *testing.T) {
			m := NewMasquerade(t, MasqueradeSpec{Rule: rule, ToPorts: [2]uint16{lo, hi}, Clients: 4})
			clients := m.ClientAddrs[:4] // IPv4
			const attempts = 12
			var udpOK, tcpOK int
			for i := range attempts {
				c := clients[i%len(clients)]
				switch err := m.SendUDP(c, 0, 300*time.Millisecond); {
				case err == nil:
					udpOK++
				case !errors.Is(err, ErrNoReply):
					t.Fatal(err)
				}
				if err := m.DialTCP(c, 0, 700*time.Millisecond); err == nil {
					tcpOK++
				}
			}
			if udpOK != hi-lo+1 || tcpOK != hi-lo+1 {
				t.Errorf("%d UDP flows and %d TCP connections of %d each got through, want %d", udpOK, tcpOK, attempts, hi-lo+1)
			}
			entries := m.RouterSNAT()
			got := SNATCounts(entries)
			want := map[SNATKey]int{
				{Proto: unix.IPPROTO_UDP, Translated: m.RouterWAN4, Dst: netip.AddrPortFrom(m.Server4, m.UDPPort)}: hi - lo + 1,
				{Proto: unix.IPPROTO_TCP, Translated: m.RouterWAN4, Dst: netip.AddrPortFrom(m.Server4, m.TCPPort)}: hi - lo + 1,
			}
			if !maps.Equal(got, want) {
				t.Errorf("router conntrack -L --src-nat: %v, want %v", got, want)
			}
			for _, e := range entries {
				if p := e.Reply.DstPort; p < lo || p > hi {
					t.Errorf("translated port %d outside the rule's %d-%d", p, lo, hi)
				}
			}
			t.Logf("router: %s", strings.TrimSpace(m.Router.MustRun("conntrack", "-S")))
		})
	}
}

// TestMasqueradeIgnoresTheRouterLocalPortRange narrows the router's
// ip_local_port_range to 10 ports and makes 24 clients collide on one
// source port: all 24 flows of each protocol get through on 24 distinct
// translated ports (MASQUERADE without a range picks from 1024-65535),
// while a connection the router itself opens does get a port of the
// narrowed range.
func TestMasqueradeIgnoresTheRouterLocalPortRange(t *testing.T) {
	const lo, hi = 40000, 40009
	const clients = 24
	m := NewMasquerade(t, MasqueradeSpec{Clients: clients})
	SetLocalPortRange(m.Router, lo, hi)
	for _, c := range m.ClientAddrs[:clients] {
		if err := m.SendUDP(c, 5555, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := m.DialTCP(c, 5556, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	entries := m.RouterSNAT()
	ports := map[uint8]map[uint16]bool{unix.IPPROTO_TCP: {}, unix.IPPROTO_UDP: {}}
	for _, e := range entries {
		ports[e.Proto][e.Reply.DstPort] = true
		if e.Reply.DstPort < 1024 {
			t.Errorf("translated port %d below 1024", e.Reply.DstPort)
		}
	}
	for proto, ps := range ports {
		if len(ps) != clients {
			t.Errorf("%s: %d distinct translated ports, want %d", ProtoName(proto), len(ps), clients)
		}
	}

	var local netip.AddrPort
	err := m.Router.Do(func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(m.Server4, m.TCPPort).String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		local = c.LocalAddr().(*net.TCPAddr).AddrPort()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if p := local.Port(); p < lo || p > hi {
		t.Errorf("the router's own connection got port %d, outside its ip_local_port_range %d-%d", p, lo, hi)
	}
}
