package collector

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/kubeproxy"
	"github.com/netinspect/netinspect/source/ipvs"
	"github.com/netinspect/netinspect/source/links"
	"github.com/netinspect/netinspect/source/netns"
)

// IPVSName is the ipvs collector's name in flags and metrics.
const IPVSName = "ipvs"

// IPVSBackendLabels are the labels of the per-backend series, in order; the
// default of IPVSConfig.BackendLabels.
var IPVSBackendLabels = []string{"protocol", "address", "port", "backend_address", "backend_port", "namespace", "service", "pod"}

// IPVSConfig configures the ipvs collector.
type IPVSConfig struct {
	// Backends exports the per-backend series (active and inactive
	// connections, weight). Off, only the per-service series remain.
	Backends bool
	// BackendStats adds each backend's own counters (connections, packets,
	// bytes): five more series per backend, so off by default.
	BackendStats bool
	// BackendLabels are the labels kept on the per-backend series, a subset
	// of IPVSBackendLabels; backends that differ only in dropped labels are
	// summed into one series. Nil keeps them all.
	BackendLabels []string
	// ServiceSeries is ServiceSeriesDrift ("", the default: per-node
	// counts, and the per-virtual-server and per-backend series only of
	// the virtual servers without a usable backend) or ServiceSeriesAll
	// (every virtual server and backend, read at each scrape).
	ServiceSeries string
	// MaxNoBackendSeries caps, with ServiceSeriesDrift, the virtual
	// servers without a usable backend that get their own series (in
	// protocol, address and port order); all of them count in
	// ipvs_virtual_servers_no_backends.
	MaxNoBackendSeries int
	// RefreshInterval is how often the background listing runs (the
	// per-node counts, the no-backend series and drift); Timeout bounds it.
	RefreshInterval, Timeout time.Duration
	// Drift is how kube-proxy drift is judged in IPVS mode.
	Drift DriftConfig
}

// DefaultIPVSConfig is the ipvs collector's configuration when no flag says
// otherwise.
func DefaultIPVSConfig() IPVSConfig {
	return IPVSConfig{Backends: true, BackendLabels: slices.Clone(IPVSBackendLabels),
		ServiceSeries: ServiceSeriesDrift, MaxNoBackendSeries: defaultIPVSNoBackendSeries,
		RefreshInterval: defaultRulesRefreshInterval, Timeout: defaultRulesTimeout, Drift: DefaultDriftConfig()}
}

// defaultIPVSNoBackendSeries is the default of IPVSConfig.MaxNoBackendSeries.
const defaultIPVSNoBackendSeries = 50

// withDefaults fills the unset refresh fields and the service-series mode
// from DefaultIPVSConfig.
func (cfg IPVSConfig) withDefaults() IPVSConfig {
	withRuleRefreshDefaults(&cfg.RefreshInterval, &cfg.Timeout)
	if cfg.ServiceSeries == "" {
		cfg.ServiceSeries = ServiceSeriesDrift
	}
	return cfg
}

// ipvsDummy is the dummy interface kube-proxy's IPVS mode binds every
// service address to (pkg/proxy/ipvs/proxier.go defaultDummyDevice): its
// presence says kube-proxy runs in IPVS mode.
const ipvsDummy = "kube-ipvs0"

// IPVS reports the IPVS virtual servers of the exporter's network namespace
// and their backends, joined to the Kubernetes Service and backend pod, and
// judges kube-proxy drift in IPVS mode. A background refresher lists them
// on an interval for the per-node counts, the series of the virtual
// servers without a usable backend and drift; with ServiceSeriesAll every
// virtual server and backend is read again at each scrape, for fresh
// counters.
//
// Labels: the identity of a virtual server is its protocol, address and
// port; the Service port it belongs to is namespace, service and port_name
// (port_name is the Service port's name, or its number when unnamed: the
// port label of the other families). This is the one family whose port is
// not the Service port's.
type IPVS struct {
	cfg    IPVSConfig
	procfs string
	index  *kube.Index
	target netns.Target
	// drift and names are used by the refresher goroutine only.
	drift *driftJudge
	names [2]kubeproxy.IPVSNames // by family: IPv4, IPv6

	ruleSource[*ipvsSnapshot]

	// keep[i] is the position in the kept label values of
	// IPVSBackendLabels[i], or -1 when the label is dropped.
	keep    [8]int
	allKept bool

	svcConns, svcInPkts, svcOutPkts, svcInBytes, svcOutBytes *prometheus.Desc
	svcInfo, svcPersistence, svcUsable, beInfo               *prometheus.Desc
	beActive, beInactive, beWeight                           *prometheus.Desc
	beConns, beInPkts, beOutPkts, beInBytes, beOutBytes      *prometheus.Desc
	virtualServers, backends, noBackends                     *prometheus.Desc
}

