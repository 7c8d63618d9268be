// Package neighbour reads the kernel's neighbour tables (ARP for IPv4,
// NDISC for IPv6): how many entries they hold against their garbage
// collection thresholds, and their counters.
//
// The tables are global, not per network namespace: there is one arp_cache
// and one ndisc_cache for the whole kernel (net/core/neighbour.c keeps
// them in the static neigh_tables[]), their entry count covers the entries
// of every namespace, pods' included, and the gc_thresh sysctls exist only
// in the initial namespace. RTM_GETNEIGHTBL answers from any namespace
// with that global count (NDTA_CONFIG's ndtc_entries), the thresholds and
// the counters summed over CPUs (NDTA_STATS), as `ip -s ntable show`
// prints them. Read uses it; ReadProcFS reads /proc/net/stat/*_cache and
// the gc_thresh sysctls instead, which only the initial namespace has.
//
// What the thresholds are compared with: since Linux 4.19 (commit
// 58956317c8de, "neighbor: Improve garbage collection") neigh_alloc and
// the forced GC compare gc_thresh2/3 with tbl->gc_entries, which leaves out
// entries exempt from garbage collection (NUD_PERMANENT, NTF_EXT_LEARNED),
// while ndtc_entries counts every entry. The kernel exports only the
// latter, so Entries is an upper bound of what the thresholds see, equal
// to it on a node without permanent or externally learned neighbours.
package neighbour

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source/netlinkattr"
)

// Families of the tables, as in the contract's family label.
const (
	FamilyIPv4 = "ipv4" // ARP, table arp_cache
	FamilyIPv6 = "ipv6" // NDISC, table ndisc_cache
)

// Sources of a reading.
const (
	SourceNetlink = "netlink"
	SourceProcFS  = "procfs"
)

// Errors, checkable with errors.Is.
var (
	// ErrAbsent: the kernel reported no neighbour table (no RTM_GETNEIGHTBL
	// support, or no /proc/net/stat/arp_cache in this namespace).
	ErrAbsent = errors.New("no neighbour tables")
	// ErrMalformed wraps errors about input the parsers cannot read.
	ErrMalformed = errors.New("malformed neighbour table data")
)

// Table is one neighbour table as the kernel reports it.
type Table struct {
	// Family is FamilyIPv4 or FamilyIPv6.
	Family string
	// Name is the kernel's name of the table: arp_cache or ndisc_cache.
	Name string
	// Entries is the number of entries in the table, over all network
	// namespaces (ndtc_entries; see the package comment for what the
	// thresholds are compared with).
	Entries uint64
	// GCThresh1 is the number of entries below which the periodic garbage
	// collector does not run; GCThresh2 is the soft limit (above it a new
	// entry triggers a forced collection if the last one is 5 s old);
	// GCThresh3 is the hard limit (a new entry that a forced collection
	// cannot make room for is refused: "neighbor table overflow!",
	// Stats.TableFulls).
	GCThresh1, GCThresh2, GCThresh3 uint64
	// GCInterval is the period of the garbage collector.
	GCInterval time.Duration
	// Stats are the table's counters, summed over CPUs.
	Stats Stats
	// Source is SourceNetlink or SourceProcFS.
	Source string
}

// Stats are the counters of struct ndt_stats (include/uapi/linux/
// neighbour.h), monotonic since boot.
type Stats struct {
	Allocs, Destroys, HashGrows, ResFailed, Lookups, Hits uint64
	RcvProbesMcast, RcvProbesUcast                        uint64
	PeriodicGCRuns, ForcedGCRuns                          uint64
	// TableFulls counts entries refused because the table was at
	// GCThresh3 after a forced collection; HasTableFulls is false on
	// kernels that do not report it.
	TableFulls    uint64
	HasTableFulls bool
}

// Read dumps the neighbour tables over rtnetlink (RTM_GETNEIGHTBL) from
// the network namespace netnsFD (0: the caller's). Any namespace gives
// the same global tables. It returns an error wrapping ErrAbsent when the
// kernel answers with none (or does not know the message).
func Read(ctx context.Context, netnsFD int) ([]Table, error) {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{NetNS: netnsFD})
	if err != nil {
		return nil, fmt.Errorf("dial rtnetlink: %w", err)
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(d); err != nil {
			return nil, fmt.Errorf("set rtnetlink deadline: %w", err)
		}
	}
	// struct ndtmsg with AF_UNSPEC: every table. Older kernels read only
	// the first byte (as struct rtgenmsg); strict checking wants all four.
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETNEIGHTBL, Flags: netlink.Request | netlink.Dump},
		Data:   make([]byte, ndtmsgLen),
	})
	if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return nil, fmt.Errorf("dump neighbour tables: %v: %w", err, ErrAbsent)
		}
		return nil, fmt.Errorf("dump neighbour tables: %w", err)
	}
	var tables []Table
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWNEIGHTBL {
			continue
		}
		t, ok, err := ParseNeighTbl(m.Data)
		if err != nil {
			return nil, fmt.Errorf("decode neighbour table message: %w", err)
		}
		if ok {
			tables = append(tables, t)
		}
	}
	if len(tables) == 0 {
		return nil, fmt.Errorf("dump neighbour tables: the kernel sent none: %w", ErrAbsent)
	}
	return tables, nil
}

