package collector

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/kubeproxy"
	"github.com/netinspect/netinspect/source/conntrack"
	"github.com/netinspect/netinspect/source/netns"
	"github.com/netinspect/netinspect/source/nftables"
)

// AttributionName is the conntrack-attribution collector's name in flags
// and metrics.
const AttributionName = "conntrack-attribution"

// AttributionConfig configures the conntrack-attribution collector.
type AttributionConfig struct {
	// Interval is the time between the starts of two passes over the
	// conntrack table.
	Interval time.Duration
	// TopServices is how many service series (namespace, service,
	// protocol) are exported, the largest first; the entries of the others
	// are summed into one series with empty namespace and service. 0 means
	// no limit.
	TopServices int
	// Mode is AttributionModePass or AttributionModeEvents.
	Mode string
	// TopSNATTuples is how many translated source-NAT tuples are exported
	// with their entries and port usage, the highest usage first; 0 means
	// none (conntrack_snat_port_usage_ratio still gives the worst).
	TopSNATTuples int
}

// Attribution modes.
const (
	// AttributionModePass counts a full dump of the table every Interval.
	AttributionModePass = "pass"
	// AttributionModeEvents counts a full dump at start and every Interval,
	// and between dumps follows the table through conntrack NEW and
	// DESTROY events; a lost event (receive buffer overrun) triggers a dump.
	AttributionModeEvents = "events"
)

// AttributionModes are the values AttributionConfig.Mode takes.
var AttributionModes = []string{AttributionModePass, AttributionModeEvents}

// DefaultAttributionConfig is the collector's configuration when no flag
// says otherwise.
func DefaultAttributionConfig() AttributionConfig {
	return AttributionConfig{Interval: 30 * time.Second, TopServices: 100, Mode: AttributionModePass, TopSNATTuples: 10}
}

// withDefaults fills the unset fields from DefaultAttributionConfig
// (TopServices 0 means no limit, so it stays).
func (cfg AttributionConfig) withDefaults() AttributionConfig {
	d := DefaultAttributionConfig()
	if cfg.Interval <= 0 {
		cfg.Interval = d.Interval
	}
	if cfg.Mode == "" {
		cfg.Mode = d.Mode
	}
	return cfg
}

// defaultEventsReadBuffer is the receive buffer of the events socket: room for
// about 30,000 events (a datagram per event, ~300 bytes each plus overhead)
// while a pass runs or the reader is descheduled.
const defaultEventsReadBuffer = 16 << 20

// Attribution reports who fills the conntrack table: entries per pod of this
// node and per service. Scanning the table costs time proportional to its
// size (about half a second at 262,144 entries), so passes run in the
// background, one at a time, and Update serves the result of the last one.
type Attribution struct {
	cfg    AttributionConfig
	procfs string
	logger *zap.Logger
	index  *kube.Index
	target netns.Target

	// scanner reads the table; only the goroutine that runs passes uses it
	// (and lastAbsent, the reason last logged for an absent table).
	scanner    *conntrack.Scanner
	lastAbsent string
	// cleanup, judge, snat, nft and the NAT port ranges are the pass
	// goroutine's too: what stale and SNAT counting need (attribution_tables.go).
	cleanup     *kubeproxy.ConntrackCleanup
	judge       *staleJudge
	snat        [2]conntrack.SNATCounter
	nft         nftables.Reader
	natRanges   []conntrack.PortRange
	natRangesAt time.Time
	lastTables  string // the last reason logged for reading the timeouts or rules failing

	podEntries, svcEntries, stateEntries, dumps, duration, scanned, lastSuccess, errorsTotal, passesTotal, eventsLostTotal *prometheus.Desc

	staleEntries, staleBlackhole, staleNode, staleNodeBlackhole, staleMaxTimeout, staleOldestAge *prometheus.Desc
	snatRatio, snatEntries, snatTuples, snatUndercount, snatTupleEntries, snatTupleRatio         *prometheus.Desc

	// r holds the result of the latest pass; in events mode the counts
	// that events keep current since are in events.
	r      *refresher[*AttributionResult]
	errs   atomic.Uint64
	passes atomic.Uint64

	events           eventCounters
	eventsReadBuffer int
}

