package collector

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
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

	refresher *rules.Refresher[*nftState]
	startOnce sync.Once
	stop      context.CancelFunc

	mapElements, chains, rules, endpoints, lastRefresh, refreshDuration *prometheus.Desc
}

// NewNFTables returns the nftables collector. Its refresher starts with
// Start, or on the first Update.
func NewNFTables(cfg NFTablesConfig, deps Deps) *NFTables {
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = 30 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Minute
	}
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
			"Endpoint chains kube-proxy's nftables table holds for a service port; 0 for a service port in no-endpoint-services.",
			[]string{"family", "namespace", "service", "port"}, nil),
		lastRefresh: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "rules", "last_refresh_timestamp_seconds"),
			"When the rules of the source were last listed successfully (Unix time).",
			[]string{"source"}, nil),
		refreshDuration: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "rules", "refresh_duration_seconds"),
			"How long the last successful listing of the source's rules took.",
			[]string{"source"}, nil),
	}
	c.refresher = rules.NewRefresher(cfg.RefreshInterval, cfg.Timeout, c.list)
	return c
}

// Start starts the background listing; it stops when ctx is done.
func (c *NFTables) Start(ctx context.Context) {
	c.startOnce.Do(func() {
		ctx, c.stop = context.WithCancel(ctx)
		c.refresher.Start(ctx)
	})
}

// Close stops the background listing and waits for it to end.
func (c *NFTables) Close() {
	c.startOnce.Do(func() {})
	if c.stop != nil {
		c.stop()
		<-c.refresher.Done()
	}
}

// Update implements Collector. It reads the latest snapshot only.
func (c *NFTables) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	c.Start(context.Background())
	c.refresher.Kick()
	s := c.refresher.Snapshot()
	if s == nil {
		return fmt.Errorf("first nftables listing not finished yet: %w", ErrNoData)
	}
	if !s.Time.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.lastRefresh, prometheus.GaugeValue, float64(s.Time.UnixNano())/1e9, NFTablesName)
		ch <- prometheus.MustNewConstMetric(c.refreshDuration, prometheus.GaugeValue, s.Duration.Seconds(), NFTablesName)
	}
	if st := s.Value; st != nil {
		for _, f := range st.families {
			for _, m := range f.maps {
				ch <- prometheus.MustNewConstMetric(c.mapElements, prometheus.GaugeValue, float64(m.n), f.family, nftKubeProxyTable, m.name)
			}
			for _, kind := range rules.NFTChainKinds {
				ch <- prometheus.MustNewConstMetric(c.chains, prometheus.GaugeValue, float64(f.chains[kind]), f.family, nftKubeProxyTable, kind)
			}
			ch <- prometheus.MustNewConstMetric(c.rules, prometheus.GaugeValue, float64(f.rules), f.family, nftKubeProxyTable)
			for _, e := range f.endpoints {
				ch <- prometheus.MustNewConstMetric(c.endpoints, prometheus.GaugeValue, float64(e.n), f.family, e.namespace, e.service, e.port)
			}
		}
	}
	if s.Err != nil {
		if errors.Is(s.Err, ErrNoData) {
			return s.Err
		}
		return fmt.Errorf("latest nftables listing failed (serving the one of %s): %w", s.Time.Format(time.RFC3339), s.Err)
	}
	if s.Value != nil && len(s.Value.families) == 0 {
		return fmt.Errorf("no table %s in family ip or ip6 (kube-proxy is not in nftables mode): %w", nftKubeProxyTable, ErrNoData)
	}
	return nil
}

type nftState struct {
	families []nftFamily
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
		switch p.Kind {
		case rules.NFTKindEndpoint:
			if p.ServicePort != "" {
				endpoints[p.ServicePort]++
			}
		case rules.NFTKindService:
			if p.ServicePort != "" {
				endpoints[p.ServicePort] += 0
			}
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

	f.rules, err = countNFTRules(c.cfg.NetNS, table, ctx)
	if err != nil {
		return f, fmt.Errorf("count rules of %s: %w", where, err)
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
		ns, svc, proto, port, ok := rules.SplitNFTServicePort(sp)
		if !ok {
			continue
		}
		seen[rules.ServicePortName(ns, svc, port)] = true
		_ = proto
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

// countNFTRules counts the rules of a table with one netlink dump
// (NFT_MSG_GETRULE filtered by table), without decoding their expressions:
// google/nftables lists rules per chain only, and decodes every expression.
func countNFTRules(netnsFD int, table *nftables.Table, ctx context.Context) (int, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFD})
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(deadline); err != nil {
			return 0, err
		}
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(table.Name + "\x00")},
	})
	if err != nil {
		return 0, err
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
		return 0, err
	}
	n := 0
	for _, m := range msgs {
		if m.Header.Type == netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWRULE) {
			n++
		}
	}
	return n, nil
}