// NewIPVS returns the ipvs collector, or an error for an unknown label in
// cfg.BackendLabels or a bad service-series mode or drift setting. Its
// refresher starts with Start, or on the first Update.
func NewIPVS(cfg IPVSConfig, deps Deps) (*IPVS, error) {
	cfg = cfg.withDefaults()
	if err := oneOf("ipvs service-series mode", cfg.ServiceSeries, ServiceSeriesModes); err != nil {
		return nil, err
	}
	if cfg.MaxNoBackendSeries < 0 {
		return nil, fmt.Errorf("max no-backend series must not be negative, got %d", cfg.MaxNoBackendSeries)
	}
	judge, err := newDriftJudge(cfg.Drift, cfg.RefreshInterval, deps.Index)
	if err != nil {
		return nil, err
	}
	c := &IPVS{cfg: cfg, procfs: deps.Paths.ProcFS, index: deps.Index, drift: judge}
	kept := cfg.BackendLabels
	if kept == nil {
		kept = IPVSBackendLabels
	}
	for i := range c.keep {
		c.keep[i] = -1
	}
	var beLabels []string
	for _, l := range kept {
		i := slices.Index(IPVSBackendLabels, l)
		if i < 0 {
			return nil, fmt.Errorf("unknown IPVS backend label %q (known: %s)", l, strings.Join(IPVSBackendLabels, ","))
		}
		if c.keep[i] >= 0 {
			return nil, fmt.Errorf("IPVS backend label %q given twice", l)
		}
		c.keep[i] = len(beLabels)
		beLabels = append(beLabels, l)
	}
	c.allKept = len(beLabels) == len(IPVSBackendLabels)

	svcLabels := []string{"protocol", "address", "port", "scheduler", "namespace", "service", "port_name"}
	svc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "ipvs", name), help, svcLabels, nil)
	}
	be := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "ipvs", name), help, beLabels, nil)
	}
	c.svcConns = svc("service_connections_total", "Connections scheduled by the IPVS virtual server since it was created.")
	c.svcInPkts = svc("service_in_packets_total", "Packets the IPVS virtual server received from clients since it was created.")
	c.svcOutPkts = svc("service_out_packets_total", "Packets the IPVS virtual server sent back to clients since it was created.")
	c.svcInBytes = svc("service_in_bytes_total", "Bytes the IPVS virtual server received from clients since it was created.")
	c.svcOutBytes = svc("service_out_bytes_total", "Bytes the IPVS virtual server sent back to clients since it was created.")
	c.svcInfo = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "ipvs", "service_info"),
		"Flags of the IPVS virtual server as ipvsadm names them (persistent, ops, sh-fallback, sh-port, mh-fallback, mh-port, flag-1..3), comma separated; always 1.",
		append(slices.Clone(svcLabels), "flags"), nil)
	c.svcPersistence = svc("service_persistence_timeout_seconds", "Persistence (session affinity) timeout of a persistent IPVS virtual server.")
	c.svcUsable = svc("service_usable_backends", "Backends of the IPVS virtual server with a weight above 0 (0: new connections to it fail). With --collector.ipvs.service-series=drift only for the virtual servers that have none.")
	c.beInfo = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "ipvs", "backend_info"),
		"Forwarding method of the IPVS backend (masq, local, tunnel, route, bypass); always 1. Only with every backend label kept.",
		append(slices.Clone(IPVSBackendLabels), "forwarding_method"), nil)
	c.beActive = be("backend_connections_active", "Active (established) connections of the IPVS backend.")
	c.beInactive = be("backend_connections_inactive", "Inactive connections of the IPVS backend (not established: closing, TIME_WAIT, or UDP).")
	c.beWeight = be("backend_weight", "Scheduling weight of the IPVS backend (0: takes no new connections).")
	c.beConns = be("backend_connections_total", "Connections the IPVS virtual server scheduled to the backend since the backend was added.")
	c.beInPkts = be("backend_in_packets_total", "Packets from clients forwarded to the IPVS backend since it was added.")
	c.beOutPkts = be("backend_out_packets_total", "Packets from the IPVS backend back to clients since it was added.")
	c.beInBytes = be("backend_in_bytes_total", "Bytes from clients forwarded to the IPVS backend since it was added.")
	c.beOutBytes = be("backend_out_bytes_total", "Bytes from the IPVS backend back to clients since it was added.")
	node := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "ipvs", name), help, nil, nil)
	}
	c.virtualServers = node("virtual_servers", "IPVS virtual servers of the exporter's network namespace, at the latest listing.")
	c.backends = node("backends", "Backends (real servers) of all IPVS virtual servers, whatever their weight, at the latest listing.")
	c.noBackends = node("virtual_servers_no_backends", "IPVS virtual servers without a backend of weight above 0 (new connections to them fail), at the latest listing.")
	c.ruleSource = newRuleSource(IPVSName, cfg.RefreshInterval, cfg.Timeout, c.list)
	c.nextAfter(func(st *ipvsSnapshot) time.Duration { return st.drift.nextRelist() })
	return c, nil
}

