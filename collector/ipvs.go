package collector

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/kube"
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
	// NetNS, when not 0, is an open file descriptor of the network namespace
	// to read instead of the exporter's own. Tests use it.
	NetNS int
}

// IPVS reports every IPVS virtual server of the exporter's network
// namespace with its counters, and its backends, joined to the Kubernetes
// Service and backend pod.
type IPVS struct {
	cfg    IPVSConfig
	procfs string
	logger *zap.Logger
	index  *kube.Index

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
	c := &IPVS{cfg: cfg, procfs: deps.Paths.ProcFS, logger: deps.Logger, index: deps.Index}
	if c.logger == nil {
		c.logger = zap.NewNop()
	}
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

// ipvsServiceLabels are the identity and Kubernetes labels of a virtual
// server, computed once per scrape.
type ipvsServiceLabels struct {
	protocol, address, port string
	ref                     kube.ServicePortRef
}

// Update implements Collector.
func (c *IPVS) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	// Without the ip_vs module there is no /proc/net/ip_vs. Checking it first
	// keeps the scrape from asking generic netlink for the family, which on a
	// modular kernel may make the kernel try to load a module.
	path := filepath.Join(c.procfs, "net/ip_vs")
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s absent, ip_vs is not loaded: %w", path, ErrNoData)
	}
	r, err := dialIPVS(ctx, c.cfg.NetNS)
	if errors.Is(err, errIPVSAbsent) {
		return fmt.Errorf("%w: %w", err, ErrNoData)
	}
	if err != nil {
		return err
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
	var fromProc map[ipvsProcKey]*IPVSProcService
	if c.cfg.Backends && !c.cfg.BackendStats {
		if fromProc, err = c.procBackends(); err != nil {
			return err
		}
	}

	pairs := labelPairCache{}
	var local map[netip.Addr]bool // node addresses, listed only if a NodePort lookup needs them
	var dests []ipvsDest
	var agg map[string]*ipvsBackendSum
	if !c.allKept {
		agg = map[string]*ipvsBackendSum{}
	}
	for i := range svcs {
		if err := ctx.Err(); err != nil {
			return err
		}
		s := &svcs[i]
		l := ipvsServiceLabels{
			protocol: ipProtocolName(s.Protocol),
			address:  s.Addr.String(),
			port:     strconv.Itoa(int(s.Port)),
		}
		if s.FWMark != 0 {
			// A fwmark service has no address or port: the mark goes in port,
			// and the address is the family's unspecified address, so IPv4 and
			// IPv6 services on one mark stay distinct series.
			l.protocol, l.port = "fwmark", strconv.FormatUint(uint64(s.FWMark), 10)
			if s.Family == unix.AF_INET6 {
				l.address = "::"
			} else {
				l.address = "0.0.0.0"
			}
		} else if c.index != nil {
			ref, ok := c.index.ServiceByAddrPort(l.protocol, s.Addr, s.Port)
			if !ok {
				if local == nil {
					if local, err = localAddrs(ctx, c.cfg.NetNS); err != nil {
						return err
					}
				}
				// kube-proxy makes a virtual server per node address for a
				// NodePort; a ClusterIP unknown to the index must not be
				// mistaken for one, hence the local address check.
				if local[s.Addr.Unmap()] {
					ref, _ = c.index.ServiceByNodePort(l.protocol, s.Port)
				}
			}
			l.ref = ref
		}
		sv := prometheus.MakeLabelPairs(c.svcConns, []string{l.protocol, l.address, l.port, s.Sched, l.ref.Namespace, l.ref.Service, l.ref.Port})
		ch <- sharedLabelsMetric{c.svcConns, sv, false, float64(s.Stats.Conns)}
		ch <- sharedLabelsMetric{c.svcInPkts, sv, false, float64(s.Stats.InPkts)}
		ch <- sharedLabelsMetric{c.svcOutPkts, sv, false, float64(s.Stats.OutPkts)}
		ch <- sharedLabelsMetric{c.svcInBytes, sv, false, float64(s.Stats.InBytes)}
		ch <- sharedLabelsMetric{c.svcOutBytes, sv, false, float64(s.Stats.OutBytes)}
		ch <- sharedLabelsMetric{c.svcInfo, withLabelPair(sv, pairs.get("flags", ipvsServiceFlags(s.Flags, s.Sched))), true, 1}
		if s.Flags&ipvsSvcFlagPersistent != 0 {
			ch <- sharedLabelsMetric{c.svcPersistence, sv, true, float64(s.Timeout)}
		}

		if !c.cfg.Backends {
			continue
		}
		if ps, ok := fromProc[procKeyOf(s)]; ok && s.FWMark == 0 {
			dests = dests[:0]
			for _, b := range ps.Backends {
				dests = append(dests, ipvsDest{Addr: b.Addr, Port: b.Port, FwdMethod: ipvsForwardingFlags(b.Forward), Weight: b.Weight, Active: b.Active, Inactive: b.Inactive})
			}
		} else if dests, err = r.Dests(s, dests[:0]); err != nil {
			return err
		}
		for j := range dests {
			c.emitBackend(ch, agg, pairs, &l, &dests[j])
		}
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

func (c *IPVS) emitBackendStats(ch chan<- prometheus.Metric, lp []*dto.LabelPair, st *ipvsStats) {
	ch <- sharedLabelsMetric{c.beConns, lp, false, float64(st.Conns)}
	ch <- sharedLabelsMetric{c.beInPkts, lp, false, float64(st.InPkts)}
	ch <- sharedLabelsMetric{c.beOutPkts, lp, false, float64(st.OutPkts)}
	ch <- sharedLabelsMetric{c.beInBytes, lp, false, float64(st.InBytes)}
	ch <- sharedLabelsMetric{c.beOutBytes, lp, false, float64(st.OutBytes)}
}

// ipvsBackendSum adds up backends that share their kept label values.
type ipvsBackendSum struct {
	stats                    ipvsStats
	labels                   []string
	active, inactive, weight uint64
}

func (c *IPVS) emitBackend(ch chan<- prometheus.Metric, agg map[string]*ipvsBackendSum, pairs labelPairCache, l *ipvsServiceLabels, d *ipvsDest) {
	pod, _ := c.index.EndpointPodByIP(d.Addr)
	namespace := l.ref.Namespace
	if namespace == "" {
		namespace = pod.Namespace
	}
	all := [8]string{l.protocol, l.address, l.port, d.Addr.String(), strconv.Itoa(int(d.Port)), namespace, l.ref.Service, pod.Name}
	if c.allKept {
		lp := prometheus.MakeLabelPairs(c.beActive, all[:])
		ch <- sharedLabelsMetric{c.beActive, lp, true, float64(d.Active)}
		ch <- sharedLabelsMetric{c.beInactive, lp, true, float64(d.Inactive)}
		ch <- sharedLabelsMetric{c.beWeight, lp, true, float64(d.Weight)}
		ch <- sharedLabelsMetric{c.beInfo, withLabelPair(lp, pairs.get("forwarding_method", ipvsForwardingMethod(d.FwdMethod))), true, 1}
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
	b := agg[key]
	if b == nil {
		b = &ipvsBackendSum{labels: append([]string(nil), kept[:n]...)}
		agg[key] = b
	}
	b.active += uint64(d.Active)
	b.inactive += uint64(d.Inactive)
	b.weight += uint64(d.Weight)
	b.stats.Conns += d.Stats.Conns
	b.stats.InPkts += d.Stats.InPkts
	b.stats.OutPkts += d.Stats.OutPkts
	b.stats.InBytes += d.Stats.InBytes
	b.stats.OutBytes += d.Stats.OutBytes
}

// Virtual server flags (IP_VS_SVC_F_* in include/uapi/linux/ip_vs.h).
const (
	ipvsSvcFlagPersistent = 0x1
	ipvsSvcFlagOnePacket  = 0x4
	ipvsSvcFlagSched1     = 0x8
	ipvsSvcFlagSched2     = 0x10
	ipvsSvcFlagSched3     = 0x20
)

// ipvsServiceFlags names a virtual server's flags as ipvsadm -Ln prints
// them, comma separated; the scheduler flags are named after the sh and mh
// schedulers that define them. IP_VS_SVC_F_HASHED is left out: every
// virtual server in the table has it.
func ipvsServiceFlags(flags uint32, sched string) string {
	var names []string
	if flags&ipvsSvcFlagPersistent != 0 {
		names = append(names, "persistent")
	}
	if flags&ipvsSvcFlagOnePacket != 0 {
		names = append(names, "ops")
	}
	schedNames := [3]string{"flag-1", "flag-2", "flag-3"}
	switch sched {
	case "sh":
		schedNames[0], schedNames[1] = "sh-fallback", "sh-port"
	case "mh":
		schedNames[0], schedNames[1] = "mh-fallback", "mh-port"
	}
	for i, f := range []uint32{ipvsSvcFlagSched1, ipvsSvcFlagSched2, ipvsSvcFlagSched3} {
		if flags&f != 0 {
			names = append(names, schedNames[i])
		}
	}
	return strings.Join(names, ",")
}

// ipvsProcKey identifies a virtual server in /proc/net/ip_vs.
type ipvsProcKey struct {
	protocol string // as the file prints it: TCP, UDP, SCTP
	addr     netip.Addr
	port     uint16
}

// procKeyOf is the key of a virtual server read over netlink.
func procKeyOf(s *ipvsService) ipvsProcKey {
	var p string
	switch s.Protocol {
	case unix.IPPROTO_TCP:
		p = "TCP"
	case unix.IPPROTO_UDP:
		p = "UDP"
	case unix.IPPROTO_SCTP:
		p = "SCTP"
	}
	return ipvsProcKey{protocol: p, addr: s.Addr, port: s.Port}
}

// procBackends reads /proc/net/ip_vs of the collector's network namespace
// (its own, through <procfs>/net, or NetNS's, entered on a locked thread)
// and returns the virtual servers by key.
func (c *IPVS) procBackends() (map[ipvsProcKey]*IPVSProcService, error) {
	var data []byte
	read := func(path string) error {
		var err error
		data, err = os.ReadFile(path)
		return err
	}
	var err error
	if c.cfg.NetNS != 0 {
		err = inNetNS(fmt.Sprintf("/proc/self/fd/%d", c.cfg.NetNS), func() error { return read("/proc/thread-self/net/ip_vs") })
	} else {
		err = read(filepath.Join(c.procfs, "net/ip_vs"))
	}
	if err != nil {
		return nil, fmt.Errorf("read IPVS backends: %w", err)
	}
	svcs, err := ParseProcIPVS(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("parse /proc/net/ip_vs: %w", err)
	}
	out := make(map[ipvsProcKey]*IPVSProcService, len(svcs))
	for i := range svcs {
		s := &svcs[i]
		if s.Protocol != "FWM" {
			out[ipvsProcKey{protocol: s.Protocol, addr: s.Addr, port: s.Port}] = s
		}
	}
	return out, nil
}

// ipvsForwardingFlags is the forwarding method of a backend as
// /proc/net/ip_vs names it (ip_vs_fwd_name), in connection flags.
func ipvsForwardingFlags(name string) uint32 {
	switch name {
	case "Local":
		return 1
	case "Tunnel":
		return 2
	case "Route":
		return 3
	}
	return 0 // Masq (the file names bypass Masq too)
}

// ipvsForwardingMethod names a backend's forwarding method
// (IP_VS_CONN_F_FWD_MASK bits of its connection flags).
func ipvsForwardingMethod(fwd uint32) string {
	switch fwd & 0x7 {
	case 0:
		return "masq"
	case 1:
		return "local"
	case 2:
		return "tunnel"
	case 3:
		return "route"
	case 4:
		return "bypass"
	}
	return strconv.FormatUint(uint64(fwd&0x7), 10)
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

// localAddrs lists the addresses assigned to interfaces of netns (0: the
// caller's), through rtnetlink.
func localAddrs(ctx context.Context, netns int) (map[netip.Addr]bool, error) {
	conn, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("dial rtnetlink: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return nil, fmt.Errorf("set netlink deadline: %w", err)
		}
	}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETADDR, Flags: netlink.Request | netlink.Dump},
		Data:   make([]byte, unix.SizeofIfAddrmsg),
	})
	if err != nil {
		return nil, fmt.Errorf("list interface addresses: %w", err)
	}
	out := map[netip.Addr]bool{}
	for _, m := range msgs {
		if len(m.Data) < unix.SizeofIfAddrmsg {
			continue
		}
		family := uint16(m.Data[0])
		_ = walkAttrs(m.Data[unix.SizeofIfAddrmsg:], func(typ uint16, b []byte) error {
			if typ == unix.IFA_ADDRESS || typ == unix.IFA_LOCAL {
				if a := decodeInetAddr(family, b); a.IsValid() {
					out[a] = true
				}
			}
			return nil
		})
	}
	return out, nil
}
