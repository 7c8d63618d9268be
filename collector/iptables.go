package collector

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/collector/rules"
	"github.com/netinspect/netinspect/kube"
)

// IPTablesName is the iptables collector's name in flags and metrics.
const IPTablesName = "iptables"

// Values of kube_proxy_mode_info's mode label.
const (
	ModeIPTables = "iptables"
	ModeNFTables = "nftables"
	ModeIPVS     = "ipvs"
	ModeNone     = "none"
)

// IPTablesConfig configures the iptables collector.
type IPTablesConfig struct {
	// RefreshInterval is how often the rules are listed (at most once per
	// interval, whatever the scrape rate).
	RefreshInterval time.Duration
	// Timeout bounds one listing (all the iptables-save runs of a refresh).
	Timeout time.Duration
	// Backend forces the iptables backend: "nft" or "legacy"; "" detects
	// it the way kubernetes-sigs/iptables-wrappers does.
	Backend string
	// NetNSPath, when set, runs the listing commands inside that network
	// namespace (through nsenter) instead of the exporter's own. Tests use it.
	NetNSPath string
	// NetNS, when not 0, is an open file descriptor of the same namespace
	// for the netlink check of nftables mode. Tests use it.
	NetNS int
}

// IPTables reports the rules kube-proxy programmed through iptables (IPv4
// and IPv6) and which mode kube-proxy runs in. A background refresher lists
// whole tables with iptables-save on an interval; scrapes read its latest
// snapshot and never wait on a listing.
type IPTables struct {
	cfg    IPTablesConfig
	procfs string
	logger *zap.Logger
	index  *kube.Index

	*ruleSource[*iptablesState]

	// backend is the detected backend, reused until its hint chains vanish;
	// only the refresher goroutine touches it.
	backend string

	rules, endpoints, mode *prometheus.Desc
}

// NewIPTables returns the iptables collector. Its refresher starts with
// Start, or on the first Update.
func NewIPTables(cfg IPTablesConfig, deps Deps) *IPTables {
	c := &IPTables{
		cfg:    cfg,
		procfs: deps.Paths.ProcFS,
		logger: deps.Logger,
		index:  deps.Index,
		rules: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "iptables", "rules"),
			"Rules in kube-proxy's iptables chains, per chain; per-service and per-endpoint chains are summed per table under chain=\"KUBE-SVC-*\", \"KUBE-SVL-*\", \"KUBE-SEP-*\", \"KUBE-EXT-*\", \"KUBE-FW-*\".",
			[]string{"family", "table", "chain"}, nil),
		endpoints: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "iptables", "service_endpoints"),
			"Endpoints (distinct KUBE-SEP chains) that kube-proxy's chains of a service port balance over on this node; 0 for a service port kube-proxy rejects for lack of endpoints.",
			[]string{"family", "namespace", "service", "port"}, nil),
		mode: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "kube_proxy", "mode_info"),
			"The mode kube-proxy runs in on this node, detected from the rules present: iptables, nftables, ipvs, or none.",
			[]string{"mode"}, nil),
	}
	c.ruleSource = newRuleSource(IPTablesName, cfg.RefreshInterval, cfg.Timeout, c.list)
	return c
}

// Update implements Collector. It reads the latest snapshot only.
func (c *IPTables) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	_, err := c.serve(ch)
	return err
}

// constMetrics are the series a listing built, so a scrape only sends them.
func (st *iptablesState) constMetrics() []prometheus.Metric {
	if st == nil {
		return nil
	}
	return st.metrics
}

// iptablesState is one refresh, aggregated to the series it exports, so a
// scrape costs O(series). Immutable once published.
type iptablesState struct {
	backend  string
	mode     string
	families []iptablesFamily
	// metrics are built by the refresher, so a scrape only sends them.
	metrics []prometheus.Metric
}

type iptablesFamily struct {
	family    string
	rules     []chainRules
	endpoints []serviceEndpoints
}

type chainRules struct {
	table, chain string
	n            int
}

type serviceEndpoints struct {
	namespace, service, port string
	n                        int
}

