package collector

import (
	"cmp"
	"context"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/kubeproxy"
	"github.com/netinspect/netinspect/source"
	"github.com/netinspect/netinspect/source/conntrack"
)

// What the attribution pass counts besides pods and services, in the same
// dump: stale entries as kube-proxy judges them, and source-NAT port
// pressure.

// StaleResult is what a pass found of stale conntrack entries: UDP
// entries addressed to a service port's frontend (ClusterIP, load-balancer
// VIP, external IP, or node port) whose reply source is not one of that
// port's serving endpoints, which kube-proxy v1.37.2 deletes after its
// next sync (kubeproxy.ConntrackCleanup mirrors it).
type StaleResult struct {
	// Services are the stale entries per service and protocol, the most
	// first, beyond the top-K summed into entries with empty names.
	Services []StaleCount
	// Entries is the node's total; Blackhole those of them that
	// black-hole traffic (see StaleCount.Blackhole).
	Entries, Blackhole uint64
	// MaxTimeout is the longest remaining timeout of a stale entry: how
	// long the last of them stays if no packet refreshes it.
	MaxTimeout time.Duration
	// OldestStart is when the oldest stale entry that carries a start
	// timestamp was created (nf_conntrack_timestamp on); zero when none
	// does.
	OldestStart time.Time
	// Pairs are the stale entries per frontend and reply source (the old
	// backend), the most first, at most maxStalePairs: what the runbook's
	// `conntrack -L -d <frontend> --reply-src <backend>` lists.
	Pairs []StalePair
}

// StaleCount is the stale entries of one service over one protocol.
type StaleCount struct {
	Namespace, Name, Protocol string
	Entries                   uint64
	// Blackhole counts the stale entries that black-hole traffic: a packet
	// refreshed the entry since the last pass (its remaining timeout is
	// above what it would be without one: the client keeps sending), or its
	// reply source is an address no pod of this node and no endpoint of any
	// EndpointSlice holds (the packets go nowhere).
	Blackhole uint64
}

// StalePair is the stale entries from one frontend to one reply source.
type StalePair struct {
	Namespace, Name, Protocol string
	Frontend, ReplySource     netip.AddrPort
	Entries                   uint64
}

// maxStalePairs bounds StaleResult.Pairs, and the distinct pairs a pass
// keeps (a pair seen after that many is counted in the totals only).
const maxStalePairs = 64

// staleJudge is what a pass judges stale entries by; built once per pass
// and read by both parts of a split pass.
type staleJudge struct {
	cleanup *kubeproxy.ConntrackCleanup
	index   *kube.Index
	// udpTimeout and udpStream are the namespace's
	// nf_conntrack_udp_timeout and nf_conntrack_udp_timeout_stream in
	// seconds; interval the pass interval in seconds.
	udpTimeout, udpStream, interval uint32
}

// Kernel defaults of the UDP timeouts (nf_conntrack_proto_udp.c), used
// when the namespace's sysctls cannot be read.
const (
	defaultUDPTimeout       = 30
	defaultUDPStreamTimeout = 120
)

// refreshed reports whether a packet refreshed e since the last pass: a
// packet sets the timeout of a UDP entry to nf_conntrack_udp_timeout_stream
// once it is assured (replies seen and older than 2 s), else to
// nf_conntrack_udp_timeout (nf_conntrack_udp_packet in
// net/netfilter/nf_conntrack_proto_udp.c), and the timeout then counts
// down; an entry whose remaining timeout is above that value minus the
// interval got a packet within the interval. With a timeout no longer than
// the interval, every entry still there got one.
func (j *staleJudge) refreshed(e *conntrack.Entry) bool {
	set := j.udpTimeout
	if e.Status&conntrack.StatusAssured != 0 {
		set = j.udpStream
	}
	return e.Timeout+j.interval > set
}

type staleKey struct {
	target             int32
	frontend, replySrc netip.AddrPort
}

// staleTally is what one dump counts of stale entries.
type staleTally struct {
	// held caches staleJudge.index.HoldsAddr per reply source: stale
	// entries come by the thousand to the few addresses that left.
	held               map[netip.Addr]bool
	byTarget           map[int32]StaleCount
	pairs              map[staleKey]uint64
	entries, blackhole uint64
	maxTimeout         uint32
	minStart           uint64
}

func (t *staleTally) add(j *staleJudge, e *conntrack.Entry) {
	if j == nil || j.cleanup == nil {
		return
	}
	frontend := netip.AddrPortFrom(e.Orig.Dst, e.Orig.DstPort)
	replySrc := netip.AddrPortFrom(e.Reply.Src, e.Reply.SrcPort)
	ti, stale := j.cleanup.Stale(frontend, replySrc)
	if !stale {
		return
	}
	if t.byTarget == nil {
		t.byTarget, t.pairs, t.held = map[int32]StaleCount{}, map[staleKey]uint64{}, map[netip.Addr]bool{}
	}
	c := t.byTarget[int32(ti)]
	c.Entries++
	t.entries++
	held, ok := t.held[e.Reply.Src]
	if !ok {
		held = j.index.HoldsAddr(e.Reply.Src)
		t.held[e.Reply.Src] = held
	}
	if j.refreshed(e) || !held {
		c.Blackhole++
		t.blackhole++
	}
	t.byTarget[int32(ti)] = c
	k := staleKey{int32(ti), frontend, replySrc}
	if _, ok := t.pairs[k]; ok || len(t.pairs) < maxStalePairs {
		t.pairs[k]++
	}
	t.maxTimeout = max(t.maxTimeout, e.Timeout)
	if e.Start != 0 && (t.minStart == 0 || e.Start < t.minStart) {
		t.minStart = e.Start
	}
}