// AttributionResult is the result of one pass over the table (in events
// mode with the pod and service counts kept by the events since).
type AttributionResult struct {
	Pods     []AttributedCount
	Services []AttributedCount
	States   []StateCount
	// Scanned is the number of entries the pass read; Dumps the kernel
	// dumps it read at once (2 for a pass split in two parts, else 1).
	Scanned, Dumps int
	Duration       time.Duration
	Finished       time.Time
	// Stale and SNAT are what the pass counted of stale entries and
	// source-NAT port pressure (in events mode: at the last full pass).
	Stale StaleResult
	SNAT  SNATResult
}

// AttributedCount is the number of entries of one pod or service over one
// protocol.
type AttributedCount struct {
	Namespace, Name, Protocol string
	Entries                   uint64
}

// StateCount is the number of entries of one protocol in one state.
type StateCount struct {
	Protocol, State, Assured string
	Entries                  uint64
}

// NewAttribution returns the conntrack-attribution collector. It does
// nothing until Start.
func NewAttribution(cfg AttributionConfig, deps Deps) (*Attribution, error) {
	cfg = cfg.withDefaults()
	if err := oneOf("conntrack attribution mode", cfg.Mode, AttributionModes); err != nil {
		return nil, err
	}
	a := &Attribution{
		cfg:              cfg,
		procfs:           deps.Paths.ProcFS,
		logger:           deps.logger(),
		index:            deps.Index,
		scanner:          conntrack.NewScanner(),
		cleanup:          &kubeproxy.ConntrackCleanup{},
		nft:              nftables.Reader{ProcFS: deps.Paths.ProcFS},
		eventsReadBuffer: defaultEventsReadBuffer,
		podEntries: identityDesc("conntrack", "pod_entries",
			"Conntrack entries whose original source (the client) or reply source (the backend serving it, after DNAT) is this pod, at the last pass.",
			podIdentity, "protocol"),
		stateEntries: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "state_entries"),
			"Conntrack entries by protocol, TCP state (empty for other protocols) and whether the entry is assured (assured entries cannot be evicted by early drop when the table is full), at the last full pass.",
			[]string{"protocol", "state", "assured"}, nil),
		svcEntries: identityDesc("conntrack", "service_entries",
			"Conntrack entries whose original destination address and port is this service, at the last pass; services beyond the top-K are summed into namespace=\"\", service=\"\".",
			serviceIdentity, "protocol"),
		duration: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack_attribution", "last_duration_seconds"),
			"How long the last successful pass over the conntrack table took.", nil, nil),
		dumps: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack_attribution", "last_dumps"),
			"Kernel dumps the last successful pass read at once: 2 when it split the table in two parts by a status bit, else 1.", nil, nil),
		scanned: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack_attribution", "entries_scanned"),
			"Conntrack entries read by the last successful pass.", nil, nil),
		lastSuccess: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack_attribution", "last_success_timestamp_seconds"),
			"Unix time the last successful pass over the conntrack table finished; its age is the age of the attribution series.", nil, nil),
		errorsTotal: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack_attribution", "errors_total"),
			"Passes over the conntrack table that failed.", nil, nil),
		passesTotal: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack_attribution", "passes_total"),
			"Passes over the conntrack table that finished successfully.", nil, nil),
		eventsLostTotal: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack_attribution", "events_lost_total"),
			"Times conntrack events were lost (receive buffer overrun) in events mode, each followed by a full pass.", nil, nil),

		staleEntries: identityDesc("conntrack", "stale_entries",
			"Stale conntrack entries per service at the last full pass, as kube-proxy v1.37.2 judges them (and deletes them after its next sync): UDP entries addressed to a service port's ClusterIP, load-balancer VIP, external IP or node port whose reply source is not one of that port's serving endpoints; services beyond the top-K are summed into namespace=\"\", service=\"\".",
			serviceIdentity, "protocol"),
		staleBlackhole: identityDesc("conntrack", "stale_blackhole_entries",
			"Of conntrack_stale_entries, those that black-hole traffic: refreshed by a packet since the previous pass (the client keeps sending), or DNATed to an address no pod of this node and no EndpointSlice endpoint holds; same services as conntrack_stale_entries.",
			serviceIdentity, "protocol"),
		staleNode: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "stale_node_entries"),
			"Stale conntrack entries on this node, all services (the sum of conntrack_stale_entries), at the last full pass; 0 on a healthy node.", nil, nil),
		staleNodeBlackhole: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "stale_node_blackhole_entries"),
			"Stale conntrack entries on this node that black-hole traffic (the sum of conntrack_stale_blackhole_entries), at the last full pass; 0 on a healthy node.", nil, nil),
		staleMaxTimeout: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "stale_max_timeout_seconds"),
			"The longest remaining timeout (CTA_TIMEOUT) of a stale entry at the last full pass: how long the last of them stays if no packet refreshes it; 0 without stale entries.", nil, nil),
		staleOldestAge: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "stale_oldest_age_seconds"),
			"Age of the oldest stale entry at the last full pass, from its start timestamp; only present when stale entries carry one (net.netfilter.nf_conntrack_timestamp was 1 when they were created; off by default).", nil, nil),
		snatRatio: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "snat_port_usage_ratio"),
			"Source-NAT port usage of the worst translated tuple (translated source address, destination address and port, protocol) at the last full pass: its entries divided by the ports NAT can pick from (65535-1024+1, or the rule's port range); new connections of that tuple fail at 1.", nil, nil),
		snatEntries: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "snat_entries"),
			"Source-NATed (masqueraded) conntrack entries at the last full pass.", nil, nil),
		snatTuples: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "snat_tuples"),
			"Distinct translated tuples (translated source address, destination address and port, protocol) of the source-NATed entries at the last full pass; at most 65,536 are counted exactly.", nil, nil),
		snatUndercount: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "snat_tuple_undercount_entries"),
			"How far below the truth any translated tuple's count may be: 0 while there are at most 65,536 tuples, else the bound of the summary that counts them (the heaviest tuples are kept).", nil, nil),
		snatTupleEntries: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "snat_tuple_entries"),
			"Source-NATed entries of the translated tuples of the highest port usage (top-K), at the last full pass.",
			snatTupleLabels, nil),
		snatTupleRatio: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "snat_tuple_port_usage_ratio"),
			"Port usage of the translated tuples of the highest port usage (top-K), at the last full pass: entries divided by the ports NAT can pick from.",
			snatTupleLabels, nil),
	}
	// A pass is bounded by the interval.
	a.r = newRefresher(AttributionName, cfg.Interval, cfg.Interval, a.pass)
	return a, nil
}