// Backends of iptables 1.8 and the save commands of each, per family.
var iptablesSaveCommands = map[string][2]string{
	"nft":    {"iptables-nft-save", "ip6tables-nft-save"},
	"legacy": {"iptables-legacy-save", "ip6tables-legacy-save"},
	"":       {"iptables-save", "ip6tables-save"},
}

// list is one refresh: detect the backend, list every table of each family
// with one iptables-save run, parse and aggregate.
func (c *IPTables) list(ctx context.Context) (*iptablesState, error) {
	backend := c.cfg.Backend
	if backend == "" {
		backend = c.backend
	}
	if backend == "" {
		var err error
		if backend, err = c.detectBackend(ctx); err != nil {
			return nil, err
		}
	}
	st := &iptablesState{backend: backend}
	var natV4 *rules.IPTablesTable
	var filterTables []*rules.IPTablesTable
	hinted := false
	for i, family := range []string{"ipv4", "ipv6"} {
		bin, err := c.saveCommand(backend, i)
		if err != nil {
			if i == 1 {
				// No ip6tables-save: list IPv4 only.
				continue
			}
			return nil, err
		}
		out, err := c.run(ctx, bin)
		if err != nil {
			if i == 1 && isIP6Absent(err) {
				// A kernel without IPv6 netfilter: list IPv4 only.
				continue
			}
			return nil, fmt.Errorf("list %s rules with %s: %w", family, bin, err)
		}
		rs, err := rules.ParseIPTablesSave(out)
		if err != nil {
			return nil, fmt.Errorf("parse %s output: %w", bin, err)
		}
		if m := rs.Table("mangle"); m != nil && hasHint(m.Chains) {
			hinted = true
		}
		if nat := rs.Table("nat"); nat != nil && family == "ipv4" {
			natV4 = nat
		}
		if f := rs.Table("filter"); f != nil {
			filterTables = append(filterTables, f)
		}
		st.families = append(st.families, c.aggregate(family, rs))
	}
	if c.cfg.Backend == "" {
		if hinted {
			c.setBackend(backend)
		} else {
			// No hint chains (kube-proxy or kubelet gone or not yet
			// started): detect again next time.
			c.backend = ""
		}
	}
	st.mode = c.detectMode(natV4, filterTables)
	st.metrics = append(st.metrics, prometheus.MustNewConstMetric(c.mode, prometheus.GaugeValue, 1, st.mode))
	for _, f := range st.families {
		for _, r := range f.rules {
			st.metrics = append(st.metrics, prometheus.MustNewConstMetric(c.rules, prometheus.GaugeValue, float64(r.n), f.family, r.table, r.chain))
		}
		for _, e := range f.endpoints {
			st.metrics = append(st.metrics, prometheus.MustNewConstMetric(c.endpoints, prometheus.GaugeValue, float64(e.n), f.family, e.namespace, e.service, e.port))
		}
	}
	return st, nil
}

func (c *IPTables) setBackend(b string) {
	if c.backend != b {
		c.logger.Info("iptables backend detected", zap.String("backend", b))
	}
	c.backend = b
}

// hasHint reports whether a mangle table holds one of the chains that
// kubelet (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY) or kube-proxy
// (KUBE-PROXY-CANARY) create in the backend they use.
func hasHint(chains map[string]int) bool {
	for _, h := range []string{"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY", "KUBE-PROXY-CANARY"} {
		if _, ok := chains[h]; ok {
			return true
		}
	}
	return false
}

