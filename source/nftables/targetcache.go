package nftables

import (
	"net/netip"
	"sync"
)

// TargetCache keeps, between listings, the DNAT targets read from
// anonymous constant maps, so that a listing reads only the maps that are
// new since the last one. Reading a map costs a netlink request in which
// the kernel finds the set by walking every set of the table: kube-proxy
// 1.37's nftables mode has one such map per service port with two or more
// endpoints, and reading 10,000 of them took longer than `nft list
// ruleset` (BenchmarkRealKubeProxyScale). The cache is exact: such a map's
// elements cannot change, it lives and dies with the one rule that looks it
// up, and a rule's handle is never reused in its table (a changed rule is a
// new rule), while the table's handle tells a table made again under the
// same name. Entries not seen in a listing are dropped at its end, so the
// cache holds what the current rules use and no more.
type TargetCache struct {
	mu           sync.Mutex
	m            map[targetKey][]netip.AddrPort
	next         map[targetKey][]netip.AddrPort
	hits, misses int
}

type targetKey struct {
	table uint64
	rule  uint64
	m     DNATMap
}

// begin starts a listing; end keeps what it used.
func (c *TargetCache) begin() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.next = make(map[targetKey][]netip.AddrPort, len(c.m))
}

func (c *TargetCache) end() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m, c.next = c.next, nil
}

// get returns the targets of map m of table's rule, if cached, and keeps
// them for the next listing.
func (c *TargetCache) get(table uint64, m DNATMap) ([]netip.AddrPort, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := targetKey{table: table, rule: m.Rule, m: m}
	v, ok := c.m[k]
	if ok && c.next != nil {
		c.next[k] = v
	}
	if ok {
		c.hits++
	} else {
		c.misses++
	}
	return v, ok
}

func (c *TargetCache) put(table uint64, m DNATMap, targets []netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next != nil {
		c.next[targetKey{table: table, rule: m.Rule, m: m}] = targets
	}
}

// Stats returns how many maps were found cached and how many had to be
// read, over the cache's life.
func (c *TargetCache) Stats() (hits, misses int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.misses
}

// Len is the number of maps cached.
func (c *TargetCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