// setTarget makes the collector read the table of the network namespace t
// (tests).
func (a *Attribution) setTarget(t netns.Target) { a.target, a.nft.Target = t, t }

// Start implements Starter. In pass mode it runs a first pass at once, then
// one every Interval, each only after the previous one finished; in events
// mode it follows the table by events between passes. The work stops when
// ctx is done. Calling Start again does nothing.
func (a *Attribution) Start(ctx context.Context) error {
	if a.cfg.Mode == AttributionModeEvents {
		a.r.Run(ctx, a.eventsLoop)
		return nil
	}
	return a.r.Start(ctx)
}

// Close stops the background work and waits for it to end.
func (a *Attribution) Close() { a.r.Close() }

// Pass scans the conntrack table once and, on success, replaces the result
// Update serves. It returns an error wrapping ErrNoData when the kernel has
// no conntrack table. Start runs passes in the background; tests and
// benchmarks call Pass directly. Passes must not run concurrently.
func (a *Attribution) Pass(ctx context.Context) error {
	start := time.Now()
	s, err := a.pass(ctx)
	a.r.publish(s, start, time.Now(), err)
	return err
}

// pass is one pass: it counts the table and accounts for the outcome.
func (a *Attribution) pass(ctx context.Context) (*AttributionResult, error) {
	start := time.Now()
	t, st, err := a.scan(ctx)
	if err != nil {
		a.failed(ctx, err)
		return nil, err
	}
	elapsed := time.Since(start)
	a.passes.Add(1)
	return &AttributionResult{
		Pods:     counts(t.pods),
		Services: a.topK(counts(t.services)),
		States:   t.states.counts(),
		Scanned:  st.Entries,
		Dumps:    st.Dumps,
		Duration: elapsed,
		Finished: time.Now(),
		Stale:    t.stale.result(a.cleanup, a.cfg.TopServices),
		SNAT:     snatResult(t.snat, a.natRanges, a.cfg.TopSNATTuples),
	}, nil
}