// detectBackend decides between iptables-nft and iptables-legacy as
// kubernetes-sigs/iptables-wrappers does: the backend holding kubelet's or
// kube-proxy's hint chains in the mangle table wins (nft first); without
// hints, the one with more rules; nft when both are empty.
//
// The legacy backend is listed without -t: iptables-legacy-save then
// lists only the tables in /proc/net/ip_tables_names, so it cannot make the
// kernel load a table module.
func (c *IPTables) detectBackend(ctx context.Context) (string, error) {
	nftOK := c.nfTablesUsable()
	nftBin, nftErr := exec.LookPath("iptables-nft-save")
	legBin, legErr := exec.LookPath("iptables-legacy-save")
	if nftErr != nil && legErr != nil {
		if _, err := exec.LookPath("iptables-save"); err != nil {
			return "", fmt.Errorf("no iptables-save on PATH: %w", ErrNoData)
		}
		return "", nil
	}
	var nftRules, legRules int
	if nftErr == nil && nftOK {
		if out, err := c.run(ctx, nftBin, "-t", "mangle"); err == nil {
			if rs, err := rules.ParseIPTablesSave(out); err == nil {
				if m := rs.Table("mangle"); m != nil && hasHint(m.Chains) {
					return "nft", nil
				}
			}
		}
	}
	if legErr == nil {
		if out, err := c.run(ctx, legBin); err == nil {
			if rs, err := rules.ParseIPTablesSave(out); err == nil {
				if m := rs.Table("mangle"); m != nil && hasHint(m.Chains) {
					return "legacy", nil
				}
				legRules = countRules(rs)
			}
		}
	}
	if nftErr != nil || !nftOK {
		// Without nf_tables loaded nothing uses the nft backend, and
		// listing it would load the module.
		return "legacy", nil
	}
	if legRules > 0 {
		if out, err := c.run(ctx, nftBin); err == nil {
			if rs, err := rules.ParseIPTablesSave(out); err == nil {
				nftRules = countRules(rs)
			}
		}
	}
	if legRules > nftRules {
		return "legacy", nil
	}
	return "nft", nil
}

func countRules(rs *rules.IPTablesRuleset) int {
	n := 0
	for _, t := range rs.Tables {
		for _, r := range t.Chains {
			n += r
		}
	}
	return n
}

// nfTablesUsable reports whether asking nf_tables over netlink cannot make
// the kernel load a module: the kernel has no module support (no
// /proc/modules), or nf_tables is already loaded.
func (c *IPTables) nfTablesUsable() bool {
	return nfTablesLoaded(c.procfs)
}

func nfTablesLoaded(procfs string) bool {
	mods, err := os.ReadFile(filepath.Join(procfs, "modules"))
	if err != nil {
		return os.IsNotExist(err)
	}
	return bytes.HasPrefix(mods, []byte("nf_tables ")) || bytes.Contains(mods, []byte("\nnf_tables "))
}

func (c *IPTables) saveCommand(backend string, family int) (string, error) {
	name := iptablesSaveCommands[backend][family]
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	// Distributions without the -nft/-legacy names ship only one backend.
	if p, err2 := exec.LookPath(iptablesSaveCommands[""][family]); err2 == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not on PATH: %w", name, ErrNoData)
}

