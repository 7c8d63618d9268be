package collector

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/kubeproxy"
	"github.com/netinspect/netinspect/source/iptables"
	"github.com/netinspect/netinspect/source/netns"
	"github.com/netinspect/netinspect/source/nftables"
)

// IPTablesName is the iptables collector's name in flags and metrics.
const IPTablesName = "iptables"

// IPTablesConfig configures the iptables collector.
type IPTablesConfig struct {
	// RefreshInterval is how often the rules are listed (at most once per
	// interval, whatever the scrape rate).
	RefreshInterval time.Duration
	// Timeout bounds one listing (all the netlink dumps or iptables-save
	// runs of a refresh).
	Timeout time.Duration
	// Backend forces the iptables backend: "nft" or "legacy"; "" detects
	// it the way kubernetes-sigs/iptables-wrappers does.
	Backend string
	// ServiceSeries is ServiceSeriesDrift (no iptables_service_endpoints
	// series) or ServiceSeriesAll; "" is drift.
	ServiceSeries string
	// Drift is how kube-proxy drift is judged in iptables mode.
	Drift DriftConfig
}

// DefaultIPTablesConfig is the iptables collector's configuration when no
// flag says otherwise.
func DefaultIPTablesConfig() IPTablesConfig {
	return IPTablesConfig{RefreshInterval: defaultRulesRefreshInterval, Timeout: defaultRulesTimeout,
		ServiceSeries: ServiceSeriesDrift, Drift: DefaultDriftConfig()}
}

// withDefaults fills the unset fields from DefaultIPTablesConfig (a zero
// Drift is a valid one: no per-port series, no grace).
func (cfg IPTablesConfig) withDefaults() IPTablesConfig {
	withRuleRefreshDefaults(&cfg.RefreshInterval, &cfg.Timeout)
	if cfg.ServiceSeries == "" {
		cfg.ServiceSeries = ServiceSeriesDrift
	}
	return cfg
}

// IPTablesBackends are the values IPTablesConfig.Backend takes.
var IPTablesBackends = []string{"", iptables.BackendNFT, iptables.BackendLegacy}

// IPTables reports the rules kube-proxy programmed through iptables (IPv4
// and IPv6) and which mode kube-proxy runs in. A background refresher lists
// whole tables on an interval (the nft backend's from nf_tables over
// netlink, the legacy one's with iptables-save); scrapes read its latest
// snapshot and never wait on a listing.
type IPTables struct {
	logger *zap.Logger
	index  *kube.Index
	cfg    IPTablesConfig
	// drift judges kube-proxy drift in iptables mode (refresher only).
	drift *driftJudge
	// reader and nft are used only by the refresher goroutine.
	reader *iptables.Reader
	nft    nftables.Reader
	// fellBack is why the last listing read the nft backend with
	// iptables-nft-save instead of over netlink ("" when it did not).
	fellBack string

	ruleSource[*IPTablesResult]

	rules, endpoints *prometheus.Desc
}

// IPTablesResult is one listing, aggregated to the series it exports.
// Immutable once published.
type IPTablesResult struct {
	// Backend is the iptables backend listed (nft or legacy).
	Backend string
	// Mode is kube-proxy's mode (kubeproxy.Mode*).
	Mode     string
	Families []IPTablesFamily
	// Drift is the drift judgment of this listing: nil unless kube-proxy
	// runs in iptables mode and the Kubernetes index has synced.
	Drift *DriftResult
	// metrics are built by the refresher, so a scrape only sends them.
	metrics []prometheus.Metric
}

// IPTablesFamily is what one address family's listing holds.
type IPTablesFamily struct {
	// Family is "ipv4" or "ipv6".
	Family string
	// Rules are the rules per kube-proxy chain, hashed chains summed under
	// "<prefix>*", by table and chain.
	Rules []ChainRules
	// Endpoints are the KUBE-SEP chains each service port balances over.
	Endpoints []ServicePortCount
}

// ChainRules is the number of rules of a chain, or of the hashed chains of
// one prefix ("KUBE-SVC-*").
type ChainRules struct {
	Table, Chain string
	N            int
}