// failed accounts for a pass that failed: an absent table is logged once
// at debug level, a failure is counted and logged.
func (a *Attribution) failed(ctx context.Context, err error) {
	switch {
	case errors.Is(err, ErrNoData):
		if a.lastAbsent != err.Error() {
			a.lastAbsent = err.Error()
			a.logger.Debug("conntrack table absent, attribution has no data", zap.Error(err))
		}
	case ctx.Err() != nil:
		// Shutting down.
	default:
		a.errs.Add(1)
		a.logger.Warn("conntrack attribution pass failed; serving the previous result", zap.Error(err))
	}
}

// scan dumps the table once and counts its entries per pod, service and
// state.
func (a *Attribution) scan(ctx context.Context) (*tally, conntrack.ScanStats, error) {
	if err := conntrack.CheckTable(a.procfs); err != nil {
		return nil, conntrack.ScanStats{}, noData(err)
	}
	a.prepareTables(ctx)
	lookup := newPassLookup(a.index)
	var parts [2]*tally
	st, err := a.scanner.Scan(ctx, a.target, func(i int) func(*conntrack.Entry) {
		a.snat[i].Reset()
		t := newTally(&a.snat[i], lookup)
		parts[i] = t
		return func(e *conntrack.Entry) { t.add(a, e) }
	})
	if st.SplitUnsupported != nil {
		a.logger.Info("the kernel does not filter conntrack dumps by status (before Linux 5.19); passes read the table with one dump", zap.Error(st.SplitUnsupported))
	}
	if st.Interrupted {
		a.logger.Debug("conntrack dump was interrupted by table changes; counts may be off by the entries that moved")
	}
	if err != nil {
		return nil, st, noData(err)
	}
	if st.Dumps == 2 {
		parts[0].merge(parts[1])
	}
	parts[0].finish()
	return parts[0], st, nil
}

// attrKey keys the counters of a pass; proto is the IP protocol number.
type attrKey struct {
	namespace, name string
	proto           uint8
}

// tally is what one dump (or one part of a split pass) counts: pods and
// services by the pass's numbering (fast) until finish turns them into
// pods and services by name.
type tally struct {
	lookup         *passLookup
	fast           fastCounts
	pods, services map[attrKey]int64
	states         stateTally
	stale          staleTally
	snat           *conntrack.SNATCounter
}

func newTally(snat *conntrack.SNATCounter, lookup *passLookup) *tally {
	return &tally{lookup: lookup, fast: fastCounts{pods: map[uint64]int64{}, services: map[uint64]int64{}}, snat: snat}
}

// finish turns the counts by number into counts by name.
func (t *tally) finish() {
	t.pods = attrCounts(t.fast.pods, t.lookup.podKeys)
	t.services = attrCounts(t.fast.services, t.lookup.svcKeys)
}

func (t *tally) add(a *Attribution, e *conntrack.Entry) {
	t.fast.count(t.lookup, e)
	t.states.add(e)
	t.snat.Add(e)
	if e.Orig.Proto == ipProtoUDP {
		t.stale.add(a.judge, e)
	}
}

