package collector

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// A table whose entries differ in a status bit is read, from the second
// pass on, as two parts dumped at once (the first pass counts the bits); the
// counts are the same as with one dump, and equal the ground truth.
func TestAttributionSplitPassCountsTheSame(t *testing.T) {
	ns := netns.New(t, "attr-split")
	fillFlows(t, ns, []ctfill.Spec{
		{Count: 20000, Assured: true, Src: ip("10.244.0.10"), Dst: ip("10.96.0.10"), DstPort: 53, ReplySrc: ip("10.244.5.3")},
		{Count: 15000, Proto: 6, Src: ip("10.244.0.11"), Dst: ip("10.96.0.100"), DstPort: 80, ReplySrc: ip("10.244.0.20"), ReplySrcPort: 8080},
		{Count: 5000, Proto: 6, Assured: true, Src: ip("203.0.113.9"), Dst: ip("198.51.100.1"), DstPort: 443},
	})
	a := newNetnsAttribution(t, ns, attributionIndex(), 0)
	reg := attributionRegistry(t, a)
	const want = `
# HELP netinspect_conntrack_pod_entries Conntrack entries whose original source (the client) or reply source (the backend serving it, after DNAT) is this pod, at the last pass.
# TYPE netinspect_conntrack_pod_entries gauge
netinspect_conntrack_pod_entries{namespace="default",pod="client-a",protocol="udp"} 20000
netinspect_conntrack_pod_entries{namespace="default",pod="client-b",protocol="tcp"} 15000
netinspect_conntrack_pod_entries{namespace="web",pod="backend-1",protocol="tcp"} 15000
# HELP netinspect_conntrack_service_entries Conntrack entries whose original destination address and port is this service, at the last pass; services beyond the top-K are summed into namespace="", service="".
# TYPE netinspect_conntrack_service_entries gauge
netinspect_conntrack_service_entries{namespace="kube-system",protocol="udp",service="kube-dns"} 20000
netinspect_conntrack_service_entries{namespace="web",protocol="tcp",service="frontend"} 15000
# HELP netinspect_conntrack_state_entries Conntrack entries by protocol, TCP state (empty for other protocols) and whether the entry is assured (assured entries cannot be evicted by early drop when the table is full), at the last full pass.
# TYPE netinspect_conntrack_state_entries gauge
netinspect_conntrack_state_entries{assured="false",protocol="tcp",state="none"} 15000
netinspect_conntrack_state_entries{assured="true",protocol="tcp",state="none"} 5000
netinspect_conntrack_state_entries{assured="true",protocol="udp",state=""} 20000
# HELP netinspect_conntrack_attribution_entries_scanned Conntrack entries read by the last successful pass.
# TYPE netinspect_conntrack_attribution_entries_scanned gauge
netinspect_conntrack_attribution_entries_scanned 40000
`
	names := []string{"netinspect_conntrack_pod_entries", "netinspect_conntrack_service_entries",
		"netinspect_conntrack_state_entries", "netinspect_conntrack_attribution_entries_scanned", "netinspect_conntrack_attribution_last_dumps"}
	dumps := func(n string) string {
		return `# HELP netinspect_conntrack_attribution_last_dumps Kernel dumps the last successful pass read at once: 2 when it split the table in two parts by a status bit, else 1.
# TYPE netinspect_conntrack_attribution_last_dumps gauge
netinspect_conntrack_attribution_last_dumps ` + n + "\n"
	}

	mustPass(t, a)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want+dumps("1")), names...); err != nil {
		t.Errorf("first pass, one dump: %v", err)
	}
	for pass := 2; pass <= 3; pass++ {
		mustPass(t, a)
		if a.scanner.LastSplitBit() != 1<<2 {
			t.Errorf("pass %d split on %#x, want IPS_ASSURED (0x4), the only bit that differs", pass, a.scanner.LastSplitBit())
		}
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want+dumps("2")), names...); err != nil {
			t.Errorf("pass %d, two dumps: %v", pass, err)
		}
	}

	// Splitting off, every pass is one dump again.
	one := newNetnsAttribution(t, ns, attributionIndex(), 0)
	one.scanner.NoSplit = true
	mustPass(t, one)
	mustPass(t, one)
	if err := testutil.GatherAndCompare(attributionRegistry(t, one), strings.NewReader(want+dumps("1")), names...); err != nil {
		t.Errorf("with NoSplit: %v", err)
	}
}