func (t *staleTally) merge(o *staleTally) {
	if o.byTarget == nil {
		return
	}
	if t.byTarget == nil {
		t.byTarget, t.pairs = map[int32]StaleCount{}, map[staleKey]uint64{}
	}
	for k, v := range o.byTarget {
		c := t.byTarget[k]
		c.Entries += v.Entries
		c.Blackhole += v.Blackhole
		t.byTarget[k] = c
	}
	for k, n := range o.pairs {
		if _, ok := t.pairs[k]; ok || len(t.pairs) < maxStalePairs {
			t.pairs[k] += n
		}
	}
	t.entries += o.entries
	t.blackhole += o.blackhole
	t.maxTimeout = max(t.maxTimeout, o.maxTimeout)
	if o.minStart != 0 && (t.minStart == 0 || o.minStart < t.minStart) {
		t.minStart = o.minStart
	}
}

// result sums the counts per service and protocol and keeps the top k (0:
// all), the rest summed per protocol into entries with empty names.
func (t *staleTally) result(cleanup *kubeproxy.ConntrackCleanup, k int) StaleResult {
	r := StaleResult{Entries: t.entries, Blackhole: t.blackhole, MaxTimeout: time.Duration(t.maxTimeout) * time.Second}
	if t.minStart != 0 {
		r.OldestStart = time.Unix(0, int64(t.minStart))
	}
	type svcKey struct{ ns, name, proto string }
	sums := map[svcKey]StaleCount{}
	for ti, c := range t.byTarget {
		id := cleanup.Targets[ti].ID
		sk := svcKey{id.Namespace, id.Name, id.Protocol}
		s := sums[sk]
		s.Namespace, s.Name, s.Protocol = id.Namespace, id.Name, id.Protocol
		s.Entries += c.Entries
		s.Blackhole += c.Blackhole
		sums[sk] = s
	}
	for _, s := range sums {
		r.Services = append(r.Services, s)
	}
	slices.SortFunc(r.Services, func(a, b StaleCount) int {
		return cmp.Or(cmp.Compare(b.Entries, a.Entries), cmp.Compare(a.Namespace, b.Namespace),
			cmp.Compare(a.Name, b.Name), cmp.Compare(a.Protocol, b.Protocol))
	})
	if k > 0 && len(r.Services) > k {
		rest := map[string]StaleCount{}
		for _, c := range r.Services[k:] {
			s := rest[c.Protocol]
			s.Protocol = c.Protocol
			s.Entries += c.Entries
			s.Blackhole += c.Blackhole
			rest[c.Protocol] = s
		}
		r.Services = r.Services[:k:k]
		for _, p := range slices.Sorted(mapKeys(rest)) {
			r.Services = append(r.Services, rest[p])
		}
	}
	for pk, n := range t.pairs {
		id := cleanup.Targets[pk.target].ID
		r.Pairs = append(r.Pairs, StalePair{Namespace: id.Namespace, Name: id.Name, Protocol: id.Protocol,
			Frontend: pk.frontend, ReplySource: pk.replySrc, Entries: n})
	}
	slices.SortFunc(r.Pairs, func(a, b StalePair) int {
		return cmp.Or(cmp.Compare(b.Entries, a.Entries), a.Frontend.Compare(b.Frontend), a.ReplySource.Compare(b.ReplySource))
	})
	return r
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// SNATResult is what a pass found of source-NAT port pressure.
type SNATResult struct {
	// Entries is the number of source-NATed entries; Tuples the distinct
	// translated tuples they form (at most the counter's cap).
	Entries uint64
	Tuples  int
	// Undercount is how far below the truth any tuple's count may be: 0
	// while the tuples fit the counter, else its Misra-Gries bound.
	Undercount uint64
	// Worst is the highest usage ratio of any tuple (0 without SNAT).
	Worst float64
	// Top are the tuples of the highest ratios, highest first.
	Top []conntrack.SNATUsage
	// Ranges are the port ranges the NAT rules name, which the ratios are
	// computed against where a tuple's ports fit one.
	Ranges []conntrack.PortRange
}

func snatResult(c *conntrack.SNATCounter, ranges []conntrack.PortRange, k int) SNATResult {
	r := SNATResult{Entries: c.Entries(), Tuples: c.Tuples(), Undercount: c.Undercount(), Ranges: slices.Clone(ranges)}
	if k > 0 {
		r.Top, r.Worst = conntrack.TopSNAT(c, ranges, k)
	} else {
		_, r.Worst = conntrack.TopSNAT(c, ranges, 1)
	}
	return r
}

// snatTupleLabels label a translated tuple's series.
var snatTupleLabels = []string{"translated", "destination", "destination_port", "protocol"}

// natRangesMaxAge is how long the NAT rules' port ranges are reused before
// a pass reads them again: rules with a port range change rarely, and
// reading them dumps every nf_tables rule of the namespace.
const natRangesMaxAge = 5 * time.Minute

// prepareTables builds what this pass judges stale entries and SNAT usage
// by: kube-proxy's cleanup rules from the index, the namespace's UDP
// timeouts, and (every natRangesMaxAge) the NAT rules' port ranges. What
// cannot be read is logged once at debug level and replaced by the
// kernel's defaults.
func (a *Attribution) prepareTables(ctx context.Context) {
	a.cleanup.Rebuild(a.index)
	j := &staleJudge{cleanup: a.cleanup, index: a.index, udpTimeout: defaultUDPTimeout, udpStream: defaultUDPStreamTimeout,
		interval: uint32(max(a.cfg.Interval/time.Second, 1))}
	var problems []string
	settings, err := conntrack.ReadSettingsIn(a.target, a.procfs)
	if t, ok := settings.Timeout("udp", "unreplied"); ok {
		j.udpTimeout = uint32(t / time.Second)
	}
	if t, ok := settings.Timeout("udp", "stream"); ok {
		j.udpStream = uint32(t / time.Second)
	}
	if err != nil {
		problems = append(problems, "conntrack timeouts (using the kernel's UDP defaults where missing): "+err.Error())
	}
	a.judge = j

	if a.natRangesAt.IsZero() || time.Since(a.natRangesAt) >= natRangesMaxAge {
		a.natRangesAt = time.Now()
		ranges, err := a.nft.ReadNATPortRanges(ctx)
		switch {
		case errors.Is(err, source.ErrAbsent):
			a.natRanges = nil
		case err != nil:
			problems = append(problems, "NAT rules' port ranges (keeping the last ones read): "+err.Error())
		default:
			a.natRanges = a.natRanges[:0]
			for _, r := range ranges {
				a.natRanges = append(a.natRanges, conntrack.PortRange{Family: r.Family, Lo: r.Lo, Hi: r.Hi})
			}
		}
	}
	if why := strings.Join(problems, "; "); why != a.lastTables {
		a.lastTables = why
		if why != "" {
			a.logger.Debug("conntrack attribution: stale and SNAT counting use defaults", zap.String("reason", why))
		}
	}
}

// emitTables sends the stale and SNAT series of pass s.
func (a *Attribution) emitTables(ch chan<- prometheus.Metric, s *AttributionResult) {
	st := &s.Stale
	for _, c := range st.Services {
		ch <- prometheus.MustNewConstMetric(a.staleEntries, prometheus.GaugeValue, float64(c.Entries), serviceValues(c.Namespace, c.Name, c.Protocol)...)
		ch <- prometheus.MustNewConstMetric(a.staleBlackhole, prometheus.GaugeValue, float64(c.Blackhole), serviceValues(c.Namespace, c.Name, c.Protocol)...)
	}
	ch <- prometheus.MustNewConstMetric(a.staleNode, prometheus.GaugeValue, float64(st.Entries))
	ch <- prometheus.MustNewConstMetric(a.staleNodeBlackhole, prometheus.GaugeValue, float64(st.Blackhole))
	ch <- prometheus.MustNewConstMetric(a.staleMaxTimeout, prometheus.GaugeValue, st.MaxTimeout.Seconds())
	if !st.OldestStart.IsZero() {
		ch <- prometheus.MustNewConstMetric(a.staleOldestAge, prometheus.GaugeValue, max(s.Finished.Sub(st.OldestStart).Seconds(), 0))
	}
	sn := &s.SNAT
	ch <- prometheus.MustNewConstMetric(a.snatRatio, prometheus.GaugeValue, sn.Worst)
	ch <- prometheus.MustNewConstMetric(a.snatEntries, prometheus.GaugeValue, float64(sn.Entries))
	ch <- prometheus.MustNewConstMetric(a.snatTuples, prometheus.GaugeValue, float64(sn.Tuples))
	ch <- prometheus.MustNewConstMetric(a.snatUndercount, prometheus.GaugeValue, float64(sn.Undercount))
	for _, u := range sn.Top {
		v := []string{u.Translated.String(), u.Destination.Addr().String(), strconv.Itoa(int(u.Destination.Port())), protocolNames[u.Protocol]}
		ch <- prometheus.MustNewConstMetric(a.snatTupleEntries, prometheus.GaugeValue, float64(u.Entries), v...)
		ch <- prometheus.MustNewConstMetric(a.snatTupleRatio, prometheus.GaugeValue, u.Ratio, v...)
	}
}