// merge adds the counts of o (the other part of a split pass, counted
// against the same lookup) to t.
func (t *tally) merge(o *tally) {
	for k, n := range o.fast.pods {
		t.fast.pods[k] += n
	}
	for k, n := range o.fast.services {
		t.fast.services[k] += n
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
	t.stale.merge(&o.stale)
	t.snat.Merge(o.snat)
}

// stateTally counts the entries of a pass by protocol, TCP state and
// whether the entry is assured (IPS_ASSURED: the kernel's early drop cannot
// evict it when the table is full).
type stateTally struct {
	tcp   [len(conntrack.TCPStateNames) + 1][2]uint64 // the last row: a state the kernel added later
	other [256][2]uint64                              // by IP protocol number
}

const (
	ipProtoTCP = 6
	ipProtoUDP = 17
)

func (t *stateTally) add(e *conntrack.Entry) {
	assured := 0
	if e.Status&conntrack.StatusAssured != 0 {
		assured = 1
	}
	if e.Orig.Proto == ipProtoTCP {
		t.tcp[min(int(e.TCPState), len(conntrack.TCPStateNames))][assured]++
		return
	}
	t.other[e.Orig.Proto][assured]++
}

// counts lists the non-zero counters, TCP states first, then the other
// protocols by number.
func (t *stateTally) counts() []StateCount {
	var out []StateCount
	assured := [2]string{"false", "true"}
	for st, row := range t.tcp {
		name := "unknown"
		if st < len(conntrack.TCPStateNames) {
			name = conntrack.TCPStateNames[st]
		}
		for a, n := range row {
			if n > 0 {
				out = append(out, StateCount{Protocol: "tcp", State: name, Assured: assured[a], Entries: n})
			}
		}
	}
	for p, row := range t.other {
		for a, n := range row {
			if n > 0 {
				out = append(out, StateCount{Protocol: protocolNames[p], Assured: assured[a], Entries: n})
			}
		}
	}
	return out
}

// count adds delta to the counters of the pods and the service e counts
// toward (see CONTRACT.md), dropping counters that reach 0.
func (a *Attribution) count(e *conntrack.Entry, pods, services map[attrKey]int64, delta int64) {
	ix := a.index
	proto := e.Orig.Proto
	client, clientOK := ix.PodByIP(e.Orig.Src)
	if clientOK {
		add(pods, attrKey{client.Namespace, client.Name, proto}, delta)
	}
	// Reply.Src is the backend after DNAT, or Orig.Dst without NAT; either
	// way the pod that answers. A pod talking to itself counts once.
	if server, ok := ix.PodByIP(e.Reply.Src); ok && (!clientOK || server != client) {
		add(pods, attrKey{server.Namespace, server.Name, proto}, delta)
	}
	if name := protocolNames[proto]; name == "tcp" || name == "udp" || name == "sctp" {
		if svc, ok := ix.ServiceByAddrPort(name, e.Orig.Dst, e.Orig.DstPort); ok {
			add(services, attrKey{svc.Namespace, svc.Service, proto}, delta)
		}
	}
}

func add(m map[attrKey]int64, k attrKey, delta int64) {
	if v := m[k] + delta; v > 0 {
		m[k] = v
	} else {
		delete(m, k)
	}
}

func counts(m map[attrKey]int64) []AttributedCount {
	out := make([]AttributedCount, 0, len(m))
	for k, n := range m {
		out = append(out, AttributedCount{Namespace: k.namespace, Name: k.name, Protocol: protocolNames[k.proto], Entries: uint64(n)})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Entries != out[j].Entries {
			return out[i].Entries > out[j].Entries
		}
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Protocol < out[j].Protocol
	})
	return out
}

