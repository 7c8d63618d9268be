package collector

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/netinspect/netinspect/kube"
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
}

// DefaultIPVSConfig is the ipvs collector's configuration when no flag says
// otherwise.
func DefaultIPVSConfig() IPVSConfig {
	return IPVSConfig{Backends: true, BackendLabels: slices.Clone(IPVSBackendLabels)}
}

// IPVS reports every IPVS virtual server of the exporter's network
// namespace with its counters, and its backends, joined to the Kubernetes
// Service and backend pod.
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

	// keep[i] is the position in the kept label values of
	// IPVSBackendLabels[i], or -1 when the label is dropped.
	keep    [8]int
	allKept bool

	svcConns, svcInPkts, svcOutPkts, svcInBytes, svcOutBytes *prometheus.Desc
	svcInfo, svcPersistence, beInfo                          *prometheus.Desc
	beActive, beInactive, beWeight                           *prometheus.Desc
	beConns, beInPkts, beOutPkts, beInBytes, beOutBytes      *prometheus.Desc
}

// NewIPVS returns the ipvs collector, or an error for an unknown label in
// cfg.BackendLabels.
func NewIPVS(cfg IPVSConfig, deps Deps) (*IPVS, error) {
	c := &IPVS{cfg: cfg, procfs: deps.Paths.ProcFS, index: deps.Index}
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
}

// Update implements Collector.
func (c *IPVS) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	pairs := labelPairCache{}
	var agg map[string]*ipvsBackendSum
	if !c.allKept {
		agg = map[string]*ipvsBackendSum{}
	}
	err := c.read(ctx, func(vs *IPVSVirtualServer) {
		c.emitService(ch, pairs, vs)
		for i := range vs.Backends {
			c.emitBackend(ch, agg, pairs, vs, &vs.Backends[i])
		}
	})
	if err != nil {
		return err
	}
	for _, b := range agg {
		ch <- prometheus.MustNewConstMetric(c.beActive, prometheus.GaugeValue, float64(b.active), b.labels...)
		ch <- prometheus.MustNewConstMetric(c.beInactive, prometheus.GaugeValue, float64(b.inactive), b.labels...)
		ch <- prometheus.MustNewConstMetric(c.beWeight, prometheus.GaugeValue, float64(b.weight), b.labels...)
		if c.cfg.BackendStats {
			c.emitBackendStats(ch, prometheus.MakeLabelPairs(c.beConns, b.labels), &b.stats)
		}
	}
	return nil
}

// Result reads every virtual server once, as Update does.
func (c *IPVS) Result(ctx context.Context) (*IPVSResult, error) {
	r := &IPVSResult{}
	err := c.read(ctx, func(vs *IPVSVirtualServer) {
		v := *vs
		v.Backends = slices.Clone(vs.Backends)
		r.VirtualServers = append(r.VirtualServers, v)
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// read reads the virtual servers and their backends and calls visit for
// each, joined to the index; vs and its Backends are reused by the next
// call.
func (c *IPVS) read(ctx context.Context, visit func(vs *IPVSVirtualServer)) error {
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
	if c.cfg.Backends && !c.cfg.BackendStats {
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

		if c.cfg.Backends {
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

func (c *IPVS) emitService(ch chan<- prometheus.Metric, pairs labelPairCache, vs *IPVSVirtualServer) {
	s := &vs.Kernel
	sv := prometheus.MakeLabelPairs(c.svcConns, []string{vs.Protocol, vs.Address, vs.Port, s.Sched, vs.Service.Namespace, vs.Service.Service, vs.Service.Port})
	ch <- sharedLabelsMetric{c.svcConns, sv, false, float64(s.Stats.Conns)}
	ch <- sharedLabelsMetric{c.svcInPkts, sv, false, float64(s.Stats.InPkts)}
	ch <- sharedLabelsMetric{c.svcOutPkts, sv, false, float64(s.Stats.OutPkts)}
	ch <- sharedLabelsMetric{c.svcInBytes, sv, false, float64(s.Stats.InBytes)}
	ch <- sharedLabelsMetric{c.svcOutBytes, sv, false, float64(s.Stats.OutBytes)}
	ch <- sharedLabelsMetric{c.svcInfo, withLabelPair(sv, pairs.get("flags", ipvs.FlagNames(s.Flags, s.Sched))), true, 1}
	if s.Flags&ipvs.FlagPersistent != 0 {
		ch <- sharedLabelsMetric{c.svcPersistence, sv, true, float64(s.Timeout)}
	}
}

func (c *IPVS) emitBackendStats(ch chan<- prometheus.Metric, lp []*dto.LabelPair, st *ipvs.Stats) {
	ch <- sharedLabelsMetric{c.beConns, lp, false, float64(st.Conns)}
	ch <- sharedLabelsMetric{c.beInPkts, lp, false, float64(st.InPkts)}
	ch <- sharedLabelsMetric{c.beOutPkts, lp, false, float64(st.OutPkts)}
	ch <- sharedLabelsMetric{c.beInBytes, lp, false, float64(st.InBytes)}
	ch <- sharedLabelsMetric{c.beOutBytes, lp, false, float64(st.OutBytes)}
}

// ipvsBackendSum adds up backends that share their kept label values.
type ipvsBackendSum struct {
	stats                    ipvs.Stats
	labels                   []string
	active, inactive, weight uint64
}

func (c *IPVS) emitBackend(ch chan<- prometheus.Metric, agg map[string]*ipvsBackendSum, pairs labelPairCache, vs *IPVSVirtualServer, b *IPVSBackend) {
	d := &b.Kernel
	namespace := vs.Service.Namespace
	if namespace == "" {
		namespace = b.Pod.Namespace
	}
	all := [8]string{vs.Protocol, vs.Address, vs.Port, d.Addr.String(), strconv.Itoa(int(d.Port)), namespace, vs.Service.Service, b.Pod.Name}
	if c.allKept {
		lp := prometheus.MakeLabelPairs(c.beActive, all[:])
		ch <- sharedLabelsMetric{c.beActive, lp, true, float64(d.Active)}
		ch <- sharedLabelsMetric{c.beInactive, lp, true, float64(d.Inactive)}
		ch <- sharedLabelsMetric{c.beWeight, lp, true, float64(d.Weight)}
		ch <- sharedLabelsMetric{c.beInfo, withLabelPair(lp, pairs.get("forwarding_method", ipvs.ForwardingMethodName(d.FwdMethod))), true, 1}
		if c.cfg.BackendStats {
			c.emitBackendStats(ch, lp, &d.Stats)
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
