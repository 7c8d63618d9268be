package conntrack

import (
	"cmp"
	"net/netip"
	"slices"
)

// SNAT source-port pressure. After source NAT the kernel must keep every
// entry's reply tuple unique (nf_nat_used_tuple in net/netfilter/
// nf_nat_core.c): entries that share the translated source address, the
// destination address and port (after any DNAT), the protocol and the zone
// need distinct translated source ports. Without a port range in the rule
// (MASQUERADE or SNAT without --to-ports / nft "to :lo-hi") the kernel
// keeps the client's port while that is unique and otherwise picks from
// 1024-65535 (for client ports of 1024 and above: nf_nat_l4proto_unique_tuple);
// with a range, from the range. ip_local_port_range plays no part. When
// every port of a tuple is taken, the packet that would create a new entry
// is dropped at confirm time (insert_failed and drop go up).

// SNATDefaultPorts is the number of translated ports the kernel can use
// per tuple when the rule names no range: 1024-65535.
const SNATDefaultPorts = 65535 - 1024 + 1

// SNATTuple is what source-NATed entries share their translated ports
// within.
type SNATTuple struct {
	// Protocol is the IP protocol number.
	Protocol uint8
	// Translated is the source address after NAT (the node's address).
	Translated netip.Addr
	// Destination is the address and port the entries go to, after any
	// DNAT (the reply tuple's source).
	Destination netip.AddrPort
	// Zone is the conntrack zone (0 by default).
	Zone uint16
}

// SNATCount is the number of entries of one tuple and the range of
// translated source ports they use.
type SNATCount struct {
	SNATTuple
	Entries          uint64
	MinPort, MaxPort uint16
}

// snatKey is SNATTuple in a form that holds no pointer (netip.Addr keeps
// its zone behind one), so a map of many keys costs the garbage collector
// nothing to scan.
type snatKey struct {
	translated, dst [16]byte
	dstPort, zone   uint16
	proto           uint8
	v4              bool
}

type snatValue struct {
	n      uint32
	lo, hi uint16
}

// DefaultSNATMaxTuples bounds the tuples an SNATCounter counts exactly
// (about 5 MiB of map): a node masquerading to more distinct destinations
// at once is counted with the Misra-Gries summary, in which every count is
// low by at most entries/(max+1) and every tuple above that bound is kept.
const DefaultSNATMaxTuples = 65536

// SNATCounter counts source-NATed entries (IPS_SRC_NAT) per SNATTuple.
// Add is called for every entry of a pass; entries without the bit are
// ignored. It keeps its map from one pass to the next (Reset) and must not
// be used by two goroutines at once; the two parts of a split pass each
// count into their own and are merged.
type SNATCounter struct {
	// MaxTuples bounds the map; 0 means DefaultSNATMaxTuples.
	MaxTuples int

	m       map[snatKey]snatValue
	entries uint64
	// decrements is how much every count may be low by (Misra-Gries), 0
	// while the counts are exact.
	decrements uint64
}

func (c *SNATCounter) max() int {
	if c.MaxTuples > 0 {
		return c.MaxTuples
	}
	return DefaultSNATMaxTuples
}

// Reset forgets every count, keeping the map's memory.
func (c *SNATCounter) Reset() {
	clear(c.m)
	c.entries, c.decrements = 0, 0
}

// Add counts e if it is source-NATed.
func (c *SNATCounter) Add(e *Entry) {
	if e.Status&StatusSrcNAT == 0 {
		return
	}
	if c.m == nil {
		c.m = map[snatKey]snatValue{}
	}
	// The reply tuple goes from the destination back to the translated
	// source: Reply.Src:SrcPort is the destination after DNAT,
	// Reply.Dst:DstPort the translated source and port.
	k := snatKey{
		translated: e.Reply.Dst.As16(), dst: e.Reply.Src.As16(),
		dstPort: e.Reply.SrcPort, zone: e.Zone, proto: e.Orig.Proto, v4: e.Reply.Dst.Is4(),
	}
	c.entries++
	c.add(k, snatValue{n: 1, lo: e.Reply.DstPort, hi: e.Reply.DstPort})
}

func (c *SNATCounter) add(k snatKey, v snatValue) {
	if cur, ok := c.m[k]; ok {
		cur.n += v.n
		cur.lo, cur.hi = min(cur.lo, v.lo), max(cur.hi, v.hi)
		c.m[k] = cur
		return
	}
	c.m[k] = v
	if len(c.m) > c.max() {
		c.shrink()
	}
}

// shrink is the Misra-Gries step: take the smallest count off every
// counter and drop those that reach zero, which frees at least one.
func (c *SNATCounter) shrink() {
	least := uint32(1<<32 - 1)
	for _, v := range c.m {
		least = min(least, v.n)
	}
	for k, v := range c.m {
		if v.n <= least {
			delete(c.m, k)
			continue
		}
		v.n -= least
		c.m[k] = v
	}
	c.decrements += uint64(least)
}

