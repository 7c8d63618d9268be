package collector

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/kubeproxy"
	"github.com/netinspect/netinspect/source"
	"github.com/netinspect/netinspect/source/iptables"
	"github.com/netinspect/netinspect/source/netns"
	"github.com/netinspect/netinspect/source/nftables"
)

// NFTablesName is the nftables collector's name in flags and metrics.
const NFTablesName = "nftables"

// NFTablesConfig configures the nftables collector.
type NFTablesConfig struct {
	// RefreshInterval is how often the table is listed.
	RefreshInterval time.Duration
	// Timeout bounds one listing.
	Timeout time.Duration
	// KubeProxyMode makes the collector report kube_proxy_mode_info, which
	// the iptables collector reports when it runs: the binary sets it when
	// that collector is off. Without kube-proxy's nftables table the mode
	// is then detected from an iptables-save listing as the iptables
	// collector does.
	KubeProxyMode bool
	// ServiceSeries is ServiceSeriesDrift (no nftables_service_endpoints
	// series) or ServiceSeriesAll; "" is drift.
	ServiceSeries string
	// Drift is how kube-proxy drift is judged in nftables mode.
	Drift DriftConfig
}

// DefaultNFTablesConfig is the nftables collector's configuration when no
// flag says otherwise.
func DefaultNFTablesConfig() NFTablesConfig {
	return NFTablesConfig{RefreshInterval: defaultRulesRefreshInterval, Timeout: defaultRulesTimeout,
		ServiceSeries: ServiceSeriesDrift, Drift: DefaultDriftConfig()}
}

// withDefaults fills the unset fields from DefaultNFTablesConfig (a zero
// Drift is a valid one: no per-port series, no grace).
func (cfg NFTablesConfig) withDefaults() NFTablesConfig {
	withRuleRefreshDefaults(&cfg.RefreshInterval, &cfg.Timeout)
	if cfg.ServiceSeries == "" {
		cfg.ServiceSeries = ServiceSeriesDrift
	}
	return cfg
}

// NFTables reports what kube-proxy's nftables mode programmed in the tables
// "ip kube-proxy" and "ip6 kube-proxy", read over netlink (no nft exec,
// whose text rendering dominates the cost of a listing). A background
// refresher lists on an interval; scrapes read its latest snapshot.
type NFTables struct {
	cfg   NFTablesConfig
	index *kube.Index
	// drift judges kube-proxy drift in nftables mode (refresher only).
	drift *driftJudge
	// reader and ipt are used only by the refresher goroutine; ipt only
	// with cfg.KubeProxyMode.
	reader nftables.Reader
	ipt    *iptables.Reader

	ruleSource[*NFTablesResult]

	mapElements, chains, rules, endpoints *prometheus.Desc
}

// NFTablesResult is one listing of kube-proxy's tables, aggregated to the
// series it exports. Immutable once published.
type NFTablesResult struct {
	// Families are the families that have kube-proxy's table.
	Families []NFTablesFamily
	// Mode is kube-proxy's mode when the collector reports it, else "".
	Mode string
	// Drift is the drift judgment of this listing: nil without kube-proxy's
	// table or until the Kubernetes index has synced.
	Drift *DriftResult
	// metrics are built by the refresher, so a scrape only sends them.
	metrics []prometheus.Metric
}

// NFTablesFamily is what kube-proxy's table of one family holds.
type NFTablesFamily struct {
	// Family is "ipv4" or "ipv6".
	Family string
	// Maps are the elements of each named set and map.
	Maps []NFTablesMap
	// Chains counts the chains by kind (kubeproxy.NFTKind*).
	Chains map[string]int
	// Rules is the number of rules of the table.
	Rules int
	// Endpoints are those each service port's chain balances over.
	Endpoints []ServicePortCount
}

// NFTablesMap is a set or map and its number of elements.
type NFTablesMap struct {
	Name string
	N    int
}

