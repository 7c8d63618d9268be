package collector

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/collector/ctdump"
	"github.com/netinspect/netinspect/kube"
)

// AttributionName is the conntrack-attribution collector's name in flags
// and metrics.
const AttributionName = "conntrack-attribution"

// AttributionConfig configures the conntrack-attribution collector.
type AttributionConfig struct {
	// Interval is the time between the starts of two passes over the
	// conntrack table; 0 means 30 s.
	Interval time.Duration
	// TopServices is how many service series (namespace, service,
	// protocol) are exported, the largest first; the entries of the others
	// are summed into one series with empty namespace and service. 0 means
	// no limit.
	TopServices int
	// NetNS, when not 0, is an open file descriptor of the network namespace
	// whose table is read instead of the exporter's own. Tests use it.
	NetNS int
	// Mode is AttributionModePass (default) or AttributionModeEvents.
	Mode string
	// NoSplit makes every pass read the table with one dump, never split
	// in two parts read at once (see attribution_split.go).
	NoSplit bool
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

// DefaultAttributionInterval is the pass interval when none is configured.
const DefaultAttributionInterval = 30 * time.Second

// Attribution reports who fills the conntrack table: entries per pod of this
// node and per service. Scanning the table costs time proportional to its
// size (about half a second at 262,144 entries), so passes run in the
// background, one at a time, and Update serves the result of the last one.
type Attribution struct {
	cfg    AttributionConfig
	procfs string
	logger *zap.Logger
	index  *kube.Index
	// dumpers read the table, the second only for passes split in two.
	dumpers [2]*ctdump.Dumper

	// Used only by the goroutine that runs passes: the counts of the last
	// pass, the bit it was split on (0: not split), and whether the kernel
	// has shown that it cannot filter dumps by status.
	lastTally        *tally
	lastSplitBit     uint32
	splitUnsupported bool

	protoNames [256]string

	podEntries, svcEntries, stateEntries, dumps, duration, scanned, lastSuccess, errorsTotal, passesTotal, eventsLostTotal *prometheus.Desc

	snap    atomic.Pointer[attributionSnapshot]
	errs    atomic.Uint64
	passes  atomic.Uint64
	absent  atomic.Pointer[error] // why the last pass found no table; nil once one was found
	started sync.Once
	stopped chan struct{} // closed when the background work has stopped

	// Events mode: counters kept current by events, under mu.
	events           eventCounters
	eventsReadBuffer int
}

// attributionSnapshot is the immutable result of one finished pass.
type attributionSnapshot struct {
	pods     []attributedCount
	services []attributedCount
	states   []stateCount
	scanned  int
	dumps    int // 1, or 2 for a pass split in two parts
	duration time.Duration
	finished time.Time
}

// attributedCount is the number of entries of one pod or service over one
// protocol.
type attributedCount struct {
	namespace, name, protocol string
	entries                   uint64
}

// stateCount is the number of entries of one protocol in one state.
type stateCount struct {
	protocol, state, assured string
	entries                  uint64
}

// tcpStateNames are the names of enum tcp_conntrack
// (include/uapi/linux/netfilter/nf_conntrack_tcp.h) in lower case, as
// node_exporter names socket states; SYN_SENT2 is the simultaneous open.
var tcpStateNames = [...]string{"none", "syn_sent", "syn_recv", "established", "fin_wait",
	"close_wait", "last_ack", "time_wait", "close", "syn_sent2"}

// stateTally counts the entries of a pass by protocol, TCP state and
// whether the entry is assured (IPS_ASSURED: the kernel's early drop cannot
// evict it when the table is full).
type stateTally struct {
	tcp   [len(tcpStateNames) + 1][2]uint64 // the last row: a state the kernel added later
	other [256][2]uint64                    // by IP protocol number
}

const ipsAssured = 1 << 2 // IPS_ASSURED_BIT in include/uapi/linux/netfilter/nf_conntrack_common.h

func (t *stateTally) add(e *ctdump.Entry) {
	assured := 0
	if e.Status&ipsAssured != 0 {
		assured = 1
	}
	if e.Orig.Proto == unix.IPPROTO_TCP {
		t.tcp[min(int(e.TCPState), len(tcpStateNames))][assured]++
		return
	}
	t.other[e.Orig.Proto][assured]++
}

// counts lists the non-zero counters, TCP states first, then the other
// protocols by number.
func (t *stateTally) counts(protoNames *[256]string) []stateCount {
	var out []stateCount
	assured := [2]string{"false", "true"}
	for st, row := range t.tcp {
		name := "unknown"
		if st < len(tcpStateNames) {
			name = tcpStateNames[st]
		}
		for a, n := range row {
			if n > 0 {
				out = append(out, stateCount{protocol: "tcp", state: name, assured: assured[a], entries: n})
			}
		}
	}
	for p, row := range t.other {
		for a, n := range row {
			if n > 0 {
				out = append(out, stateCount{protocol: protoNames[p], assured: assured[a], entries: n})
			}
		}
	}
	return out
}

// attrKey keys the counters of a pass; proto is the IP protocol number.
type attrKey struct {
	namespace, name string
	proto           uint8
}

// NewAttribution returns the conntrack-attribution collector. It does
// nothing until Start.
func NewAttribution(cfg AttributionConfig, deps Deps) *Attribution {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultAttributionInterval
	}
	a := &Attribution{
		cfg:     cfg,
		procfs:  deps.Paths.ProcFS,
		logger:  deps.Logger,
		index:   deps.Index,
		dumpers: [2]*ctdump.Dumper{ctdump.NewDumper()},

		stopped: make(chan struct{}),

		eventsReadBuffer: defaultEventsReadBuffer,
		podEntries: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "pod_entries"),
			"Conntrack entries whose original source (the client) or reply source (the backend serving it, after DNAT) is this pod, at the last pass.",
			[]string{"namespace", "pod", "protocol"}, nil),
		stateEntries: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "state_entries"),
			"Conntrack entries by protocol, TCP state (empty for other protocols) and whether the entry is assured (assured entries cannot be evicted by early drop when the table is full), at the last full pass.",
			[]string{"protocol", "state", "assured"}, nil),
		svcEntries: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "service_entries"),
			"Conntrack entries whose original destination address and port is this service, at the last pass; services beyond the top-K are summed into namespace=\"\", service=\"\".",
			[]string{"namespace", "service", "protocol"}, nil),
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
	}
	for i := range a.protoNames {
		a.protoNames[i] = strconv.Itoa(i)
	}
	for num, name := range map[int]string{1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 58: "icmpv6", 132: "sctp", 136: "udplite"} {
		a.protoNames[num] = name
	}
	return a
}