// run runs a listing command, inside cfg.NetNSPath when set. iptables-save
// takes no xtables lock (only writers do), so it needs no -w; the context
// bounds it instead.
func (c *IPTables) run(ctx context.Context, bin string, args ...string) ([]byte, error) {
	argv := append([]string{bin}, args...)
	if c.cfg.NetNSPath != "" {
		argv = append([]string{"nsenter", "--net=" + c.cfg.NetNSPath, "--"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", strings.Join(argv, " "), ctx.Err())
		}
		return nil, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// isIP6Absent reports whether ip6tables-save failed because the kernel has
// no IPv6 netfilter tables.
func isIP6Absent(err error) bool {
	s := err.Error()
	return strings.Contains(s, "Address family not supported") || strings.Contains(s, "ip6_tables_names")
}

// detectMode decides kube-proxy's mode from what is on the node. kube-proxy
// removes the other modes' rules when it starts (platformCleanup), so at
// most one is present, except briefly during a switch.
func (c *IPTables) detectMode(natV4 *rules.IPTablesTable, filters []*rules.IPTablesTable) string {
	if c.nfTablesUsable() && c.hasKubeProxyNFTable() {
		return ModeNFTables
	}
	for _, f := range filters {
		if _, ok := f.Chains["KUBE-IPVS-FILTER"]; ok {
			return ModeIPVS
		}
	}
	if natV4 != nil {
		if natV4.SetMatches > 0 {
			return ModeIPVS
		}
		if _, ok := natV4.Chains["KUBE-SERVICES"]; ok {
			return ModeIPTables
		}
	}
	return ModeNone
}

func (c *IPTables) hasKubeProxyNFTable() bool {
	conn, err := newNFTConn(c.cfg.NetNS)
	if err != nil {
		return false
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		ts, err := conn.ListTablesOfFamily(fam)
		if err != nil {
			continue
		}
		for _, t := range ts {
			if t.Name == nftKubeProxyTable {
				return true
			}
		}
	}
	return false
}

// aggregate turns one family's listing into series.
func (c *IPTables) aggregate(family string, rs *rules.IPTablesRuleset) iptablesFamily {
	f := iptablesFamily{family: family}
	var hashIndex map[string]kube.ServicePortRef
	var unnamedFromIndex map[[2]string]string
	// unnamedPort is the port label of an unnamed service port: its number,
	// from the rule kube-proxy wrote for the cluster IP, else from the index
	// (a Service with an unnamed port has only that port); "" when unknown.
	unnamedPort := func(ns, svc string, fromRule int) string {
		if fromRule > 0 {
			return strconv.Itoa(fromRule)
		}
		if unnamedFromIndex == nil {
			unnamedFromIndex = unnamedIndexPorts(c.index)
		}
		return unnamedFromIndex[[2]string{ns, svc}]
	}
	for _, t := range rs.Tables {
		sums := map[string]int{}
		for chain, n := range t.Chains {
			if prefix, _, ok := rules.HashedChain(chain); ok {
				sums[prefix] += n
				continue
			}
			if strings.HasPrefix(chain, "KUBE-") {
				f.rules = append(f.rules, chainRules{t.Name, chain, n})
			}
		}
		if t.Name == "nat" || len(sums) > 0 {
			for _, p := range rules.HashedPrefixes {
				f.rules = append(f.rules, chainRules{t.Name, p + "*", sums[p]})
			}
		}

		eps := map[serviceEndpoints]int{}
		named := map[string]bool{}
		for hash, sc := range t.Services {
			if !sc.HasSVC && !sc.HasSVL {
				continue
			}
			var ref kube.ServicePortRef
			if ns, name, port, ok := rules.SplitServicePortName(sc.PortName); ok {
				named[sc.PortName] = true
				if port == "" {
					port = unnamedPort(ns, name, sc.Port)
				}
				ref = kube.ServicePortRef{Namespace: ns, Service: name, Port: port}
			} else {
				// kube-proxy dropped the comments: recompute its chain
				// names from the services the index knows.
				if hashIndex == nil {
					hashIndex = c.serviceHashes()
				}
				ref = hashIndex[hash]
			}
			eps[serviceEndpoints{namespace: ref.Namespace, service: ref.Service, port: ref.Port}] += len(sc.Endpoints)
		}
		for name, number := range t.NoEndpoints {
			if named[name] {
				continue
			}
			ns, svc, port, _ := rules.SplitServicePortName(name)
			if port == "" {
				port = unnamedPort(ns, svc, number)
			}
			k := serviceEndpoints{namespace: ns, service: svc, port: port}
			if _, ok := eps[k]; !ok {
				eps[k] = 0
			}
		}
		for k, n := range eps {
			k.n = n
			f.endpoints = append(f.endpoints, k)
		}
	}
	sort.Slice(f.rules, func(i, j int) bool {
		a, b := f.rules[i], f.rules[j]
		if a.table != b.table {
			return a.table < b.table
		}
		return a.chain < b.chain
	})
	sort.Slice(f.endpoints, func(i, j int) bool {
		a, b := f.endpoints[i], f.endpoints[j]
		if a.namespace != b.namespace {
			return a.namespace < b.namespace
		}
		if a.service != b.service {
			return a.service < b.service
		}
		return a.port < b.port
	})
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
			h := rules.PortProtoHash(rules.ServicePortName(s.Namespace, s.Name, p.Name), strings.ToLower(p.Protocol))
			out[h] = kube.ServicePortRef{Namespace: s.Namespace, Service: s.Name, Port: port}
		}
	}
	return out
}

var (
	_ Starter = (*IPTables)(nil)
	_ Starter = (*NFTables)(nil)
)