// topK keeps the TopServices largest series of counts (sorted largest
// first) and sums the rest per protocol into series with empty names.
func (a *Attribution) topK(counts []AttributedCount) []AttributedCount {
	k := a.cfg.TopServices
	if k <= 0 || len(counts) <= k {
		return counts
	}
	out := counts[:k:k]
	rest := map[string]uint64{}
	for _, c := range counts[k:] {
		rest[c.Protocol] += c.Entries
	}
	protos := make([]string, 0, len(rest))
	for p := range rest {
		protos = append(protos, p)
	}
	sort.Strings(protos)
	for _, p := range protos {
		out = append(out, AttributedCount{Protocol: p, Entries: rest[p]})
	}
	return out
}

// Result is what Update serves: the result of the last successful pass
// (with the counts events kept since, in events mode). It returns
// ErrNoData when there is no table, and before the first pass an error
// that also wraps ErrNotReady.
func (a *Attribution) Result(context.Context) (*AttributionResult, error) {
	s := a.r.Snapshot()
	if s != nil && s.Err != nil && errors.Is(s.Err, ErrNoData) {
		return nil, s.Err
	}
	r := a.current()
	if r == nil {
		return nil, fmt.Errorf("conntrack attribution: %w: %w", ErrNotReady, ErrNoData)
	}
	return r, nil
}

// current is the result Update serves, nil before the first pass.
func (a *Attribution) current() *AttributionResult {
	s := a.r.Snapshot()
	if s == nil {
		return nil
	}
	return a.withEvents(s.Value)
}

// Update implements Collector: it serves the result of the last successful
// pass, and ErrNoData before the first one or when there is no table.
func (a *Attribution) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	ch <- prometheus.MustNewConstMetric(a.errorsTotal, prometheus.CounterValue, float64(a.errs.Load()))
	ch <- prometheus.MustNewConstMetric(a.passesTotal, prometheus.CounterValue, float64(a.passes.Load()))
	if a.cfg.Mode == AttributionModeEvents {
		ch <- prometheus.MustNewConstMetric(a.eventsLostTotal, prometheus.CounterValue, float64(a.events.lost.Load()))
	}
	s, err := a.Result(ctx)
	if err != nil {
		return err
	}
	for _, c := range s.Pods {
		// A pod deleted since the pass: its series goes at once, not
		// with the next pass.
		if !a.index.HasPod(c.Namespace, c.Name) {
			continue
		}
		ch <- prometheus.MustNewConstMetric(a.podEntries, prometheus.GaugeValue, float64(c.Entries), podValues(kube.PodRef{Namespace: c.Namespace, Name: c.Name}, c.Protocol)...)
	}
	for _, c := range s.Services {
		ch <- prometheus.MustNewConstMetric(a.svcEntries, prometheus.GaugeValue, float64(c.Entries), serviceValues(c.Namespace, c.Name, c.Protocol)...)
	}
	for _, c := range s.States {
		ch <- prometheus.MustNewConstMetric(a.stateEntries, prometheus.GaugeValue, float64(c.Entries), c.Protocol, c.State, c.Assured)
	}
	ch <- prometheus.MustNewConstMetric(a.duration, prometheus.GaugeValue, s.Duration.Seconds())
	ch <- prometheus.MustNewConstMetric(a.scanned, prometheus.GaugeValue, float64(s.Scanned))
	ch <- prometheus.MustNewConstMetric(a.dumps, prometheus.GaugeValue, float64(s.Dumps))
	ch <- prometheus.MustNewConstMetric(a.lastSuccess, prometheus.GaugeValue, unixSeconds(s.Finished))
	a.emitTables(ch, s)
	a.r.emitAge(ch, a.r.Snapshot())
	return nil
}

// Events mode.

// eventCounters are the pod and service counts of events mode: those of
// the last full pass, kept current by the events since.
type eventCounters struct {
	mu       sync.Mutex
	pods     map[attrKey]int64 // nil until the first pass
	services map[attrKey]int64

	lost atomic.Uint64
}