// setTarget makes the collector read the network namespace t (tests).
func (c *IPVS) setTarget(t netns.Target) { c.target = t }

// IPVSVirtualServer is one virtual server with its labels and backends.
type IPVSVirtualServer struct {
	// Protocol, Address and Port identify it as its series do (protocol
	// fwmark: Port is the mark, Address the family's unspecified address).
	Protocol, Address, Port string
	// Service is the Service port it belongs to, from the index; empty
	// when unknown.
	Service kube.ServicePortRef
	// Kernel is what the kernel has: scheduler, flags, counters.
	Kernel ipvs.Service
	// Backends are its backends (with IPVSConfig.Backends).
	Backends []IPVSBackend
}

// IPVSBackend is one backend with the pod it is.
type IPVSBackend struct {
	Kernel ipvs.Dest
	// Pod is the pod of the EndpointSlice endpoint with the backend's
	// address, from the index.
	Pod kube.PodRef
}

// IPVSResult is one reading of every virtual server.
type IPVSResult struct {
	VirtualServers []IPVSVirtualServer
	// Drift is the drift judgment of the latest background listing: nil
	// unless kube-proxy runs in IPVS mode and the Kubernetes index has
	// synced.
	Drift *DriftResult
}

// ipvsSnapshot is one background listing: the per-node counts, the series
// of the virtual servers without a usable backend, and drift. Immutable
// once published.
type ipvsSnapshot struct {
	virtualServers, backends, noBackends int
	drift                                *DriftResult
	// common are the per-node and drift metrics; noBackendSeries those of
	// the virtual servers without a usable backend (served with
	// ServiceSeriesDrift only: with ServiceSeriesAll the scrape's own
	// reading has them).
	common, noBackendSeries []prometheus.Metric
	all                     bool
}

func (st *ipvsSnapshot) constMetrics() []prometheus.Metric {
	if st == nil {
		return nil
	}
	if st.all {
		return st.common
	}
	return append(slices.Clip(st.common), st.noBackendSeries...)
}

// Update implements Collector. With ServiceSeriesDrift it sends the latest
// background listing's series; with ServiceSeriesAll also every virtual
// server and backend, read now.
func (c *IPVS) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	_, err := c.serve(ch)
	if c.cfg.ServiceSeries != ServiceSeriesAll {
		return err
	}
	if rerr := c.updateAll(ctx, ch); rerr != nil {
		return rerr
	}
	// The scrape's own reading worked: a background listing that has not
	// finished yet is no failure.
	if errors.Is(err, ErrNoData) {
		return nil
	}
	return err
}

// updateAll sends the series of every virtual server and backend, read now.
func (c *IPVS) updateAll(ctx context.Context, ch chan<- prometheus.Metric) error {
	send := func(m prometheus.Metric) { ch <- m }
	e := c.newEmitter(send, c.cfg.Backends, c.cfg.BackendStats)
	err := c.read(ctx, c.cfg.Backends, c.cfg.BackendStats, func(vs *IPVSVirtualServer) { e.virtualServer(vs) })
	if err != nil {
		return err
	}
	e.flush()
	return nil
}

// ipvsEmitter sends the series of virtual servers and their backends,
// summing backends when labels are dropped.
type ipvsEmitter struct {
	c     *IPVS
	send  func(prometheus.Metric)
	pairs labelPairCache
	agg   map[string]*ipvsBackendSum
	stats bool // the backends' own counters were read
	// backends: the backends were read (usable_backends can be told).
	backends bool
}

