package collector

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/collector/rules"
	"github.com/netinspect/netinspect/kube"
)

// NFTablesName is the nftables collector's name in flags and metrics.
const NFTablesName = "nftables"

// nftKubeProxyTable is the table kube-proxy's nftables mode owns, in the
// ip and ip6 families (pkg/proxy/nftables/proxier.go).
const nftKubeProxyTable = "kube-proxy"

// NFTablesConfig configures the nftables collector.
type NFTablesConfig struct {
	// RefreshInterval is how often the table is listed.
	RefreshInterval time.Duration
	// Timeout bounds one listing.
	Timeout time.Duration
	// NetNS, when not 0, is an open file descriptor of the network namespace
	// to read instead of the exporter's own. Tests use it.
	NetNS int
}

// NFTables reports what kube-proxy's nftables mode programmed in the tables
// "ip kube-proxy" and "ip6 kube-proxy", read over netlink (no nft exec,
// whose text rendering dominates the cost of a listing). A background
// refresher lists on an interval; scrapes read its latest snapshot.
type NFTables struct {
	cfg    NFTablesConfig
	procfs string
	logger *zap.Logger
	index  *kube.Index

	*ruleSource[*nftState]

	mapElements, chains, rules, endpoints *prometheus.Desc
}

// NewNFTables returns the nftables collector. Its refresher starts with
// Start, or on the first Update.
func NewNFTables(cfg NFTablesConfig, deps Deps) *NFTables {
	c := &NFTables{
		cfg:    cfg,
		procfs: deps.Paths.ProcFS,
		logger: deps.Logger,
		index:  deps.Index,
		mapElements: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "nftables", "map_elements"),
			"Elements of each set and map of kube-proxy's nftables table (service-ips: service IP/port pairs reachable; service-nodeports; no-endpoint-services...), without per-endpoint affinity sets.",
			[]string{"family", "table", "map"}, nil),
		chains: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "nftables", "chains"),
			"Chains of kube-proxy's nftables table by kind: service, local, external, endpoint, firewall (per service port or endpoint), other (fixed chains).",
			[]string{"family", "table", "kind"}, nil),
		rules: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "nftables", "rules"),
			"Rules in kube-proxy's nftables table.",
			[]string{"family", "table"}, nil),
		endpoints: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "nftables", "service_endpoints"),
			"Endpoints the service chain of a service port balances over in kube-proxy's nftables table (numgen modulus, or 1 for a single dnat); 0 for a service port in no-endpoint-services.",
			[]string{"family", "namespace", "service", "port"}, nil),
	}
	c.ruleSource = newRuleSource(NFTablesName, cfg.RefreshInterval, cfg.Timeout, c.list)
	return c
}

// Update implements Collector. It reads the latest snapshot only.
func (c *NFTables) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	st, err := c.serve(ch)
	if err == nil && st != nil && len(st.families) == 0 {
		return fmt.Errorf("no table %s in family ip or ip6 (kube-proxy is not in nftables mode): %w", nftKubeProxyTable, ErrNoData)
	}
	return err
}

// constMetrics are the series a listing built, so a scrape only sends them.
func (st *nftState) constMetrics() []prometheus.Metric {
	if st == nil {
		return nil
	}
	return st.metrics
}

type nftState struct {
	families []nftFamily
	// metrics are built by the refresher, so a scrape only sends them.
	metrics []prometheus.Metric
}

type nftFamily struct {
	family    string
	maps      []nftMap
	chains    map[string]int
	rules     int
	endpoints []serviceEndpoints
}

type nftMap struct {
	name string
	n    int
}

func newNFTConn(netnsFD int, opts ...nftables.ConnOption) (*nftables.Conn, error) {
	if netnsFD != 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFD))
	}
	return nftables.New(opts...)
}

// list reads both families' kube-proxy tables over one netlink socket.
func (c *NFTables) list(ctx context.Context) (*nftState, error) {
	if !nfTablesLoaded(c.procfs) {
		// Asking nf_tables over netlink would make the kernel load it.
		return nil, fmt.Errorf("nf_tables module not loaded: %w", ErrNoData)
	}
	deadline, _ := ctx.Deadline()
	conn, err := newNFTConn(c.cfg.NetNS, nftables.AsLasting(), nftables.WithSockOptions(func(nc *netlink.Conn) error {
		if deadline.IsZero() {
			return nil
		}
		return nc.SetDeadline(deadline)
	}))
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	defer conn.CloseLasting()

	st := &nftState{}
	for _, fam := range []struct {
		f    nftables.TableFamily
		name string
	}{{nftables.TableFamilyIPv4, "ipv4"}, {nftables.TableFamilyIPv6, "ipv6"}} {
		tables, err := conn.ListTablesOfFamily(fam.f)
		if err != nil {
			return nil, fmt.Errorf("list %s nftables tables: %w", fam.name, err)
		}
		var table *nftables.Table
		for _, t := range tables {
			if t.Name == nftKubeProxyTable {
				table = t
			}
		}
		if table == nil {
			continue
		}
		f, err := c.listTable(ctx, conn, table, fam.name)
		if err != nil {
			return nil, err
		}
		st.families = append(st.families, f)
	}
	for _, f := range st.families {
		for _, m := range f.maps {
			st.metrics = append(st.metrics, prometheus.MustNewConstMetric(c.mapElements, prometheus.GaugeValue, float64(m.n), f.family, nftKubeProxyTable, m.name))
		}
		for _, kind := range rules.NFTChainKinds {
			st.metrics = append(st.metrics, prometheus.MustNewConstMetric(c.chains, prometheus.GaugeValue, float64(f.chains[kind]), f.family, nftKubeProxyTable, kind))
		}
		st.metrics = append(st.metrics, prometheus.MustNewConstMetric(c.rules, prometheus.GaugeValue, float64(f.rules), f.family, nftKubeProxyTable))
		for _, e := range f.endpoints {
			st.metrics = append(st.metrics, prometheus.MustNewConstMetric(c.endpoints, prometheus.GaugeValue, float64(e.n), f.family, e.namespace, e.service, e.port))
		}
	}
	return st, nil
}

