package collector

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/source"
	"github.com/netinspect/netinspect/source/neighbour"
	"github.com/netinspect/netinspect/source/netns"
)

// NeighbourName is the neighbour collector's name in flags and metrics.
const NeighbourName = "neighbour"

// NeighbourConfig configures the neighbour collector; it has no settings
// yet.
type NeighbourConfig struct{}

// DefaultNeighbourConfig is the neighbour collector's configuration when
// no flag says otherwise.
func DefaultNeighbourConfig() NeighbourConfig { return NeighbourConfig{} }

// Neighbour reports the kernel's neighbour tables (ARP for IPv4, NDISC for
// IPv6): their entries against the garbage-collection thresholds, and
// their counters. The tables are global (one per family for the whole
// kernel, every namespace's entries, pods' included, counted together):
// see package source/neighbour. Read over rtnetlink (RTM_GETNEIGHTBL),
// with /proc/net/stat/{arp,ndisc}_cache and the gc_thresh sysctls as the
// fallback where the kernel does not answer it.
type Neighbour struct {
	procfs string
	logger *zap.Logger
	target netns.Target
	// read is neighbour.Read; tests replace it to play a kernel without
	// the netlink messages.
	read func(ctx context.Context, netnsFD int) ([]neighbour.Table, error)

	entries, threshold, source, tableFulls *prometheus.Desc
	counters                               []neighbourCounter

	mu      sync.Mutex
	lastWhy string // the fallback reason last logged
}

type neighbourCounter struct {
	desc *prometheus.Desc
	get  func(*neighbour.Stats) uint64
}

// NeighbourResult is one reading of the neighbour tables.
type NeighbourResult struct {
	// Tables are the IPv4 then IPv6 tables.
	Tables []neighbour.Table
	// Fallback says why procfs was read instead of netlink ("" when
	// netlink answered).
	Fallback string
}

// NewNeighbour returns the neighbour collector.
func NewNeighbour(_ NeighbourConfig, deps Deps) (*Neighbour, error) {
	fam := []string{"family"}
	c := &Neighbour{
		procfs: deps.Paths.ProcFS,
		logger: deps.logger(),
		read:   neighbour.Read,
		entries: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "neighbour", "entries"),
			"Entries in the kernel's neighbour table of the family (ARP for ipv4, NDISC for ipv6), over every network namespace of the node: the table is global. An upper bound of what the thresholds are compared with: since Linux 4.19 the garbage collector leaves out permanent and externally learned entries.",
			fam, nil),
		threshold: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "neighbour", "gc_threshold"),
			"Garbage-collection thresholds of the neighbour table (net.ipv4/ipv6.neigh.default.gc_thresh1/2/3, global): below level 1 nothing is collected; above level 2 new entries force a collection; at level 3 new entries are refused (\"neighbour table overflow\").",
			[]string{"family", "level"}, nil),
		tableFulls: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "neighbour", "table_fulls_total"),
			"New neighbour entries refused because the table stayed at gc_thresh3 after a forced garbage collection: traffic to those neighbours is dropped.",
			fam, nil),
		source: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "neighbour", "source_info"),
			"Where the neighbour tables were read from: netlink, or procfs when the kernel does not answer RTM_GETNEIGHTBL.",
			[]string{"source"}, nil),
	}
	for _, n := range []struct {
		name, help string
		get        func(*neighbour.Stats) uint64
	}{
		{"allocs_total", "Neighbour entries allocated.", func(s *neighbour.Stats) uint64 { return s.Allocs }},
		{"destroys_total", "Neighbour entries destroyed.", func(s *neighbour.Stats) uint64 { return s.Destroys }},
		{"forced_gc_runs_total", "Forced garbage collections of the neighbour table: a new entry found the table above gc_thresh2 (or at gc_thresh3).", func(s *neighbour.Stats) uint64 { return s.ForcedGCRuns }},
		{"periodic_gc_runs_total", "Periodic garbage collections of the neighbour table.", func(s *neighbour.Stats) uint64 { return s.PeriodicGCRuns }},
		{"resolution_failures_total", "Neighbour resolutions that failed (no answer to ARP or neighbour solicitation: res_failed).", func(s *neighbour.Stats) uint64 { return s.ResFailed }},
	} {
		c.counters = append(c.counters, neighbourCounter{
			desc: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "neighbour", n.name), n.help, fam, nil),
			get:  n.get,
		})
	}
	return c, nil
}

// setTarget makes the collector ask from the network namespace t (tests).
func (c *Neighbour) setTarget(t netns.Target) { c.target = t }

// Result reads the tables: over netlink, or from procfs when the kernel
// does not answer RTM_GETNEIGHTBL or netlink is refused; ErrNoData when
// neither has them.
func (c *Neighbour) Result(ctx context.Context) (*NeighbourResult, error) {
	tables, err := c.read(ctx, c.target.FD())
	if err == nil {
		c.logFallback("")
		return &NeighbourResult{Tables: tables}, nil
	}
	if !errors.Is(err, neighbour.ErrAbsent) && !errors.Is(err, source.ErrAbsent) && !errors.Is(err, fs.ErrPermission) {
		return nil, fmt.Errorf("read neighbour tables over netlink: %w", err)
	}
	why := err.Error()
	tables, perr := neighbour.ReadProcFS(c.procfs)
	if perr != nil {
		err = fmt.Errorf("neighbour tables: netlink: %v; procfs: %w", err, perr)
		if errors.Is(perr, neighbour.ErrAbsent) {
			c.logFallback("absent: " + err.Error())
			return nil, fmt.Errorf("%w: %w", err, ErrNoData)
		}
		return nil, err
	}
	c.logFallback(why)
	return &NeighbourResult{Tables: tables, Fallback: why}, nil
}

// logFallback logs at debug level, once per reason, why netlink was not
// used.
func (c *Neighbour) logFallback(why string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if why == c.lastWhy {
		return
	}
	c.lastWhy = why
	if why != "" {
		c.logger.Debug("neighbour tables not read over netlink; trying procfs", zap.String("reason", why))
	}
}

// Update implements Collector.
func (c *Neighbour) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	r, err := c.Result(ctx)
	if err != nil {
		return err
	}
	src := neighbour.SourceNetlink
	for i := range r.Tables {
		t := &r.Tables[i]
		src = t.Source
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(t.Entries), t.Family)
		for level, v := range [...]uint64{t.GCThresh1, t.GCThresh2, t.GCThresh3} {
			ch <- prometheus.MustNewConstMetric(c.threshold, prometheus.GaugeValue, float64(v), t.Family, strconv.Itoa(level+1))
		}
		if t.Stats.HasTableFulls {
			ch <- prometheus.MustNewConstMetric(c.tableFulls, prometheus.CounterValue, float64(t.Stats.TableFulls), t.Family)
		}
		for _, n := range c.counters {
			ch <- prometheus.MustNewConstMetric(n.desc, prometheus.CounterValue, float64(n.get(&t.Stats)), t.Family)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.source, prometheus.GaugeValue, 1, src)
	return nil
}