// Start implements Starter. In pass mode it runs a first pass at once, then
// one every Interval, each only after the previous one finished; in events
// mode it follows the table by events between passes. The work stops when
// ctx is done. Calling Start again does nothing.
func (a *Attribution) Start(ctx context.Context) error {
	run := a.loop
	switch a.cfg.Mode {
	case "", AttributionModePass:
	case AttributionModeEvents:
		run = a.eventsLoop
	default:
		return fmt.Errorf("unknown conntrack attribution mode %q (want %s or %s)", a.cfg.Mode, AttributionModePass, AttributionModeEvents)
	}
	a.started.Do(func() {
		go func() {
			defer close(a.stopped)
			run(ctx)
		}()
	})
	return nil
}

func (a *Attribution) loop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Interval)
	defer t.Stop()
	for {
		a.runPass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// runPass runs one pass bounded by the interval and records its outcome.
func (a *Attribution) runPass(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, a.cfg.Interval)
	defer cancel()
	err := a.Pass(pctx)
	switch {
	case err == nil:
		a.absent.Store(nil)
	case errors.Is(err, ErrNoData):
		if prev := a.absent.Swap(&err); prev == nil || (*prev).Error() != err.Error() {
			a.logger.Debug("conntrack table absent, attribution has no data", zap.Error(err))
		}
	case ctx.Err() != nil:
		// Shutting down.
	default:
		a.errs.Add(1)
		a.logger.Warn("conntrack attribution pass failed; serving the previous result", zap.Error(err))
	}
}

// Pass scans the conntrack table once and, on success, replaces the result
// Update serves. It returns an error wrapping ErrNoData when the kernel has
// no conntrack table. Start runs passes in the background; tests and
// benchmarks call Pass directly. Passes must not run concurrently.
func (a *Attribution) Pass(ctx context.Context) error {
	if err := a.tableAbsent(); err != nil {
		return err
	}

	start := time.Now()
	t, err := a.scan(ctx)
	if err != nil {
		return err
	}
	elapsed := time.Since(start)

	s := &attributionSnapshot{
		pods:     a.counts(t.pods),
		services: a.topK(a.counts(t.services)),
		states:   t.states.counts(&a.protoNames),
		scanned:  t.scanned,
		dumps:    dumpsOf(a.lastSplitBit),
		duration: elapsed,
		finished: time.Now(),
	}
	a.snap.Store(s)
	a.passes.Add(1)
	return nil
}

