package conntrack

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/netinspect/netinspect/source"
	"github.com/netinspect/netinspect/source/netns"
)

// A scan is mostly the kernel building the dump, inside the recvmsg(2)
// calls of the one goroutine that reads it, so one dump uses about one CPU
// however fast the entries are counted. The kernel can filter a dump by
// status bits (CTA_STATUS_MASK, Linux 5.19), and the two values of one bit
// split the table into two disjoint parts that add up to it exactly; dumping
// both parts at once on two CPUs takes about half the time (each kernel dump
// still walks the whole hash table but builds messages only for its part)
// for about the same CPU time. Which bit splits the table evenly depends on
// the node: every scan counts each candidate and the next scan splits on the
// most even one, or does not split when none is even enough.

// Status bits of an entry (enum ip_conntrack_status in
// include/uapi/linux/netfilter/nf_conntrack_common.h).
const (
	StatusSeenReply = 1 << 1
	StatusAssured   = 1 << 2
	StatusSrcNAT    = 1 << 4
	StatusDstNAT    = 1 << 5
)

// splitBits are the status bits a scan may split on, in order of preference
// among equally even splits: the NAT bits are set when an entry is created
// and never change, so an entry cannot move from one part to the other
// during the scan; SEEN_REPLY and ASSURED are set once, when the first reply
// arrives or the connection is established.
var splitBits = [...]uint32{
	StatusDstNAT, // Service traffic DNATed by kube-proxy
	StatusSrcNAT, // masqueraded
	StatusAssured,
	StatusSeenReply,
}

const (
	// splitMinEntries is the smallest table worth splitting: below it the
	// scan takes a few milliseconds either way.
	splitMinEntries = 32768
	// splitMinShare is the smallest share of the table the smaller part
	// must hold for a split to pay for the second walk of the hash table.
	splitMinShare = 0.25
)

// bitCounts is what a scan counts for the next one's plan.
type bitCounts struct {
	bits    [len(splitBits)]int // entries with each of splitBits
	scanned int
}

// Scanner reads whole conntrack tables, one scan at a time, split in two
// dumps read at once when its last scan found a status bit that splits the
// table evenly. It keeps its dump buffers and must not run two scans at once.
type Scanner struct {
	// NoSplit makes every scan one dump of the whole table.
	NoSplit bool

	dumpers     [2]*Dumper
	last        *bitCounts
	lastBit     uint32
	unsupported bool
}

// NewScanner returns a Scanner.
func NewScanner() *Scanner { return &Scanner{dumpers: [2]*Dumper{NewDumper()}} }

// ScanStats describes one scan.
type ScanStats struct {
	// Entries is the number of entries read.
	Entries int
	// Dumps is 2 for a scan split in two parts read at once, else 1.
	Dumps int
	// Interrupted is set when the kernel flagged a dump as inconsistent
	// (NLM_F_DUMP_INTR): the counts may be off by the entries that moved.
	Interrupted bool
	// SplitUnsupported is the error of the split dump that showed, at this
	// scan, that the kernel does not filter dumps by status (before Linux
	// 5.19); the scan was read again with one dump, as every later one is.
	SplitUnsupported error
}

// LastSplitBit is the status bit the last scan was split on, 0 when it was
// one dump.
func (s *Scanner) LastSplitBit() uint32 { return s.lastBit }

// Scan reads every entry of target's table once. It calls part(i) before
// dump i of the scan starts (i is 0, or 0 and 1 for a split scan) and hands
// the entries of that dump to the function part returns; the two dumps of a
// split scan run at once on two goroutines. When a split scan has to be
// read again as one dump, part(0) is called again: its counts must start
// afresh. An error matching source.ErrAbsent means the kernel has no
// ctnetlink.
func (s *Scanner) Scan(ctx context.Context, target netns.Target, part func(i int) func(*Entry)) (ScanStats, error) {
	var st ScanStats
	if bit := s.plan(s.last); bit != 0 {
		counts, split, err := s.scanSplit(ctx, target, bit, part)
		if !errors.Is(err, ErrFilterUnsupported) {
			s.last, s.lastBit = counts, bit
			return split, err
		}
		s.unsupported = true
		st.SplitUnsupported = err
	}
	counts := &bitCounts{}
	ds, err := s.dump(ctx, s.dumpers[0], target, StatusFilter{}, counts, part(0))
	if err != nil {
		return st, err
	}
	s.last, s.lastBit = counts, 0
	st.Entries, st.Dumps, st.Interrupted = counts.scanned, 1, ds.Interrupted
	return st, nil
}

// plan picks the bit the next scan splits on from the counts of the last
// one.
func (s *Scanner) plan(last *bitCounts) uint32 {
	if last == nil || s.unsupported || s.NoSplit || runtime.GOMAXPROCS(0) < 2 || last.scanned < splitMinEntries {
		return 0
	}
	best, bestShare := uint32(0), 0.0
	for i, b := range splitBits {
		n := last.bits[i]
		share := float64(min(n, last.scanned-n)) / float64(last.scanned)
		if share > bestShare {
			best, bestShare = b, share
		}
	}
	if bestShare < splitMinShare {
		return 0
	}
	return best
}

// scanSplit reads the two parts of the table that bit splits it into, at
// once.
func (s *Scanner) scanSplit(ctx context.Context, target netns.Target, bit uint32, part func(int) func(*Entry)) (*bitCounts, ScanStats, error) {
	if s.dumpers[1] == nil {
		s.dumpers[1] = NewDumper()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		counts  [2]bitCounts
		stats   [2]Stats
		errs    [2]error
		filters = [2]StatusFilter{{Mask: bit}, {Mask: bit, Value: bit}}
		fns     = [2]func(*Entry){part(0), part(1)}
		wg      sync.WaitGroup
	)
	for i := range filters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if stats[i], errs[i] = s.dump(ctx, s.dumpers[i], target, filters[i], &counts[i], fns[i]); errs[i] != nil {
				cancel() // the other part is of no use alone
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if errors.Is(err, ErrFilterUnsupported) {
			return nil, ScanStats{}, err
		}
	}
	if err := errors.Join(errs[0], errs[1]); err != nil {
		return nil, ScanStats{}, err
	}
	total := &bitCounts{scanned: counts[0].scanned + counts[1].scanned}
	for i := range total.bits {
		total.bits[i] = counts[0].bits[i] + counts[1].bits[i]
	}
	return total, ScanStats{Entries: total.scanned, Dumps: 2, Interrupted: stats[0].Interrupted || stats[1].Interrupted}, nil
}

// dump reads the entries filter selects with d, counting their split bits
// into counts and handing each to fn.
func (s *Scanner) dump(ctx context.Context, d *Dumper, target netns.Target, filter StatusFilter, counts *bitCounts, fn func(*Entry)) (Stats, error) {
	st, err := d.DumpFiltered(ctx, target, FamilyAll, filter, func(e *Entry) {
		fn(e)
		for i, b := range splitBits {
			if e.Status&b != 0 {
				counts.bits[i]++
			}
		}
	})
	if err != nil {
		if NetlinkAbsent(err) {
			return st, source.Absentf("dump conntrack table: ctnetlink absent (%v)", err)
		}
		return st, fmt.Errorf("dump conntrack table: %w", err)
	}
	counts.scanned += st.Entries
	return st, nil
}