// NewNFTables returns the nftables collector. Its refresher starts with
// Start, or on the first Update.
func NewNFTables(cfg NFTablesConfig, deps Deps) (*NFTables, error) {
	cfg = cfg.withDefaults()
	if err := oneOf("nftables service-series mode", cfg.ServiceSeries, ServiceSeriesModes); err != nil {
		return nil, err
	}
	judge, err := newDriftJudge(cfg.Drift, cfg.RefreshInterval, deps.Index)
	if err != nil {
		return nil, err
	}
	c := &NFTables{
		cfg:   cfg,
		index: deps.Index,
		drift: judge,
		reader: nftables.Reader{ProcFS: deps.Paths.ProcFS, SkipSet: func(name string) bool {
			// Per-endpoint session affinity sets: one per endpoint.
			return strings.HasPrefix(name, kubeproxy.NFTAffinityPrefix)
		}},
		mapElements: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "nftables", "map_elements"),
			"Elements of each set and map of kube-proxy's nftables table (service-ips: service IP/port pairs reachable; service-nodeports; no-endpoint-services...), without per-endpoint affinity sets.",
			[]string{"family", "table", "map"}, nil),
		chains: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "nftables", "chains"),
			"Chains of kube-proxy's nftables table by kind: service, local, external, endpoint, firewall (per service port or endpoint), other (fixed chains).",
			[]string{"family", "table", "kind"}, nil),
		rules: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "nftables", "rules"),
			"Rules in kube-proxy's nftables table.",
			[]string{"family", "table"}, nil),
		endpoints: identityDesc("nftables", "service_endpoints",
			"Endpoints the service chain of a service port balances over in kube-proxy's nftables table (numgen modulus, or 1 for a single dnat); 0 for a service port in no-endpoint-services.",
			servicePortIdentity, "family"),
	}
	if cfg.KubeProxyMode {
		c.ipt = &iptables.Reader{ProcFS: deps.Paths.ProcFS}
	}
	if deps.Index != nil {
		// Drift needs where each per-service chain sends packets: the
		// anonymous maps of its DNATs and verdicts (one request each),
		// except the service chains' maps whose gotos the chain names
		// tell (nftTargets).
		c.reader.Targets = nftTargets
		// and the DNAT maps read once stay known while their rules stay.
		c.reader.Cache = &nftables.TargetCache{}
	}
	c.ruleSource = newRuleSource(NFTablesName, cfg.RefreshInterval, cfg.Timeout, c.list)
	c.nextAfter(func(st *NFTablesResult) time.Duration { return st.Drift.nextRelist() })
	return c, nil
}

// setTarget makes the collector read the network namespace t (tests).
func (c *NFTables) setTarget(t netns.Target) {
	c.reader.Target = t
	if c.ipt != nil {
		c.ipt.Target = t
	}
}

// Update implements Collector. It reads the latest snapshot only.
func (c *NFTables) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	st, err := c.serve(ch)
	if err == nil && st != nil && len(st.Families) == 0 {
		return errNoNFTable
	}
	return err
}

var errNoNFTable = fmt.Errorf("no table %s in family ip or ip6 (kube-proxy is not in nftables mode): %w", kubeproxy.NFTTable, ErrNoData)

// Result is the latest listing, as Update serves it.
func (c *NFTables) Result(context.Context) (*NFTablesResult, error) {
	st, err := c.latest()
	if err == nil && st != nil && len(st.Families) == 0 {
		return st, errNoNFTable
	}
	return st, err
}

func (st *NFTablesResult) constMetrics() []prometheus.Metric {
	if st == nil {
		return nil
	}
	return st.metrics
}