func (c *IPVS) newEmitter(send func(prometheus.Metric), backends, stats bool) *ipvsEmitter {
	e := &ipvsEmitter{c: c, send: send, pairs: labelPairCache{}, backends: backends, stats: stats}
	if !c.allKept {
		e.agg = map[string]*ipvsBackendSum{}
	}
	return e
}

func (e *ipvsEmitter) virtualServer(vs *IPVSVirtualServer) {
	e.c.emitService(e.send, e.pairs, vs)
	if !e.backends {
		return
	}
	usable := 0
	for i := range vs.Backends {
		if vs.Backends[i].Kernel.Weight > 0 {
			usable++
		}
	}
	e.send(prometheus.MustNewConstMetric(e.c.svcUsable, prometheus.GaugeValue, float64(usable),
		vs.Protocol, vs.Address, vs.Port, vs.Kernel.Sched, vs.Service.Namespace, vs.Service.Service, vs.Service.Port))
	if !e.c.cfg.Backends {
		return
	}
	for i := range vs.Backends {
		e.c.emitBackend(e.send, e.agg, e.pairs, vs, &vs.Backends[i], e.stats)
	}
}

// flush sends the summed backends.
func (e *ipvsEmitter) flush() {
	c := e.c
	for _, b := range e.agg {
		e.send(prometheus.MustNewConstMetric(c.beActive, prometheus.GaugeValue, float64(b.active), b.labels...))
		e.send(prometheus.MustNewConstMetric(c.beInactive, prometheus.GaugeValue, float64(b.inactive), b.labels...))
		e.send(prometheus.MustNewConstMetric(c.beWeight, prometheus.GaugeValue, float64(b.weight), b.labels...))
		if e.stats {
			c.emitBackendStats(e.send, prometheus.MakeLabelPairs(c.beConns, b.labels), &b.stats)
		}
	}
}

// Result reads every virtual server once, as Update does with
// ServiceSeriesAll, with the latest background listing's drift.
func (c *IPVS) Result(ctx context.Context) (*IPVSResult, error) {
	r := &IPVSResult{}
	err := c.read(ctx, c.cfg.Backends, c.cfg.BackendStats, func(vs *IPVSVirtualServer) {
		v := *vs
		v.Backends = slices.Clone(vs.Backends)
		r.VirtualServers = append(r.VirtualServers, v)
	})
	if err != nil {
		return nil, err
	}
	if st, _ := c.latest(); st != nil {
		r.Drift = st.drift
	}
	return r, nil
}

