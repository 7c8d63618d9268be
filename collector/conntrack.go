package collector

import (
	"context"
	"fmt"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/source/conntrack"
	"github.com/netinspect/netinspect/source/netns"
)

// ConntrackName is the conntrack collector's name in flags and metrics.
const ConntrackName = "conntrack"

// ConntrackConfig configures the conntrack collector.
type ConntrackConfig struct {
	// PerCPU exports the statistics per CPU with a cpu label instead of summed.
	PerCPU bool
}

// DefaultConntrackConfig is the conntrack collector's configuration when no
// flag says otherwise.
func DefaultConntrackConfig() ConntrackConfig { return ConntrackConfig{} }

// ConntrackResult is one reading of the table's size, limit and
// statistics, and of its sizing and timeout sysctls.
type ConntrackResult struct {
	conntrack.Reading
	// Settings are the sysctls that were read (see SettingsErr for those
	// that were not).
	Settings conntrack.Settings
	// SettingsErr says which sysctls could not be read, nil when all were.
	SettingsErr error
}

// Conntrack reports conntrack table usage and statistics of the network
// namespace the exporter runs in, read through netlink (ctnetlink), or from
// procfs when netlink is refused (no CAP_NET_ADMIN).
type Conntrack struct {
	cfg    ConntrackConfig
	procfs string
	logger *zap.Logger
	target netns.Target

	entries, limit, source *prometheus.Desc
	stats                  [conntrack.NumStats]*prometheus.Desc

	buckets, timeout, tcpLoose, tcpBeLiberal, timestamp *prometheus.Desc

	fallbackOnce sync.Once
	// lastSettingsErr is the settings problem last logged, so each is
	// logged once.
	settingsMu      sync.Mutex
	lastSettingsErr string
}

// NewConntrack returns the conntrack collector.
func NewConntrack(cfg ConntrackConfig, deps Deps) (*Conntrack, error) {
	var statLabels []string
	if cfg.PerCPU {
		statLabels = []string{"cpu"}
	}
	c := &Conntrack{
		cfg:    cfg,
		procfs: deps.Paths.ProcFS,
		logger: deps.logger(),
		entries: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "entries"),
			"Number of entries in the conntrack table of the exporter's network namespace.", nil, nil),
		limit: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "entries_limit"),
			"Maximum size of the conntrack table (nf_conntrack_max).", nil, nil),
		source: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "source_info"),
			"Where the conntrack figures were read from: netlink, or procfs when netlink is refused.", []string{"source"}, nil),
		buckets: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "buckets"),
			"Size of the conntrack hash table (net.netfilter.nf_conntrack_buckets); the kernel's default is nf_conntrack_max/4, which kube-proxy also sets when it raises the limit. Far fewer buckets than that make long hash chains (conntrack_stat_chaintoolong_total).", nil, nil),
		timeout: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "timeout_seconds"),
			"How long an idle conntrack entry stays in a state (net.netfilter.nf_conntrack_<protocol>_timeout_<state>): state is the TCP or SCTP state, unreplied or stream for udp and gre, empty for icmp, icmpv6 and generic.",
			[]string{"protocol", "state"}, nil),
		tcpLoose: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "tcp_loose"),
			"1 when conntrack picks up TCP connections already established (net.netfilter.nf_conntrack_tcp_loose), 0 when their packets are invalid.", nil, nil),
		tcpBeLiberal: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "tcp_be_liberal"),
			"1 when conntrack marks only out-of-window RSTs invalid and accepts other out-of-window TCP packets (net.netfilter.nf_conntrack_tcp_be_liberal).", nil, nil),
		timestamp: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "timestamp"),
			"1 when new conntrack entries carry their start time (net.netfilter.nf_conntrack_timestamp), which conntrack_stale_oldest_age_seconds needs.", nil, nil),
	}
	for s := range conntrack.NumStats {
		c.stats[s] = prometheus.NewDesc(
			prometheus.BuildFQName(Namespace, "conntrack", "stat_"+s.String()+"_total"),
			conntrackStatHelp[s], statLabels, nil)
	}
	return c, nil
}

// setTarget makes the collector read the network namespace t through
// netlink, with no procfs fallback (tests).
func (c *Conntrack) setTarget(t netns.Target) { c.target = t }