// Neighbour table attributes and sizes (include/uapi/linux/neighbour.h).
const (
	ndtaName       = 1
	ndtaThresh1    = 2
	ndtaThresh2    = 3
	ndtaThresh3    = 4
	ndtaConfig     = 5
	ndtaStats      = 7
	ndtaGCInterval = 8

	ndtmsgLen = 4 // struct ndtmsg
	// ndtcEntriesEnd is where ndtc_entries ends in struct ndt_config
	// (__u16 key_len, __u16 entry_size, __u32 entries, ...).
	ndtcEntriesEnd = 8
	// ndtStatsFields is the number of __u64 counters of struct ndt_stats
	// with ndts_table_fulls, the last one; ndtStatsMinFields without it.
	ndtStatsFields    = 11
	ndtStatsMinFields = 10
)

// ParseNeighTbl decodes the payload of one RTM_NEWNEIGHTBL message
// (struct ndtmsg and its attributes). The kernel sends one message per
// table with the table's configuration and counters, followed by one per
// device with that device's parameters only; ok is false for those, and
// for tables of families other than IPv4 and IPv6.
func ParseNeighTbl(b []byte) (t Table, ok bool, err error) {
	if len(b) < ndtmsgLen {
		return Table{}, false, fmt.Errorf("%w: message of %d bytes, want at least %d (ndtmsg)", ErrMalformed, len(b), ndtmsgLen)
	}
	switch b[0] {
	case unix.AF_INET:
		t.Family = FamilyIPv4
	case unix.AF_INET6:
		t.Family = FamilyIPv6
	}
	var hasConfig bool
	// The kernel sends the thresholds as u32 and the interval as u64
	// (neightbl_fill_info); another length is not its message.
	u32 := func(name string, v []byte, dst *uint64) error {
		if len(v) != 4 {
			return fmt.Errorf("%s of %d bytes, want 4", name, len(v))
		}
		*dst = uint64(netlinkattr.Uint32(v))
		return nil
	}
	err = netlinkattr.Walk(b[ndtmsgLen:], func(typ uint16, v []byte) error {
		switch typ {
		case ndtaName:
			t.Name = netlinkattr.String(v)
		case ndtaThresh1:
			return u32("NDTA_THRESH1", v, &t.GCThresh1)
		case ndtaThresh2:
			return u32("NDTA_THRESH2", v, &t.GCThresh2)
		case ndtaThresh3:
			return u32("NDTA_THRESH3", v, &t.GCThresh3)
		case ndtaGCInterval:
			if len(v) != 8 {
				return fmt.Errorf("NDTA_GC_INTERVAL of %d bytes, want 8", len(v))
			}
			t.GCInterval = time.Duration(netlinkattr.Uint64(v)) * time.Millisecond
		case ndtaConfig:
			if len(v) < ndtcEntriesEnd {
				return fmt.Errorf("NDTA_CONFIG of %d bytes, want at least %d", len(v), ndtcEntriesEnd)
			}
			t.Entries = uint64(binary.NativeEndian.Uint32(v[4:8]))
			hasConfig = true
		case ndtaStats:
			return decodeStats(v, &t.Stats)
		}
		return nil
	})
	if err != nil {
		return Table{}, false, fmt.Errorf("%w: table %q: %v", ErrMalformed, t.Name, err)
	}
	if !hasConfig || t.Family == "" {
		return Table{}, false, nil
	}
	t.Source = SourceNetlink
	return t, true, nil
}

// decodeStats decodes struct ndt_stats: native-endian __u64 counters in
// the order of the struct. Kernels from before ndts_table_fulls send one
// fewer; later kernels may append more, which are ignored.
func decodeStats(v []byte, s *Stats) error {
	n := len(v) / 8
	if n < ndtStatsMinFields {
		return fmt.Errorf("NDTA_STATS of %d bytes, want at least %d", len(v), 8*ndtStatsMinFields)
	}
	f := func(i int) uint64 { return binary.NativeEndian.Uint64(v[8*i:]) }
	*s = Stats{
		Allocs: f(0), Destroys: f(1), HashGrows: f(2), ResFailed: f(3), Lookups: f(4), Hits: f(5),
		RcvProbesMcast: f(6), RcvProbesUcast: f(7), PeriodicGCRuns: f(8), ForcedGCRuns: f(9),
	}
	if n >= ndtStatsFields {
		s.TableFulls, s.HasTableFulls = f(10), true
	}
	return nil
}