// list is one background listing.
func (c *IPVS) list(ctx context.Context) (*ipvsSnapshot, error) {
	start := time.Now()
	st := &ipvsSnapshot{all: c.cfg.ServiceSeries == ServiceSeriesAll}
	var troubled []IPVSVirtualServer
	// The real servers of non-zero weight of each virtual server, by
	// family, for drift (fwmark virtual servers left out: kube-proxy makes
	// none).
	listings := [2]map[kubeproxy.IPVSVirtualServer]kubeproxy.EndpointSet{{}, {}}
	// The backends from /proc/net/ip_vs (one read), without their own
	// counters: the series of a virtual server without a usable backend
	// leave them out.
	err := c.read(ctx, true, false, func(vs *IPVSVirtualServer) {
		st.virtualServers++
		st.backends += len(vs.Backends)
		var usable kubeproxy.EndpointSet
		for _, b := range vs.Backends {
			if b.Kernel.Weight > 0 {
				usable = append(usable, netip.AddrPortFrom(b.Kernel.Addr.Unmap(), b.Kernel.Port))
			}
		}
		if len(usable) == 0 {
			st.noBackends++
			if !st.all {
				v := *vs
				v.Backends = slices.Clone(vs.Backends)
				troubled = append(troubled, v)
			}
		}
		if vs.Kernel.FWMark == 0 && c.index != nil {
			slices.SortFunc(usable, netip.AddrPort.Compare)
			fam := 0
			if vs.Kernel.Family == ipvs.FamilyIPv6 {
				fam = 1
			}
			listings[fam][kubeproxy.IPVSVirtualServer{Protocol: vs.Protocol, Addr: vs.Kernel.Addr.Unmap(), Port: vs.Kernel.Port}] = slices.Compact(usable)
		}
	})
	if err != nil {
		return nil, err
	}
	st.common = []prometheus.Metric{
		prometheus.MustNewConstMetric(c.virtualServers, prometheus.GaugeValue, float64(st.virtualServers)),
		prometheus.MustNewConstMetric(c.backends, prometheus.GaugeValue, float64(st.backends)),
		prometheus.MustNewConstMetric(c.noBackends, prometheus.GaugeValue, float64(st.noBackends)),
	}
	slices.SortFunc(troubled, func(a, b IPVSVirtualServer) int {
		return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), a.Kernel.Addr.Compare(b.Kernel.Addr), cmp.Compare(a.Kernel.Port, b.Kernel.Port), cmp.Compare(a.Kernel.FWMark, b.Kernel.FWMark))
	})
	e := c.newEmitter(func(m prometheus.Metric) { st.noBackendSeries = append(st.noBackendSeries, m) }, true, false)
	for i := range troubled[:min(len(troubled), c.cfg.MaxNoBackendSeries)] {
		e.virtualServer(&troubled[i])
	}
	e.flush()

	if c.drift != nil && c.index.Synced() {
		nodeAddrs, ipvsMode, err := links.AddrsExcept(ctx, c.target, ipvsDummy)
		if err != nil {
			return nil, fmt.Errorf("list node addresses for kube-proxy drift: %w", err)
		}
		if ipvsMode {
			var dm []prometheus.Metric
			st.drift, dm = c.drift.judge(kubeproxy.ModeIPVS, start, time.Since(start), func(e *kubeproxy.Expectation) []kubeproxy.Comparison {
				var cmps []kubeproxy.Comparison
				for i, f := range []kubeproxy.IPFamily{kubeproxy.IPv4, kubeproxy.IPv6} {
					// A family without any virtual server has no IPVS
					// proxier (single-stack kube-proxy): not judged.
					if len(listings[i]) == 0 {
						continue
					}
					cmps = append(cmps, e.CompareIPVS(f, &kubeproxy.IPVSListing{VirtualServers: listings[i], NodeAddrs: nodeAddrs}, &c.names[i]))
				}
				return cmps
			})
			st.common = append(st.common, dm...)
		}
	}
	return st, nil
}

// read reads the virtual servers, and with backends their backends (with
// stats their own counters too, over netlink), and calls visit for each,
// joined to the index; vs and its Backends are reused by the next call.
func (c *IPVS) read(ctx context.Context, backends, stats bool, visit func(vs *IPVSVirtualServer)) error {
	if err := ipvs.CheckLoaded(c.procfs); err != nil {
		return noData(err)
	}
	r, err := ipvs.Dial(ctx, c.target)
	if err != nil {
		return noData(err)
	}
	defer r.Close()

	svcs, err := r.Services()
	if err != nil {
		return err
	}
	// The default backend series (no per-backend counters) are all in
	// /proc/net/ip_vs, which lists every backend in one read; netlink needs
	// a request per virtual server (IPVS_CMD_GET_DEST), 5,001 round trips
	// at 5,000 services. Backends of a virtual server the file does not
	// show (created after it was read, or a fwmark service, which the file
	// does not tell apart by family) are still asked over netlink.
	var fromProc map[ipvs.ProcKey]*ipvs.ProcService
	if backends && !stats {
		if fromProc, err = c.procBackends(); err != nil {
			return err
		}
	}

	j := ipvsJoin{c: c, ctx: ctx}
	var dests []ipvs.Dest
	vs := &IPVSVirtualServer{}
	for i := range svcs {
		if err := ctx.Err(); err != nil {
			return err
		}
		s := &svcs[i]
		*vs = IPVSVirtualServer{
			Protocol: protocolNames[uint8(s.Protocol)],
			Address:  s.Addr.String(),
			Port:     strconv.Itoa(int(s.Port)),
			Kernel:   *s,
			Backends: vs.Backends[:0],
		}
		if s.FWMark != 0 {
			// A fwmark service has no address or port: the mark goes in port,
			// and the address is the family's unspecified address, so IPv4 and
			// IPv6 services on one mark stay distinct series.
			vs.Protocol, vs.Port = "fwmark", strconv.FormatUint(uint64(s.FWMark), 10)
			if s.Family == ipvs.FamilyIPv6 {
				vs.Address = "::"
			} else {
				vs.Address = "0.0.0.0"
			}
		} else if vs.Service, err = j.service(vs.Protocol, s); err != nil {
			return err
		}

		if backends {
			if ps, ok := fromProc[ipvs.ProcKeyOf(s)]; ok && s.FWMark == 0 {
				dests = dests[:0]
				for _, b := range ps.Backends {
					dests = append(dests, ipvs.Dest{Addr: b.Addr, Port: b.Port, FwdMethod: ipvs.ForwardingFromProc(b.Forward), Weight: b.Weight, Active: b.Active, Inactive: b.Inactive})
				}
			} else if dests, err = r.Dests(s, dests[:0]); err != nil {
				return err
			}
			for _, d := range dests {
				pod, _ := c.index.EndpointPodByIP(d.Addr)
				vs.Backends = append(vs.Backends, IPVSBackend{Kernel: d, Pod: pod})
			}
		}
		visit(vs)
	}
	return nil
}