// NewIPTables returns the iptables collector. Its refresher starts with
// Start, or on the first Update.
func NewIPTables(cfg IPTablesConfig, deps Deps) (*IPTables, error) {
	cfg = cfg.withDefaults()
	if err := oneOf("iptables backend", cfg.Backend, IPTablesBackends); err != nil {
		return nil, err
	}
	if err := oneOf("iptables service-series mode", cfg.ServiceSeries, ServiceSeriesModes); err != nil {
		return nil, err
	}
	judge, err := newDriftJudge(cfg.Drift, cfg.RefreshInterval, deps.Index)
	if err != nil {
		return nil, err
	}
	c := &IPTables{
		logger: deps.logger(),
		index:  deps.Index,
		cfg:    cfg,
		drift:  judge,
		reader: &iptables.Reader{Backend: cfg.Backend, ProcFS: deps.Paths.ProcFS},
		nft:    nftables.Reader{ProcFS: deps.Paths.ProcFS},
		rules: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "iptables", "rules"),
			"Rules in kube-proxy's iptables chains, per chain; per-service and per-endpoint chains are summed per table under chain=\"KUBE-SVC-*\", \"KUBE-SVL-*\", \"KUBE-SEP-*\", \"KUBE-EXT-*\", \"KUBE-FW-*\".",
			[]string{"family", "table", "chain"}, nil),
		endpoints: identityDesc("iptables", "service_endpoints",
			"Endpoints (distinct KUBE-SEP chains) that kube-proxy's chains of a service port balance over on this node; 0 for a service port kube-proxy rejects for lack of endpoints.",
			servicePortIdentity, "family"),
	}
	c.ruleSource = newRuleSource(IPTablesName, cfg.RefreshInterval, cfg.Timeout, c.list)
	c.nextAfter(func(st *IPTablesResult) time.Duration { return st.Drift.nextRelist() })
	return c, nil
}

// setTarget makes the collector read the network namespace t (tests).
func (c *IPTables) setTarget(t netns.Target) {
	c.reader.Target, c.nft.Target = t, t
}

// Update implements Collector. It reads the latest snapshot only.
func (c *IPTables) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	_, err := c.serve(ch)
	return err
}

// Result is the latest listing, as Update serves it.
func (c *IPTables) Result(context.Context) (*IPTablesResult, error) { return c.latest() }

func (st *IPTablesResult) constMetrics() []prometheus.Metric {
	if st == nil {
		return nil
	}
	return st.metrics
}

// noteFallback logs at debug, once until the reason changes, that the nft
// backend was listed with iptables-nft-save because the netlink reader
// could not translate its rules exactly.
func (c *IPTables) noteFallback(err error) {
	reason := ""
	if err != nil {
		reason = err.Error()
	}
	if reason != "" && reason != c.fellBack {
		c.logger.Debug("iptables-nft rules listed with iptables-nft-save instead of netlink", zap.Error(err))
	}
	c.fellBack = reason
}

// list is one refresh: list every table of each family, detect the mode,
// aggregate.
func (c *IPTables) list(ctx context.Context) (*IPTablesResult, error) {
	start := time.Now()
	l, err := c.reader.Read(ctx)
	if err != nil {
		return nil, err
	}
	if l.Detected {
		c.logger.Info("iptables backend detected", zap.String("backend", l.Backend))
	}
	c.noteFallback(l.Fallback)
	st := &IPTablesResult{Backend: l.Backend}
	for _, f := range l.Families {
		st.Families = append(st.Families, c.aggregate(f.Name, f.Rules))
	}
	st.Mode = kubeproxy.DetectMode(modeEvidence(l, c.nft.HasTable(kubeproxy.NFTTable)))
	st.metrics = append(st.metrics, prometheus.MustNewConstMetric(kubeProxyModeDesc, prometheus.GaugeValue, 1, st.Mode))
	for _, f := range st.Families {
		for _, r := range f.Rules {
			st.metrics = append(st.metrics, prometheus.MustNewConstMetric(c.rules, prometheus.GaugeValue, float64(r.N), f.Family, r.Table, r.Chain))
		}
		if c.cfg.ServiceSeries != ServiceSeriesAll {
			continue
		}
		for _, e := range f.Endpoints {
			st.metrics = append(st.metrics, prometheus.MustNewConstMetric(c.endpoints, prometheus.GaugeValue, float64(e.N), servicePortValues(e.ServicePortRef, f.Family)...))
		}
	}
	if st.Mode == kubeproxy.ModeIPTables {
		var dm []prometheus.Metric
		st.Drift, dm = c.drift.judge(st.Mode, start, time.Since(start), func(e *kubeproxy.Expectation) []kubeproxy.Comparison {
			var cmps []kubeproxy.Comparison
			for _, f := range l.Families {
				fam, ok := familyOf(f.Name)
				// A family without KUBE-SERVICES has no kube-proxy proxier
				// (single-stack kube-proxy on a dual-stack cluster): not
				// judged.
				if nat := f.Rules.Table("nat"); ok && nat != nil {
					if _, kp := nat.Chains[kubeproxy.ChainServices]; kp {
						cmps = append(cmps, e.CompareIPTables(fam, f.Rules.KubeProxyListing()))
					}
				}
			}
			return cmps
		})
		st.metrics = append(st.metrics, dm...)
	}
	return st, nil
}