func (c *NFTables) listTable(ctx context.Context, conn *nftables.Conn, table *nftables.Table, family string) (nftFamily, error) {
	f := nftFamily{family: family, chains: map[string]int{}}
	where := fmt.Sprintf("table %s %s", nftFamilyName(table.Family), table.Name)

	chains, err := conn.ListChainsOfTableFamily(table.Family)
	if err != nil {
		return f, fmt.Errorf("list chains of %s: %w", where, err)
	}
	endpoints := map[string]int{}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != table.Name {
			continue
		}
		p := rules.ParseNFTChainName(ch.Name)
		f.chains[p.Kind]++
		if p.Kind == rules.NFTKindService && p.ServicePort != "" {
			endpoints[p.ServicePort] += 0
		}
	}
	if err := ctx.Err(); err != nil {
		return f, err
	}

	sets, err := conn.GetSets(table)
	if err != nil {
		return f, fmt.Errorf("list sets of %s: %w", where, err)
	}
	// Port numbers of unnamed service ports, from the map elements that
	// lead to their chains; and the service ports without endpoints.
	unnamedPorts := map[string]int{}
	noEndpoints := map[string]int{}
	for _, s := range sets {
		if s.Anonymous || strings.HasPrefix(s.Name, "__") || strings.HasPrefix(s.Name, "affinity-") {
			// Anonymous sets are the literal maps of single rules (numgen
			// vmaps); affinity sets are per endpoint.
			continue
		}
		elems, err := conn.GetSetElements(s)
		if err != nil {
			return f, fmt.Errorf("list elements of set %s in %s: %w", s.Name, where, err)
		}
		n := 0
		for _, e := range elems {
			if e.IntervalEnd {
				continue
			}
			n++
			port, hasPort := elementPort(e.Key, table.Family, s.Name)
			switch {
			case s.Name == "service-ips" && e.VerdictData != nil && hasPort:
				if p := rules.ParseNFTChainName(e.VerdictData.Chain); strings.HasSuffix(p.ServicePort, "/") {
					unnamedPorts[p.ServicePort] = port
				}
			case s.Name == "no-endpoint-services" && e.Comment != "":
				if hasPort {
					noEndpoints[e.Comment] = port
				} else if _, ok := noEndpoints[e.Comment]; !ok {
					noEndpoints[e.Comment] = 0
				}
			}
		}
		f.maps = append(f.maps, nftMap{s.Name, n})
		if err := ctx.Err(); err != nil {
			return f, err
		}
	}
	sort.Slice(f.maps, func(i, j int) bool { return f.maps[i].name < f.maps[j].name })

	var chainRules map[string]nftChainRules
	f.rules, chainRules, err = nftRuleStats(ctx, c.cfg.NetNS, table)
	if err != nil {
		return f, fmt.Errorf("count rules of %s: %w", where, err)
	}
	// A service port's endpoints are those its service- chain balances
	// over; local- chains (traffic policy Local) hold a subset.
	for chain, r := range chainRules {
		if p := rules.ParseNFTChainName(chain); p.Kind == rules.NFTKindService && p.ServicePort != "" {
			endpoints[p.ServicePort] = r.endpoints()
		}
	}

	var unnamedFromIndex map[[2]string]string
	portLabel := func(ns, svc, port string, number int) string {
		if port != "" {
			return port
		}
		if number > 0 {
			return strconv.Itoa(number)
		}
		if unnamedFromIndex == nil {
			unnamedFromIndex = unnamedIndexPorts(c.index)
		}
		return unnamedFromIndex[[2]string{ns, svc}]
	}
	eps := map[serviceEndpoints]int{}
	seen := map[string]bool{}
	for sp, n := range endpoints {
		ns, svc, _, port, ok := rules.SplitNFTServicePort(sp)
		if !ok {
			continue
		}
		seen[rules.ServicePortName(ns, svc, port)] = true
		eps[serviceEndpoints{namespace: ns, service: svc, port: portLabel(ns, svc, port, unnamedPorts[sp])}] += n
	}
	for name, number := range noEndpoints {
		if seen[name] {
			continue
		}
		ns, svc, port, ok := rules.SplitServicePortName(name)
		if !ok {
			continue
		}
		k := serviceEndpoints{namespace: ns, service: svc, port: portLabel(ns, svc, port, number)}
		if _, ok := eps[k]; !ok {
			eps[k] = 0
		}
	}
	for k, n := range eps {
		k.n = n
		f.endpoints = append(f.endpoints, k)
	}
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
	return f, nil
}