// ipvsJoin finds the Service port of virtual servers during one read.
type ipvsJoin struct {
	c     *IPVS
	ctx   context.Context
	local map[netip.Addr]bool // node addresses, listed only if a NodePort lookup needs them
}

// service is the Service port the virtual server s (of protocol) belongs
// to: by ClusterIP, external or load-balancer IP and port, else, on an
// address of the node, by NodePort; empty when unknown.
func (j *ipvsJoin) service(protocol string, s *ipvs.Service) (kube.ServicePortRef, error) {
	ix := j.c.index
	if ix == nil {
		return kube.ServicePortRef{}, nil
	}
	if ref, ok := ix.ServiceByAddrPort(protocol, s.Addr, s.Port); ok {
		return ref, nil
	}
	if j.local == nil {
		var err error
		if j.local, err = links.LocalAddrs(j.ctx, j.c.target); err != nil {
			return kube.ServicePortRef{}, err
		}
	}
	// kube-proxy makes a virtual server per node address for a NodePort; a
	// ClusterIP unknown to the index must not be mistaken for one, hence
	// the local address check.
	var ref kube.ServicePortRef
	if j.local[s.Addr.Unmap()] {
		ref, _ = ix.ServiceByNodePort(protocol, s.Port)
	}
	return ref, nil
}

func (c *IPVS) emitService(send func(prometheus.Metric), pairs labelPairCache, vs *IPVSVirtualServer) {
	s := &vs.Kernel
	sv := prometheus.MakeLabelPairs(c.svcConns, []string{vs.Protocol, vs.Address, vs.Port, s.Sched, vs.Service.Namespace, vs.Service.Service, vs.Service.Port})
	send(sharedLabelsMetric{c.svcConns, sv, false, float64(s.Stats.Conns)})
	send(sharedLabelsMetric{c.svcInPkts, sv, false, float64(s.Stats.InPkts)})
	send(sharedLabelsMetric{c.svcOutPkts, sv, false, float64(s.Stats.OutPkts)})
	send(sharedLabelsMetric{c.svcInBytes, sv, false, float64(s.Stats.InBytes)})
	send(sharedLabelsMetric{c.svcOutBytes, sv, false, float64(s.Stats.OutBytes)})
	send(sharedLabelsMetric{c.svcInfo, withLabelPair(sv, pairs.get("flags", ipvs.FlagNames(s.Flags, s.Sched))), true, 1})
	if s.Flags&ipvs.FlagPersistent != 0 {
		send(sharedLabelsMetric{c.svcPersistence, sv, true, float64(s.Timeout)})
	}
}

func (c *IPVS) emitBackendStats(send func(prometheus.Metric), lp []*dto.LabelPair, st *ipvs.Stats) {
	send(sharedLabelsMetric{c.beConns, lp, false, float64(st.Conns)})
	send(sharedLabelsMetric{c.beInPkts, lp, false, float64(st.InPkts)})
	send(sharedLabelsMetric{c.beOutPkts, lp, false, float64(st.OutPkts)})
	send(sharedLabelsMetric{c.beInBytes, lp, false, float64(st.InBytes)})
	send(sharedLabelsMetric{c.beOutBytes, lp, false, float64(st.OutBytes)})
}

// ipvsBackendSum adds up backends that share their kept label values.
type ipvsBackendSum struct {
	stats                    ipvs.Stats
	labels                   []string
	active, inactive, weight uint64
}