// list reads both families' kube-proxy tables.
func (c *NFTables) list(ctx context.Context) (*NFTablesResult, error) {
	start := time.Now()
	tables, err := c.reader.Read(ctx, kubeproxy.NFTTable)
	if err != nil && !(c.cfg.KubeProxyMode && errors.Is(err, source.ErrAbsent)) {
		return nil, err
	}
	st := &NFTablesResult{}
	for _, t := range tables {
		st.Families = append(st.Families, c.aggregate(t))
	}
	if c.cfg.KubeProxyMode {
		if st.Mode, err = c.mode(ctx, len(tables) > 0); err != nil {
			return nil, err
		}
		st.metrics = append(st.metrics, prometheus.MustNewConstMetric(kubeProxyModeDesc, prometheus.GaugeValue, 1, st.Mode))
	}
	for _, f := range st.Families {
		for _, m := range f.Maps {
			st.metrics = append(st.metrics, prometheus.MustNewConstMetric(c.mapElements, prometheus.GaugeValue, float64(m.N), f.Family, kubeproxy.NFTTable, m.Name))
		}
		for _, kind := range kubeproxy.NFTChainKinds {
			st.metrics = append(st.metrics, prometheus.MustNewConstMetric(c.chains, prometheus.GaugeValue, float64(f.Chains[kind]), f.Family, kubeproxy.NFTTable, kind))
		}
		st.metrics = append(st.metrics, prometheus.MustNewConstMetric(c.rules, prometheus.GaugeValue, float64(f.Rules), f.Family, kubeproxy.NFTTable))
		if c.cfg.ServiceSeries != ServiceSeriesAll {
			continue
		}
		for _, e := range f.Endpoints {
			st.metrics = append(st.metrics, prometheus.MustNewConstMetric(c.endpoints, prometheus.GaugeValue, float64(e.N), servicePortValues(e.ServicePortRef, f.Family)...))
		}
	}
	if len(tables) > 0 {
		var dm []prometheus.Metric
		st.Drift, dm = c.drift.judge(kubeproxy.ModeNFTables, start, time.Since(start), func(e *kubeproxy.Expectation) []kubeproxy.Comparison {
			var cmps []kubeproxy.Comparison
			for i := range tables {
				if fam, ok := familyOf(tables[i].Family); ok {
					cmps = append(cmps, e.CompareNFTables(fam, nftListing(&tables[i])))
				}
			}
			return cmps
		})
		st.metrics = append(st.metrics, dm...)
	}
	return st, nil
}

// nftListing is what kube-proxy's table of one family holds of its
// per-service rules, for the drift comparison.
func nftListing(t *nftables.Table) *kubeproxy.NFTablesListing {
	l := &kubeproxy.NFTablesListing{
		ServiceIPs: map[kubeproxy.NFTAddrKey]string{}, NodePorts: map[kubeproxy.NFTPortKey]string{},
		NoEndpoints: map[kubeproxy.NFTAddrKey]kubeproxy.NFTNoEndpoint{}, NoEndpointNodePorts: map[kubeproxy.NFTPortKey]kubeproxy.NFTNoEndpoint{},
		Chains: map[string]kubeproxy.NFTChainTargets{},
	}
	for _, s := range t.Sets {
		for _, e := range s.Elements {
			switch s.Name {
			case kubeproxy.NFTServiceIPs, kubeproxy.NFTNoEndpointServices:
				a, proto, port, ok := nftables.ConcatAddrProtoPort(e.Key, t.Family)
				if !ok {
					continue
				}
				k := kubeproxy.NFTAddrKey{Addr: a, Protocol: protocolNames[proto], Port: port}
				if s.Name == kubeproxy.NFTServiceIPs {
					l.ServiceIPs[k] = e.Chain
				} else {
					l.NoEndpoints[k] = kubeproxy.NFTNoEndpointFromVerdict(e.Verdict, e.Chain, e.Comment)
				}
			case kubeproxy.NFTServiceNodePorts, kubeproxy.NFTNoEndpointNodePorts:
				proto, port, ok := nftables.ConcatProtoPort(e.Key)
				if !ok {
					continue
				}
				k := kubeproxy.NFTPortKey{Protocol: protocolNames[proto], Port: port}
				if s.Name == kubeproxy.NFTServiceNodePorts {
					l.NodePorts[k] = e.Chain
				} else {
					l.NoEndpointNodePorts[k] = kubeproxy.NFTNoEndpointFromVerdict(e.Verdict, e.Chain, e.Comment)
				}
			}
		}
	}
	// Chains without rules (flushed by kube-proxy, deleted later) are
	// listed too, with no targets.
	eps := kubeproxy.NFTEndpointChains(t.Chains)
	for _, name := range t.Chains {
		if kubeproxy.IsNFTServiceChain(name) {
			r := t.ChainRules[name]
			gotos := r.Gotos
			if g, ok := kubeproxy.NFTServiceGotosByName(name, r.Modulus, len(r.VerdictMaps), eps); ok {
				gotos = append(slices.Clone(r.Gotos), g...)
			}
			l.Chains[name] = kubeproxy.NFTChainTargets{DNAT: r.DNAT, Gotos: gotos}
		}
	}
	return l
}