func nftFamilyName(f nftables.TableFamily) string {
	if f == nftables.TableFamilyIPv6 {
		return "ip6"
	}
	return "ip"
}

// elementPort decodes the port of a "<addr> . inet_proto . inet_service"
// key (service-ips, no-endpoint-services): concatenated fields are each
// padded to 4 bytes, the port is big-endian.
func elementPort(key []byte, fam nftables.TableFamily, set string) (int, bool) {
	if set != "service-ips" && set != "no-endpoint-services" {
		return 0, false
	}
	addrLen := 4
	if fam == nftables.TableFamilyIPv6 {
		addrLen = 16
	}
	if len(key) != addrLen+8 {
		return 0, false
	}
	return int(binary.BigEndian.Uint16(key[addrLen+4:])), true
}

// unnamedIndexPorts maps each Service of the index to the number of its
// unnamed port (a Service with an unnamed port has only that one).
func unnamedIndexPorts(ix *kube.Index) map[[2]string]string {
	out := map[[2]string]string{}
	for _, s := range ix.Services() {
		for _, p := range s.Ports {
			if p.Name == "" {
				out[[2]string{s.Namespace, s.Name}] = strconv.Itoa(int(p.Port))
			}
		}
	}
	return out
}

// nftChainRules is what the rules of one per-service chain say about its
// endpoints.
type nftChainRules struct {
	// modulus is the largest "numgen random mod N" of the chain's rules:
	// kube-proxy balances over N endpoints with it.
	modulus uint32
	// nat is set when a rule DNATs (a service port with one endpoint is a
	// single "dnat to ip:port" without numgen).
	nat bool
}

// endpoints is the number of endpoints the chain balances over.
func (r nftChainRules) endpoints() int {
	switch {
	case r.modulus > 0:
		return int(r.modulus)
	case r.nat:
		return 1
	}
	return 0
}

// nftRuleStats counts the rules of a table with one netlink dump
// (NFT_MSG_GETRULE filtered by table) and, for per-service chains (names
// with a "/"), finds the numgen modulus and nat expressions. It walks the
// attributes itself: google/nftables lists rules one chain at a time and
// decodes every expression into objects.
//
// kube-proxy 1.37 puts a service's endpoints into its service chain
// ("dnat to numgen random mod N map { 0 : ip . port, ... }"); only
// endpoints with session affinity get endpoint- chains of their own.
func nftRuleStats(ctx context.Context, netnsFD int, table *nftables.Table) (int, map[string]nftChainRules, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFD})
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(deadline); err != nil {
			return 0, nil, err
		}
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(table.Name + "\x00")},
	})
	if err != nil {
		return 0, nil, err
	}
	// nfgenmsg: family, version, resource id.
	hdr := []byte{byte(table.Family), unix.NFNETLINK_V0, 0, 0}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append(hdr, attrs...),
	})
	if err != nil {
		return 0, nil, err
	}
	n := 0
	chains := map[string]nftChainRules{}
	for _, m := range msgs {
		if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWRULE) || len(m.Data) < 4 {
			continue
		}
		n++
		chain, stats, err := decodeNFTRule(m.Data[4:])
		if err != nil {
			return 0, nil, fmt.Errorf("decode rule: %w", err)
		}
		if !strings.Contains(chain, "/") {
			continue
		}
		cur := chains[chain]
		cur.modulus = max(cur.modulus, stats.modulus)
		cur.nat = cur.nat || stats.nat
		chains[chain] = cur
	}
	return n, chains, nil
}

// decodeNFTRule reads a rule's chain and, from its expressions, numgen
// moduli and nat (include/uapi/linux/netfilter/nf_tables.h).
func decodeNFTRule(b []byte) (string, nftChainRules, error) {
	var chain string
	var st nftChainRules
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "", st, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_CHAIN:
			chain = ad.String()
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					if list.Type() != unix.NFTA_LIST_ELEM {
						continue
					}
					list.Nested(func(e *netlink.AttributeDecoder) error {
						var name string
						var data []byte
						for e.Next() {
							switch e.Type() {
							case unix.NFTA_EXPR_NAME:
								name = e.String()
							case unix.NFTA_EXPR_DATA:
								data = e.Bytes()
							}
						}
						switch name {
						case "nat":
							st.nat = true
						case "numgen":
							nd, err := netlink.NewAttributeDecoder(data)
							if err != nil {
								return err
							}
							nd.ByteOrder = binary.BigEndian
							for nd.Next() {
								if nd.Type() == unix.NFTA_NG_MODULUS {
									st.modulus = max(st.modulus, nd.Uint32())
								}
							}
							return nd.Err()
						}
						return e.Err()
					})
				}
				return list.Err()
			})
		}
	}
	return chain, st, ad.Err()
}