var conntrackStatHelp = [conntrack.NumStats]string{
	conntrack.StatFound:         "Conntrack lookups that found an existing entry.",
	conntrack.StatInvalid:       "Packets conntrack could not track (malformed, or out of window).",
	conntrack.StatInsert:        "Entries inserted into the conntrack table.",
	conntrack.StatInsertFailed:  "Entries that could not be inserted (a clash with an entry inserted at the same time that could not be resolved).",
	conntrack.StatDrop:          "Packets dropped because the conntrack table was full and no entry could be evicted.",
	conntrack.StatEarlyDrop:     "Entries evicted (non-assured) to make room when the conntrack table was full.",
	conntrack.StatError:         "Packets that conntrack rejected with an error (counted as icmp_error in procfs).",
	conntrack.StatSearchRestart: "Conntrack table lookups restarted because the hash table was resized.",
	conntrack.StatClashResolve:  "Insert clashes the kernel resolved (typically UDP, e.g. parallel DNS queries).",
	conntrack.StatChainTooLong:  "Entries inserted into a hash chain that was too long (hash table too small or attacked).",
}

// Update implements Collector.
func (c *Conntrack) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	r, err := c.Result(ctx)
	if err != nil {
		return err
	}
	ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(r.Entries))
	ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(r.Limit))
	ch <- prometheus.MustNewConstMetric(c.source, prometheus.GaugeValue, 1, r.Source)
	c.emitStats(ch, r.CPUs)
	c.emitSettings(ch, r.Settings)
	return nil
}

// emitSettings sends the sysctls that were read; an absent or unreadable
// one has no series.
func (c *Conntrack) emitSettings(ch chan<- prometheus.Metric, s conntrack.Settings) {
	if s.Buckets.OK {
		ch <- prometheus.MustNewConstMetric(c.buckets, prometheus.GaugeValue, float64(s.Buckets.Value))
	}
	for _, b := range []struct {
		d *prometheus.Desc
		v conntrack.SettingsBool
	}{{c.tcpLoose, s.TCPLoose}, {c.tcpBeLiberal, s.TCPBeLiberal}, {c.timestamp, s.Timestamp}} {
		if b.v.OK {
			v := 0.0
			if b.v.Value {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(b.d, prometheus.GaugeValue, v)
		}
	}
	for _, t := range s.Timeouts {
		ch <- prometheus.MustNewConstMetric(c.timeout, prometheus.GaugeValue, t.Timeout.Seconds(), t.Protocol, t.State)
	}
}

// readSettings reads the sysctls as the collector's namespace sees them,
// logging each new problem once at debug level: a kernel without some of
// them, or a file that cannot be read, costs those series only.
func (c *Conntrack) readSettings() (conntrack.Settings, error) {
	s, err := conntrack.ReadSettingsIn(c.target, c.procfs)
	why := ""
	if err != nil {
		why = err.Error()
	}
	c.settingsMu.Lock()
	defer c.settingsMu.Unlock()
	if why != c.lastSettingsErr {
		c.lastSettingsErr = why
		if err != nil {
			c.logger.Debug("conntrack sysctls not all read; their series are left out", zap.Error(err))
		}
	}
	return s, err
}

// Result reads the table once: through netlink, or from procfs when
// netlink is refused.
func (c *Conntrack) Result(ctx context.Context) (*ConntrackResult, error) {
	if err := conntrack.CheckTable(c.procfs); err != nil {
		return nil, noData(err)
	}
	r, err := conntrack.ReadNetlink(ctx, c.target)
	if err != nil {
		if !c.target.IsOwn() || !conntrack.Refused(err) {
			return nil, fmt.Errorf("read conntrack statistics over netlink: %w", err)
		}
		c.fallbackOnce.Do(func() {
			c.logger.Info("conntrack netlink refused, reading procfs instead (grant CAP_NET_ADMIN to use netlink)", zap.Error(err))
		})
		r, err = conntrack.ReadProcfs(c.procfs)
		if err != nil {
			return nil, fmt.Errorf("read conntrack statistics from procfs: %w", err)
		}
	}
	res := &ConntrackResult{Reading: r}
	res.Settings, res.SettingsErr = c.readSettings()
	return res, nil
}

func (c *Conntrack) emitStats(ch chan<- prometheus.Metric, cpus []conntrack.CPUStats) {
	for s := range conntrack.NumStats {
		if c.cfg.PerCPU {
			for _, cpu := range cpus {
				if cpu.Present[s] {
					ch <- prometheus.MustNewConstMetric(c.stats[s], prometheus.CounterValue,
						float64(cpu.Counters[s]), strconv.Itoa(cpu.CPU))
				}
			}
			continue
		}
		var sum uint64
		present := false
		for _, cpu := range cpus {
			sum += cpu.Counters[s]
			present = present || cpu.Present[s]
		}
		if present {
			ch <- prometheus.MustNewConstMetric(c.stats[s], prometheus.CounterValue, float64(sum))
		}
	}
}
