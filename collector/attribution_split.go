package collector

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/collector/ctdump"
)

// A pass is mostly the kernel building the dump, inside the recvmsg(2)
// calls of the one goroutine that reads it, so one dump uses about one CPU
// however fast we count. The kernel can filter a dump by status bits
// (CTA_STATUS_MASK, Linux 5.19), and the two values of one bit split the
// table into two disjoint parts that add up to it exactly; dumping both
// parts at once on two CPUs takes about half the time (each kernel dump
// still walks the whole hash table but builds messages only for its part)
// for about the same CPU time. Which bit splits the table evenly depends on
// the node: the last pass counts each candidate and the next pass splits on
// the most even one, or does not split when none is even enough.

// splitBits are the status bits a pass may split on, in order of
// preference among equally even splits: the NAT bits are set when an entry
// is created and never change, so an entry cannot move from one part to
// the other during the pass; SEEN_REPLY and ASSURED are set once, when the
// first reply arrives or the connection is established.
var splitBits = [...]uint32{
	1 << 5, // IPS_DST_NAT: Service traffic DNATed by kube-proxy
	1 << 4, // IPS_SRC_NAT: masqueraded
	1 << 2, // IPS_ASSURED
	1 << 1, // IPS_SEEN_REPLY
}

const (
	// splitMinEntries is the smallest table worth splitting: below it the
	// pass takes a few milliseconds either way.
	splitMinEntries = 32768
	// splitMinShare is the smallest share of the table the smaller part
	// must hold for a split to pay for the second walk of the hash table.
	splitMinShare = 0.25
)

// tally is what one dump (or one part of a split pass) counts.
type tally struct {
	pods, services map[attrKey]int64
	states         stateTally
	bits           [len(splitBits)]int // entries with each of splitBits
	scanned        int
}

func newTally() *tally {
	return &tally{pods: map[attrKey]int64{}, services: map[attrKey]int64{}}
}

func (t *tally) add(a *Attribution, e *ctdump.Entry) {
	a.count(e, t.pods, t.services, 1)
	t.states.add(e)
	for i, b := range splitBits {
		if e.Status&b != 0 {
			t.bits[i]++
		}
	}
}

// merge adds the counts of o to t.
func (t *tally) merge(o *tally) {
	for k, n := range o.pods {
		t.pods[k] += n
	}
	for k, n := range o.services {
		t.services[k] += n
	}
	for i := range t.states.tcp {
		for j := range t.states.tcp[i] {
			t.states.tcp[i][j] += o.states.tcp[i][j]
		}
	}
	for i := range t.states.other {
		for j := range t.states.other[i] {
			t.states.other[i][j] += o.states.other[i][j]
		}
	}
	for i := range t.bits {
		t.bits[i] += o.bits[i]
	}
	t.scanned += o.scanned
}

// splitPlan is how the next pass reads the table.
type splitPlan struct {
	bit uint32 // 0: one dump of the whole table
}

// planSplit picks the bit the next pass splits on from the counts of the
// last one.
func (a *Attribution) planSplit(last *tally) splitPlan {
	if last == nil || a.splitUnsupported || a.cfg.NoSplit || runtime.GOMAXPROCS(0) < 2 || last.scanned < splitMinEntries {
		return splitPlan{}
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
		return splitPlan{}
	}
	return splitPlan{bit: best}
}

// dumpsOf is the number of dumps of a pass split on bit (0: not split).
func dumpsOf(bit uint32) int {
	if bit == 0 {
		return 1
	}
	return 2
}

// scan dumps the table once, split in two parts read at once when the last
// pass found a bit that splits it evenly, and counts its entries per pod,
// service and state.
func (a *Attribution) scan(ctx context.Context) (*tally, error) {
	plan := a.planSplit(a.lastTally)
	if plan.bit != 0 {
		t, err := a.scanSplit(ctx, plan.bit)
		if !errors.Is(err, ctdump.ErrFilterUnsupported) {
			a.lastTally, a.lastSplitBit = t, plan.bit
			return t, err
		}
		a.splitUnsupported = true
		a.logger.Info("the kernel does not filter conntrack dumps by status (before Linux 5.19); passes read the table with one dump", zap.Error(err))
	}
	t := newTally()
	if err := a.dump(ctx, a.dumpers[0], ctdump.StatusFilter{}, t); err != nil {
		return nil, err
	}
	a.lastTally, a.lastSplitBit = t, 0
	return t, nil
}

// scanSplit reads the two parts of the table that bit splits it into, at
// once, and adds them up.
func (a *Attribution) scanSplit(ctx context.Context, bit uint32) (*tally, error) {
	if a.dumpers[1] == nil {
		a.dumpers[1] = ctdump.NewDumper()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	parts := [2]*tally{newTally(), newTally()}
	filters := [2]ctdump.StatusFilter{{Mask: bit}, {Mask: bit, Value: bit}}
	var errs [2]error
	var wg sync.WaitGroup
	for i := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[i] = a.dump(ctx, a.dumpers[i], filters[i], parts[i]); errs[i] != nil {
				cancel() // the other part is of no use alone
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if errors.Is(err, ctdump.ErrFilterUnsupported) {
			return nil, err
		}
	}
	if err := errors.Join(errs[0], errs[1]); err != nil {
		return nil, err
	}
	parts[0].merge(parts[1])
	return parts[0], nil
}

// dump reads the entries filter selects with d and adds them to t.
func (a *Attribution) dump(ctx context.Context, d *ctdump.Dumper, filter ctdump.StatusFilter, t *tally) error {
	st, err := d.DumpFiltered(ctx, a.cfg.NetNS, ctdump.FamilyAll, filter, func(e *ctdump.Entry) { t.add(a, e) })
	if err != nil {
		if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("dump conntrack table: ctnetlink absent (%v): %w", err, ErrNoData)
		}
		return fmt.Errorf("dump conntrack table: %w", err)
	}
	if st.Interrupted {
		a.logger.Debug("conntrack dump was interrupted by table changes; counts may be off by the entries that moved")
	}
	t.scanned += st.Entries
	return nil
}