// tableAbsent returns an error wrapping ErrNoData when the kernel has no
// conntrack table. As in the conntrack collector: without the sysctl there
// is no table, and asking netlink would make a modular kernel load
// ctnetlink.
func (a *Attribution) tableAbsent() error {
	maxPath := filepath.Join(a.procfs, "sys/net/netfilter/nf_conntrack_max")
	if _, err := os.Stat(maxPath); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s absent, nf_conntrack is not loaded: %w", maxPath, ErrNoData)
	}
	return nil
}

// count adds delta to the counters of the pods and the service e counts
// toward (see CONTRACT.md), dropping counters that reach 0.
func (a *Attribution) count(e *ctdump.Entry, pods, services map[attrKey]int64, delta int64) {
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
	if name := a.protoNames[proto]; name == "tcp" || name == "udp" || name == "sctp" {
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

func (a *Attribution) counts(m map[attrKey]int64) []attributedCount {
	out := make([]attributedCount, 0, len(m))
	for k, n := range m {
		out = append(out, attributedCount{namespace: k.namespace, name: k.name, protocol: a.protoNames[k.proto], entries: uint64(n)})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].entries != out[j].entries {
			return out[i].entries > out[j].entries
		}
		if out[i].namespace != out[j].namespace {
			return out[i].namespace < out[j].namespace
		}
		if out[i].name != out[j].name {
			return out[i].name < out[j].name
		}
		return out[i].protocol < out[j].protocol
	})
	return out
}

// topK keeps the TopServices largest series of counts (sorted largest
// first) and sums the rest per protocol into series with empty names.
func (a *Attribution) topK(counts []attributedCount) []attributedCount {
	k := a.cfg.TopServices
	if k <= 0 || len(counts) <= k {
		return counts
	}
	out := counts[:k:k]
	rest := map[string]uint64{}
	for _, c := range counts[k:] {
		rest[c.protocol] += c.entries
	}
	protos := make([]string, 0, len(rest))
	for p := range rest {
		protos = append(protos, p)
	}
	sort.Strings(protos)
	for _, p := range protos {
		out = append(out, attributedCount{protocol: p, entries: rest[p]})
	}
	return out
}

// Update implements Collector: it serves the result of the last successful
// pass, and ErrNoData before the first one or when there is no table.
func (a *Attribution) Update(_ context.Context, ch chan<- prometheus.Metric) error {
	ch <- prometheus.MustNewConstMetric(a.errorsTotal, prometheus.CounterValue, float64(a.errs.Load()))
	ch <- prometheus.MustNewConstMetric(a.passesTotal, prometheus.CounterValue, float64(a.passes.Load()))
	if a.cfg.Mode == AttributionModeEvents {
		ch <- prometheus.MustNewConstMetric(a.eventsLostTotal, prometheus.CounterValue, float64(a.events.lost.Load()))
	}
	if absent := a.absent.Load(); absent != nil {
		return *absent
	}
	s := a.current()
	if s == nil {
		return fmt.Errorf("conntrack attribution: %w: %w", ErrNotReady, ErrNoData)
	}
	for _, c := range s.pods {
		ch <- prometheus.MustNewConstMetric(a.podEntries, prometheus.GaugeValue, float64(c.entries), c.namespace, c.name, c.protocol)
	}
	for _, c := range s.services {
		ch <- prometheus.MustNewConstMetric(a.svcEntries, prometheus.GaugeValue, float64(c.entries), c.namespace, c.name, c.protocol)
	}
	for _, c := range s.states {
		ch <- prometheus.MustNewConstMetric(a.stateEntries, prometheus.GaugeValue, float64(c.entries), c.protocol, c.state, c.assured)
	}
	ch <- prometheus.MustNewConstMetric(a.duration, prometheus.GaugeValue, s.duration.Seconds())
	ch <- prometheus.MustNewConstMetric(a.scanned, prometheus.GaugeValue, float64(s.scanned))
	ch <- prometheus.MustNewConstMetric(a.dumps, prometheus.GaugeValue, float64(s.dumps))
	ch <- prometheus.MustNewConstMetric(a.lastSuccess, prometheus.GaugeValue, float64(s.finished.UnixNano())/1e9)
	return nil
}