// Entries made by real traffic: half of the flows DNATed by an nft rule (as
// kube-proxy's Service rules do), half sent straight to a pod address. The
// kernel marks the first half IPS_DST_NAT, so from the second pass on the
// table is read in two parts split on that bit, and the counts stay exact.
func TestAttributionSplitsRealNATTraffic(t *testing.T) {
	const half = 20000
	ns := netns.New(t, "attr-nat")
	sendNATTraffic(t, ns, half)
	if n := conntrackCount(t, ns); n < 2*half {
		t.Fatalf("conntrack -C = %d after sending %d datagrams", n, 2*half)
	}

	a := newNetnsAttribution(t, ns, attributionIndex(), 0)
	reg := attributionRegistry(t, a)
	const want = `
# HELP netinspect_conntrack_pod_entries Conntrack entries whose original source (the client) or reply source (the backend serving it, after DNAT) is this pod, at the last pass.
# TYPE netinspect_conntrack_pod_entries gauge
netinspect_conntrack_pod_entries{namespace="default",pod="client-a",protocol="udp"} 40000
netinspect_conntrack_pod_entries{namespace="web",pod="backend-1",protocol="udp"} 20000
netinspect_conntrack_pod_entries{namespace="web",pod="backend-2",protocol="udp"} 20000
`
	for pass := 1; pass <= 3; pass++ {
		mustPass(t, a)
		wantBit := uint32(0)
		if pass > 1 {
			wantBit = 1 << 5 // IPS_DST_NAT
		}
		if a.scanner.LastSplitBit() != wantBit {
			t.Errorf("pass %d split on %#x, want %#x", pass, a.scanner.LastSplitBit(), wantBit)
		}
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "netinspect_conntrack_pod_entries"); err != nil {
			t.Errorf("pass %d: %v", pass, err)
		}
	}
}

// sendNATTraffic sends, from 10.244.0.10 (client-a of attributionIndex) in
// ns, one UDP datagram to each of half ports of 10.96.0.10, which an nft
// rule DNATs to 10.244.0.20 (backend-1), as kube-proxy's Service rules do,
// and one to each of half ports of 10.244.0.21 (backend-2) directly: 2*half
// new conntrack entries made by the kernel, half of them IPS_DST_NAT.
func sendNATTraffic(t testing.TB, ns *netns.NS, half int) {
	t.Helper()
	testenv.RequireCommand(t, "nft")
	ns.MustRun("ip", "link", "add", "n0", "type", "veth", "peer", "name", "n1")
	ns.MustRun("ip", "addr", "add", "10.244.0.10/24", "dev", "n0")
	ns.MustRun("ip", "link", "set", "n0", "up")
	ns.MustRun("ip", "link", "set", "n1", "up")
	ns.MustRun("ip", "route", "add", "10.96.0.0/16", "via", "10.244.0.1")
	// Permanent neighbours: datagrams leave at once instead of waiting on
	// ARP (which would hold the socket's send buffer).
	for _, addr := range []string{"10.244.0.1", "10.244.0.20", "10.244.0.21"} {
		ns.MustRun("ip", "neigh", "add", addr, "lladdr", "02:00:00:00:00:01", "dev", "n0", "nud", "permanent")
	}
	ns.MustRun("nft", "add table ip nat")
	ns.MustRun("nft", "add chain ip nat out { type nat hook output priority -100 ; }")
	ns.MustRun("nft", "add rule ip nat out ip daddr 10.96.0.10 udp dport 1-65535 dnat to 10.244.0.20")
	err := ns.Do(func() error {
		// A socket (a source port) per 65,535 destination ports.
		conns := make([]*net.UDPConn, (half+65534)/65535)
		for i := range conns {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.244.0.10")})
			if err != nil {
				return err
			}
			defer c.Close()
			conns[i] = c
		}
		// One datagram per destination address and port: each is a new entry.
		for i := 0; i < half; i++ {
			for j, dst := range []string{"10.96.0.10", "10.244.0.21"} {
				c := conns[i/65535]
				to := &net.UDPAddr{IP: net.ParseIP(dst), Port: 1 + i%65535}
				if _, err := c.WriteToUDP([]byte("x"), to); err != nil {
					return fmt.Errorf("send %d to %v: %w", j, to, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
