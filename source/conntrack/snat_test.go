package conntrack

import (
	"net/netip"
	"testing"
)

// snatEntry is a masqueraded entry from client:cport to dst, translated to
// node:tport.
func snatEntry(proto uint8, client string, cport uint16, dst string, node string, tport uint16) *Entry {
	d := netip.MustParseAddrPort(dst)
	c, n := netip.MustParseAddr(client), netip.MustParseAddr(node)
	return &Entry{
		Orig:   Tuple{Src: c, Dst: d.Addr(), SrcPort: cport, DstPort: d.Port(), Proto: proto},
		Reply:  Tuple{Src: d.Addr(), Dst: n, SrcPort: d.Port(), DstPort: tport, Proto: proto},
		Status: StatusSrcNAT | StatusSeenReply,
	}
}

func TestSNATCounterCountsPerTranslatedTuple(t *testing.T) {
	var c SNATCounter
	for i := 0; i < 5; i++ {
		c.Add(snatEntry(6, "10.244.0.5", uint16(40000+i), "93.184.216.34:443", "192.168.1.10", uint16(50000+i)))
	}
	c.Add(snatEntry(6, "10.244.0.6", 40000, "93.184.216.34:443", "192.168.1.10", 40000))  // port kept
	c.Add(snatEntry(17, "10.244.0.5", 40000, "93.184.216.34:443", "192.168.1.10", 40000)) // other protocol
	c.Add(snatEntry(6, "10.244.0.5", 40000, "93.184.216.34:80", "192.168.1.10", 40000))   // other port
	c.Add(snatEntry(6, "fd00::5", 40000, "[2001:db8::1]:443", "fd00::10", 40000))
	notNAT := snatEntry(6, "10.244.0.5", 1, "93.184.216.34:443", "192.168.1.10", 1)
	notNAT.Status = StatusDstNAT
	c.Add(notNAT)

	got := map[SNATTuple]SNATCount{}
	c.Each(func(n SNATCount) { got[n.SNATTuple] = n })
	want := []SNATCount{
		{SNATTuple{6, netip.MustParseAddr("192.168.1.10"), netip.MustParseAddrPort("93.184.216.34:443"), 0}, 6, 40000, 50004},
		{SNATTuple{17, netip.MustParseAddr("192.168.1.10"), netip.MustParseAddrPort("93.184.216.34:443"), 0}, 1, 40000, 40000},
		{SNATTuple{6, netip.MustParseAddr("192.168.1.10"), netip.MustParseAddrPort("93.184.216.34:80"), 0}, 1, 40000, 40000},
		{SNATTuple{6, netip.MustParseAddr("fd00::10"), netip.MustParseAddrPort("[2001:db8::1]:443"), 0}, 1, 40000, 40000},
	}
	if len(got) != len(want) {
		t.Fatalf("%d tuples, want %d: %v", len(got), len(want), got)
	}
	for _, w := range want {
		if got[w.SNATTuple] != w {
			t.Errorf("%v: got %+v, want %+v", w.SNATTuple, got[w.SNATTuple], w)
		}
	}
	if c.Entries() != 9 || c.Approximate() {
		t.Errorf("entries %d approximate %v, want 9 and exact", c.Entries(), c.Approximate())
	}
	c.Reset()
	if c.Entries() != 0 || c.Tuples() != 0 {
		t.Errorf("after Reset: %d entries, %d tuples", c.Entries(), c.Tuples())
	}
}

// TestSNATCounterPastItsCapKeepsTheHeavyTuples: with room for 4 tuples and
// 1,000 distinct light tuples around one heavy one, the heavy one stays,
// low by at most the reported undercount, which is at most entries/5.
func TestSNATCounterPastItsCapKeepsTheHeavyTuples(t *testing.T) {
	c := SNATCounter{MaxTuples: 4}
	heavy := 0
	for i := 0; i < 1000; i++ {
		c.Add(snatEntry(6, "10.244.0.5", 1, "10.0.0.1:443", "192.168.1.10", uint16(1024+i)))
		heavy++
		c.Add(snatEntry(6, "10.244.0.5", 1, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 443).String(), "192.168.1.10", 2000))
	}
	if !c.Approximate() || c.Tuples() > 4 {
		t.Fatalf("approximate %v with %d tuples, want approximate with at most 4", c.Approximate(), c.Tuples())
	}
	if bound := c.Entries() / 5; c.Undercount() > bound {
		t.Errorf("undercount %d, above entries/(max+1) = %d", c.Undercount(), bound)
	}
	top, _ := TopSNAT(&c, nil, 1)
	if len(top) != 1 || top[0].Destination != netip.MustParseAddrPort("10.0.0.1:443") {
		t.Fatalf("top tuple %+v, want 10.0.0.1:443", top)
	}
	if n := top[0].Entries; n > uint64(heavy) || n+c.Undercount() < uint64(heavy) {
		t.Errorf("heavy tuple counted %d (undercount %d), truth %d", n, c.Undercount(), heavy)
	}
}

func TestSNATCounterMerge(t *testing.T) {
	var a, b SNATCounter
	a.Add(snatEntry(6, "10.244.0.5", 1, "10.0.0.1:443", "192.168.1.10", 3000))
	b.Add(snatEntry(6, "10.244.0.6", 1, "10.0.0.1:443", "192.168.1.10", 2000))
	b.Add(snatEntry(6, "10.244.0.6", 2, "10.0.0.2:443", "192.168.1.10", 2000))
	a.Merge(&b)
	top, _ := TopSNAT(&a, nil, 0)
	if len(top) != 2 || top[0].Entries != 2 || top[0].MinPort != 2000 || top[0].MaxPort != 3000 || a.Entries() != 3 {
		t.Fatalf("merged %+v (entries %d)", top, a.Entries())
	}
}

func TestSNATPorts(t *testing.T) {
	ranges := []PortRange{{"ipv4", 40000, 40009}, {"ipv4", 30000, 40099}, {"ipv6", 1024, 2047}}
	count := func(node string, n uint64, lo, hi uint16) SNATCount {
		return SNATCount{SNATTuple: SNATTuple{Protocol: 6, Translated: netip.MustParseAddr(node)}, Entries: n, MinPort: lo, MaxPort: hi}
	}
	for _, tc := range []struct {
		name string
		c    SNATCount
		want int
	}{
		{"no rule range: 1024-65535", count("192.168.1.10", 3, 1024, 60000), SNATDefaultPorts},
		{"inside the narrow range", count("192.168.1.10", 10, 40000, 40009), 10},
		{"inside only the wider range", count("192.168.1.10", 3, 35000, 40005), 10100},
		{"more entries than the narrow range has ports", count("192.168.1.10", 11, 40001, 40002), 10100},
		{"a range of the other family does not count", count("192.168.1.10", 3, 1500, 1600), SNATDefaultPorts},
		{"IPv6", count("fd00::10", 3, 1500, 1600), 1024},
	} {
		if got := SNATPorts(tc.c, ranges); got != tc.want {
			t.Errorf("%s: %d ports, want %d", tc.name, got, tc.want)
		}
	}
}

func TestSNATCounterAddDoesNotAllocate(t *testing.T) {
	var c SNATCounter
	e := snatEntry(6, "10.244.0.5", 1, "10.0.0.1:443", "192.168.1.10", 3000)
	c.Add(e)
	if n := testing.AllocsPerRun(1000, func() { c.Add(e) }); n != 0 {
		t.Errorf("Add of a known tuple allocates %v times", n)
	}
}