// nftTargets selects the chains of kube-proxy's table whose anonymous maps
// the reader resolves: every per-service chain's but those of the service
// chains whose verdict map the endpoint chains' names give away
// (kubeproxy.NFTServiceGotosByName), which are most of them. Reading a map
// costs a netlink request in which the kernel walks the table's sets, so
// resolving all 10,000 of a large cluster took longer than `nft list
// ruleset` (BenchmarkRealKubeProxyScale).
func nftTargets(t *nftables.Table) func(chain string) bool {
	eps := kubeproxy.NFTEndpointChains(t.Chains)
	return func(chain string) bool {
		if !kubeproxy.IsNFTServiceChain(chain) {
			return false
		}
		r := t.ChainRules[chain]
		_, byName := kubeproxy.NFTServiceGotosByName(chain, r.Modulus, len(r.VerdictMaps), eps)
		return !byName
	}
}

// mode detects kube-proxy's mode: nftables when its table exists, else from
// the iptables rules.
func (c *NFTables) mode(ctx context.Context, nftTable bool) (string, error) {
	if nftTable {
		return kubeproxy.ModeNFTables, nil
	}
	l, err := c.ipt.Read(ctx)
	if errors.Is(err, source.ErrAbsent) {
		// No iptables-save: nothing but nftables could tell a mode.
		l, err = nil, nil
	}
	if err != nil {
		return "", fmt.Errorf("list iptables rules for kube-proxy's mode: %w", err)
	}
	return kubeproxy.DetectMode(modeEvidence(l, false)), nil
}

// aggregate turns one family's table into series.
func (c *NFTables) aggregate(t nftables.Table) NFTablesFamily {
	f := NFTablesFamily{Family: t.Family, Chains: map[string]int{}, Rules: t.Rules}
	// Each service port's endpoints, by "ns/name/proto/port"; a service
	// chain without rules that balance has 0.
	endpoints := map[string]int{}
	for _, name := range t.Chains {
		p := kubeproxy.ParseNFTChainName(name)
		f.Chains[p.Kind]++
		if p.Kind == kubeproxy.NFTKindService && p.ServicePort != "" {
			endpoints[p.ServicePort] += 0
		}
	}
	// Port numbers of unnamed service ports, from the map elements that
	// lead to their chains; and the service ports without endpoints.
	unnamedPorts := map[string]int{}
	noEndpoints := map[string]int{}
	for _, s := range t.Sets {
		n := 0
		for _, e := range s.Elements {
			if e.IntervalEnd {
				continue
			}
			n++
			if s.Name != kubeproxy.NFTServiceIPs && s.Name != kubeproxy.NFTNoEndpointServices {
				continue
			}
			port, hasPort := nftables.ConcatPort(e.Key, t.Family)
			switch {
			case s.Name == kubeproxy.NFTServiceIPs && e.Chain != "" && hasPort:
				if p := kubeproxy.ParseNFTChainName(e.Chain); strings.HasSuffix(p.ServicePort, "/") {
					unnamedPorts[p.ServicePort] = port
				}
			case s.Name == kubeproxy.NFTNoEndpointServices && e.Comment != "":
				if hasPort {
					noEndpoints[e.Comment] = port
				} else if _, ok := noEndpoints[e.Comment]; !ok {
					noEndpoints[e.Comment] = 0
				}
			}
		}
		f.Maps = append(f.Maps, NFTablesMap{s.Name, n})
	}
	sort.Slice(f.Maps, func(i, j int) bool { return f.Maps[i].Name < f.Maps[j].Name })

	// A service port's endpoints are those its service- chain balances
	// over; local- chains (traffic policy Local) hold a subset.
	for chain, r := range t.ChainRules {
		if p := kubeproxy.ParseNFTChainName(chain); p.Kind == kubeproxy.NFTKindService && p.ServicePort != "" {
			endpoints[p.ServicePort] = r.Endpoints()
		}
	}

	eps := newServicePortCounts(c.index)
	seen := map[string]bool{}
	for sp, n := range endpoints {
		ns, svc, _, port, ok := kubeproxy.SplitNFTServicePort(sp)
		if !ok {
			continue
		}
		seen[kubeproxy.ServicePortName(ns, svc, port)] = true
		eps.add(eps.ref(ns, svc, port, unnamedPorts[sp]), n)
	}
	for name, number := range noEndpoints {
		if seen[name] {
			continue
		}
		ns, svc, port, ok := kubeproxy.SplitServicePortName(name)
		if !ok {
			continue
		}
		eps.present(eps.ref(ns, svc, port, number))
	}
	f.Endpoints = eps.sorted()
	return f
}