// aggregate turns one family's listing into series.
func (c *IPTables) aggregate(family string, rs *iptables.Ruleset) IPTablesFamily {
	f := IPTablesFamily{Family: family}
	var hashIndex map[string]kube.ServicePortRef
	for _, t := range rs.Tables {
		sums := map[string]int{}
		for chain, n := range t.Chains {
			if prefix, _, ok := kubeproxy.HashedChain(chain); ok {
				sums[prefix] += n
				continue
			}
			if strings.HasPrefix(chain, "KUBE-") {
				f.Rules = append(f.Rules, ChainRules{t.Name, chain, n})
			}
		}
		if t.Name == "nat" || len(sums) > 0 {
			for _, p := range kubeproxy.HashedPrefixes {
				f.Rules = append(f.Rules, ChainRules{t.Name, p + "*", sums[p]})
			}
		}

		eps := newServicePortCounts(c.index)
		named := map[string]bool{}
		for hash, sc := range t.Services {
			if !sc.HasSVC && !sc.HasSVL {
				continue
			}
			var ref kube.ServicePortRef
			if ns, name, port, ok := kubeproxy.SplitServicePortName(sc.PortName); ok {
				named[sc.PortName] = true
				// The port number of an unnamed port comes from the rule
				// kube-proxy wrote for the cluster IP.
				ref = eps.ref(ns, name, port, sc.Port)
			} else {
				// kube-proxy dropped the comments: recompute its chain
				// names from the services the index knows.
				if hashIndex == nil {
					hashIndex = c.serviceHashes()
				}
				ref = hashIndex[hash]
			}
			eps.add(ref, len(sc.Endpoints))
		}
		for name, number := range t.NoEndpoints {
			if named[name] {
				continue
			}
			ns, svc, port, _ := kubeproxy.SplitServicePortName(name)
			eps.present(eps.ref(ns, svc, port, number))
		}
		f.Endpoints = append(f.Endpoints, eps.sorted()...)
	}
	sort.Slice(f.Rules, func(i, j int) bool {
		a, b := f.Rules[i], f.Rules[j]
		if a.Table != b.Table {
			return a.Table < b.Table
		}
		return a.Chain < b.Chain
	})
	sortServicePortCounts(f.Endpoints)
	return f
}

// serviceHashes maps kube-proxy's service-port chain hash of every service
// port in the index to that port.
func (c *IPTables) serviceHashes() map[string]kube.ServicePortRef {
	out := map[string]kube.ServicePortRef{}
	for _, s := range c.index.Services() {
		for _, p := range s.Ports {
			port := p.Name
			if port == "" {
				port = strconv.Itoa(int(p.Port))
			}
			h := kubeproxy.PortProtoHash(kubeproxy.ServicePortName(s.Namespace, s.Name, p.Name), strings.ToLower(p.Protocol))
			out[h] = kube.ServicePortRef{Namespace: s.Namespace, Service: s.Name, Port: port}
		}
	}
	return out
}