// withEvents is the result Update serves for the pass r: in events mode with
// the counts the events kept current since; nil before the first pass.
func (a *Attribution) withEvents(r *AttributionResult) *AttributionResult {
	if a.cfg.Mode != AttributionModeEvents || r == nil {
		return r
	}
	ev := &a.events
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if ev.pods == nil {
		return nil
	}
	out := *r
	out.Pods, out.Services = counts(ev.pods), a.topK(counts(ev.services))
	return &out
}

// eventsLoop subscribes to conntrack events, counts a full pass, then
// applies events to the counts until the next pass is due (every
// Interval) or events were lost. Events still queued when a pass starts
// are applied after it, so an entry created just before or during the pass
// may be counted twice and one destroyed then may be subtracted although
// the pass did not see it (counts never go below 0); the next pass
// corrects both.
func (a *Attribution) eventsLoop(ctx context.Context) {
	for ctx.Err() == nil {
		err := a.followEvents(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, conntrack.ErrEventsLost):
			a.events.lost.Add(1)
			a.logger.Info("conntrack events lost, subscribing again and counting the table", zap.Error(err))
			continue
		case errors.Is(err, ErrNoData):
			now := time.Now()
			a.r.publish(nil, now, now, err)
		default:
			// The counts are served on until a pass succeeds.
			now := time.Now()
			a.r.publish(nil, now, now, err)
		}
		t := time.NewTimer(a.cfg.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// followEvents subscribes, counts a pass, and applies events until ctx is
// done or an error. When events were lost it returns ErrEventsLost, and the
// caller subscribes again on a new socket: after an overrun the kernel
// reports ENOBUFS once and then, until the queue drains, drops further
// events silently (netlink_overrun in net/netlink/af_netlink.c sets the
// error only when the socket was not already marked congested), so the
// old socket cannot be trusted through the pass that follows.
func (a *Attribution) followEvents(ctx context.Context) error {
	if err := conntrack.CheckTable(a.procfs); err != nil {
		err = noData(err)
		a.failed(ctx, err)
		return err
	}
	// Subscribe before the pass so no event between the two is missed.
	l, err := conntrack.Listen(a.target, a.eventsReadBuffer)
	if err != nil {
		err = noData(err)
		a.failed(ctx, err)
		return err
	}
	defer l.Close()
	for {
		if err := a.resync(ctx); err != nil {
			return err
		}
		next := time.Now().Add(a.cfg.Interval)
		for {
			_, err := l.Receive(ctx, next, a.applyEvent)
			if err == nil {
				continue
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break // a pass is due
			}
			if !errors.Is(err, conntrack.ErrEventsLost) {
				a.failed(ctx, err)
			}
			return err
		}
	}
}

// resync replaces the counts with those of a full pass.
func (a *Attribution) resync(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, a.cfg.Interval)
	defer cancel()
	start := time.Now()
	t, st, err := a.scan(pctx)
	if err != nil {
		a.failed(ctx, err)
		return err
	}
	end := time.Now()
	ev := &a.events
	ev.mu.Lock()
	ev.pods, ev.services = t.pods, t.services
	ev.mu.Unlock()
	a.passes.Add(1)
	a.r.publish(&AttributionResult{
		States:   t.states.counts(),
		Scanned:  st.Entries,
		Dumps:    st.Dumps,
		Duration: end.Sub(start),
		Finished: end,
		Stale:    t.stale.result(a.cleanup, a.cfg.TopServices),
		SNAT:     snatResult(t.snat, a.natRanges, a.cfg.TopSNATTuples),
	}, start, end, nil)
	return nil
}

func (a *Attribution) applyEvent(e *conntrack.Entry) {
	var delta int64
	switch e.Event {
	case conntrack.EventNew:
		delta = 1
	case conntrack.EventDestroy:
		delta = -1
	default:
		return
	}
	ev := &a.events
	ev.mu.Lock()
	if ev.pods != nil {
		a.count(e, ev.pods, ev.services, delta)
	}
	ev.mu.Unlock()
}