func (c *IPVS) emitBackend(send func(prometheus.Metric), agg map[string]*ipvsBackendSum, pairs labelPairCache, vs *IPVSVirtualServer, b *IPVSBackend, stats bool) {
	d := &b.Kernel
	namespace := vs.Service.Namespace
	if namespace == "" {
		namespace = b.Pod.Namespace
	}
	all := [8]string{vs.Protocol, vs.Address, vs.Port, d.Addr.String(), strconv.Itoa(int(d.Port)), namespace, vs.Service.Service, b.Pod.Name}
	if c.allKept {
		lp := prometheus.MakeLabelPairs(c.beActive, all[:])
		send(sharedLabelsMetric{c.beActive, lp, true, float64(d.Active)})
		send(sharedLabelsMetric{c.beInactive, lp, true, float64(d.Inactive)})
		send(sharedLabelsMetric{c.beWeight, lp, true, float64(d.Weight)})
		send(sharedLabelsMetric{c.beInfo, withLabelPair(lp, pairs.get("forwarding_method", ipvs.ForwardingMethodName(d.FwdMethod))), true, 1})
		if stats {
			c.emitBackendStats(send, lp, &d.Stats)
		}
		return
	}
	var kept [8]string
	n := 0
	for i, pos := range c.keep {
		if pos >= 0 {
			kept[pos] = all[i]
			n++
		}
	}
	key := strings.Join(kept[:n], "\xff")
	sum := agg[key]
	if sum == nil {
		sum = &ipvsBackendSum{labels: append([]string(nil), kept[:n]...)}
		agg[key] = sum
	}
	sum.active += uint64(d.Active)
	sum.inactive += uint64(d.Inactive)
	sum.weight += uint64(d.Weight)
	sum.stats.Conns += d.Stats.Conns
	sum.stats.InPkts += d.Stats.InPkts
	sum.stats.OutPkts += d.Stats.OutPkts
	sum.stats.InBytes += d.Stats.InBytes
	sum.stats.OutBytes += d.Stats.OutBytes
}

// procBackends reads /proc/net/ip_vs of the collector's network namespace
// and returns the virtual servers by key.
func (c *IPVS) procBackends() (map[ipvs.ProcKey]*ipvs.ProcService, error) {
	svcs, err := ipvs.ReadProc(c.target, c.procfs)
	if err != nil {
		return nil, err
	}
	out := make(map[ipvs.ProcKey]*ipvs.ProcService, len(svcs))
	for i := range svcs {
		s := &svcs[i]
		if s.Protocol != "FWM" {
			out[s.Key()] = s
		}
	}
	return out, nil
}

// labelPairCache holds, for one scrape, one label pair per name and value of
// the labels with few values (flags, forwarding_method), shared by every
// series that has it.
type labelPairCache map[[2]string]*dto.LabelPair

func (c labelPairCache) get(name, value string) *dto.LabelPair {
	k := [2]string{name, value}
	p := c[k]
	if p == nil {
		p = &dto.LabelPair{Name: &k[0], Value: &k[1]}
		c[k] = p
	}
	return p
}

// withLabelPair returns the label pairs lp (sorted by name) with p added in
// its place, in a new slice; the pairs themselves are shared.
func withLabelPair(lp []*dto.LabelPair, p *dto.LabelPair) []*dto.LabelPair {
	out := make([]*dto.LabelPair, 0, len(lp)+1)
	i := 0
	for i < len(lp) && lp[i].GetName() < p.GetName() {
		i++
	}
	out = append(out, lp[:i]...)
	out = append(out, p)
	return append(out, lp[i:]...)
}

// sharedLabelsMetric is a constant metric whose label pairs are shared with
// the other metrics of the same virtual server or backend. At 5,000 virtual
// servers x 3 backends (70,000 series) building the label pairs once per
// series with MustNewConstMetric was 61% of a scrape's allocations (guest
// memory profile of BenchmarkIPVSGuestScale); the registry only reads them.
type sharedLabelsMetric struct {
	desc   *prometheus.Desc
	labels []*dto.LabelPair // sorted by name, as MakeLabelPairs returns them
	gauge  bool
	value  float64
}

func (m sharedLabelsMetric) Desc() *prometheus.Desc { return m.desc }

func (m sharedLabelsMetric) Write(out *dto.Metric) error {
	out.Label = m.labels
	v := m.value
	if m.gauge {
		out.Gauge = &dto.Gauge{Value: &v}
	} else {
		out.Counter = &dto.Counter{Value: &v}
	}
	return nil
}