// Merge adds the counts of o (the other part of a split pass) to c.
func (c *SNATCounter) Merge(o *SNATCounter) {
	if c.m == nil {
		c.m = map[snatKey]snatValue{}
	}
	c.entries += o.entries
	c.decrements += o.decrements
	for k, v := range o.m {
		c.add(k, v)
	}
}

// Entries is the number of source-NATed entries counted.
func (c *SNATCounter) Entries() uint64 { return c.entries }

// Tuples is the number of tuples counted (at most MaxTuples).
func (c *SNATCounter) Tuples() int { return len(c.m) }

// Approximate reports whether the counter ran out of room, so that the
// counts are low by at most Undercount each; a tuple whose true count
// exceeds that is still among them.
func (c *SNATCounter) Approximate() bool { return c.decrements > 0 }

// Undercount is how much any count may be below the truth (0 when exact).
func (c *SNATCounter) Undercount() uint64 { return c.decrements }

// Each calls fn for every tuple counted, in no particular order.
func (c *SNATCounter) Each(fn func(SNATCount)) {
	for k, v := range c.m {
		fn(k.count(v))
	}
}

func (k snatKey) count(v snatValue) SNATCount {
	t, d := netip.AddrFrom16(k.translated), netip.AddrFrom16(k.dst)
	if k.v4 {
		t, d = t.Unmap(), d.Unmap()
	}
	return SNATCount{
		SNATTuple: SNATTuple{Protocol: k.proto, Translated: t, Destination: netip.AddrPortFrom(d, k.dstPort), Zone: k.zone},
		Entries:   uint64(v.n), MinPort: v.lo, MaxPort: v.hi,
	}
}

// PortRange is a range of translated source ports a NAT rule names.
type PortRange struct {
	// Family is "ipv4" or "ipv6": the family of the rules it was read from.
	Family string
	Lo, Hi uint16
}

// Size is the number of ports of the range.
func (r PortRange) Size() int { return int(r.Hi) - int(r.Lo) + 1 }

// SNATPorts is the number of translated ports the kernel can use for
// tuple c: the size of the narrowest range of ranges (of c's family) that
// holds every port c's entries use, as NAT with that rule's range would
// pick them; otherwise SNATDefaultPorts. Which rule translated an entry is
// not in the entry, so the ports it uses decide.
func SNATPorts(c SNATCount, ranges []PortRange) int {
	family := "ipv6"
	if c.Translated.Is4() {
		family = "ipv4"
	}
	best := 0
	for _, r := range ranges {
		if r.Family != family || c.MinPort < r.Lo || c.MaxPort > r.Hi || uint64(r.Size()) < c.Entries {
			continue
		}
		if best == 0 || r.Size() < best {
			best = r.Size()
		}
	}
	if best == 0 {
		return SNATDefaultPorts
	}
	return best
}

// SNATUsage is one tuple's count against the ports it may use.
type SNATUsage struct {
	SNATCount
	// Ports is SNATPorts of the tuple; Ratio is Entries / Ports.
	Ports int
	Ratio float64
}

// TopSNAT returns the k tuples of c with the highest usage ratio against
// ranges (ties: more entries first, then by tuple), highest first, and
// the highest ratio of all; k <= 0 returns all. It keeps only k tuples
// at a time, so a counter full of tuples costs no copy of them.
func TopSNAT(c *SNATCounter, ranges []PortRange, k int) (top []SNATUsage, worst float64) {
	if k <= 0 {
		c.Each(func(n SNATCount) {
			p := SNATPorts(n, ranges)
			top = append(top, SNATUsage{SNATCount: n, Ports: p, Ratio: float64(n.Entries) / float64(p)})
		})
		slices.SortFunc(top, compareUsage)
		if len(top) > 0 {
			worst = top[0].Ratio
		}
		return top, worst
	}
	// top is kept sorted best first; a candidate enters when it beats the
	// last one (k is small: the default is 10).
	c.Each(func(n SNATCount) {
		p := SNATPorts(n, ranges)
		u := SNATUsage{SNATCount: n, Ports: p, Ratio: float64(n.Entries) / float64(p)}
		worst = max(worst, u.Ratio)
		if len(top) == k && compareUsage(u, top[k-1]) >= 0 {
			return
		}
		i, _ := slices.BinarySearchFunc(top, u, compareUsage)
		top = slices.Insert(top, i, u)
		if len(top) > k {
			top = top[:k]
		}
	})
	return top, worst
}

// compareUsage orders usages best first: higher ratio, then more entries,
// then by tuple.
func compareUsage(a, b SNATUsage) int {
	return cmp.Or(cmp.Compare(b.Ratio, a.Ratio), cmp.Compare(b.Entries, a.Entries),
		a.Translated.Compare(b.Translated), a.Destination.Compare(b.Destination),
		cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Zone, b.Zone))
}
