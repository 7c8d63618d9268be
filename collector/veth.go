package collector

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/kube"
)

// VethName is the veth collector's name in flags and metrics.
const VethName = "veth"

// vethMaxRetries bounds the early rescans (RetryInterval) for one veth whose
// pod end has no address.
const vethMaxRetries = 3

// Mapping methods, as reported in the method label, in order of precedence.
const (
	// VethMethodNetNS maps by entering the pod's network namespace (through a
	// netlink socket opened in it) and reading its end of the veth pair.
	VethMethodNetNS = "netns"
	// VethMethodRoute maps by the node's /32 and /128 routes through a veth
	// (Calico, kindnet, Cilium with endpoint routes, and other point-to-point
	// plugins).
	VethMethodRoute = "route"
	// VethMethodFDB maps by the bridge's neighbour table and forwarding
	// database (flannel, the bridge plugin): IP -> MAC -> bridge port.
	VethMethodFDB = "fdb"
)

// VethMethods lists every mapping method in order of precedence.
var vethMethods = []string{VethMethodNetNS, VethMethodRoute, VethMethodFDB}

// VethMethods returns every mapping method, in order of precedence.
func VethMethods() []string { return slices.Clone(vethMethods) }

// VethConfig configures the veth collector.
type VethConfig struct {
	// NetNS, when not 0, is an open file descriptor of the node's network
	// namespace, read instead of the exporter's own. Tests use it.
	NetNS int
	// Methods are the mapping methods to use; empty means all of them.
	Methods []string
	// RescanInterval bounds how long a mapping is reused while the node's
	// veths stay the same (0: one minute). The node's link list, read on
	// every scrape, triggers a rescan as soon as a veth appears, goes or
	// moves.
	RescanInterval time.Duration
	// RetryInterval is how soon a scan is repeated when some veth's pod end
	// had no address yet, as while a CNI plugin is still setting it up
	// (0: five seconds).
	RetryInterval time.Duration
}

// Veth maps the node's veth interfaces to the pods at their other end and
// reports each pod interface's traffic, from the pod's point of view.
//
// Every scrape reads the node's link list (one netlink dump, which carries
// the counters). The mapping is rebuilt only when that list's veths changed,
// when RescanInterval passed, or sooner (RetryInterval) while a veth's pod
// end had no address yet. Kubernetes metadata is joined at scrape time, so a
// Pod object that appears later is picked up without a rescan.
type Veth struct {
	cfg      VethConfig
	methods  map[string]bool
	procfs   string
	netnsDir string
	logger   *zap.Logger
	index    *kube.Index

	info, unmapped, age *prometheus.Desc
	traffic             [numVethCounters]*prometheus.Desc

	// roundTrips counts netlink request/response exchanges, for the
	// benchmark.
	roundTrips atomic.Uint64

	mu   sync.Mutex
	scan *vethScan
	// disagreed holds the cross-check disagreements already logged, so each
	// is logged once; it only keeps keys of veths of the latest scrape.
	disagreed map[string]struct{}
	// lastUnmapped is the unmapped set last logged at debug level.
	lastUnmapped string
	netnsErrOnce sync.Once

	// podNetns is, from the latest scrape, the network namespace path each
	// pod (namespace/name) was found through; see PodNetworkNamespaces.
	podNetns atomic.Pointer[map[string]string]
}

type vethCounter int

const (
	rxBytes vethCounter = iota
	txBytes
	rxPackets
	txPackets
	rxErrors
	txErrors
	rxDropped
	txDropped
	numVethCounters
)

// NewVeth returns the veth collector.
func NewVeth(cfg VethConfig, deps Deps) (*Veth, error) {
	if cfg.RescanInterval <= 0 {
		cfg.RescanInterval = time.Minute
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = 5 * time.Second
	}
	methods := map[string]bool{}
	if len(cfg.Methods) == 0 {
		cfg.Methods = vethMethods
	}
	for _, m := range cfg.Methods {
		if !slices.Contains(vethMethods, m) {
			return nil, fmt.Errorf("unknown veth mapping method %q (known: %s)", m, strings.Join(vethMethods, ", "))
		}
		methods[m] = true
	}
	logger := deps.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	podLabels := []string{"namespace", "pod", "interface"}
	c := &Veth{
		cfg:       cfg,
		methods:   methods,
		procfs:    deps.Paths.ProcFS,
		netnsDir:  deps.Paths.NetNS,
		logger:    logger,
		index:     deps.Index,
		disagreed: map[string]struct{}{},
		info: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "pod", "interface_info"),
			"A pod interface whose host end (a veth) is on this node, and how it was mapped: netns, route or fdb.",
			[]string{"namespace", "pod", "interface", "host_interface", "method"}, nil),
		unmapped: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "veth", "unmapped"),
			"Host veth interfaces whose peer is in another network namespace but belongs to no known pod.", nil, nil),
		age: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "veth", "mapping_age_seconds"),
			"Seconds since the veth-to-pod mapping was last rebuilt (network namespaces, routes, bridge tables).", nil, nil),
	}
	help := [numVethCounters]struct{ name, help string }{
		rxBytes:   {"receive_bytes_total", "Bytes the pod received on the interface (its host veth end transmitted)."},
		txBytes:   {"transmit_bytes_total", "Bytes the pod sent on the interface (its host veth end received)."},
		rxPackets: {"receive_packets_total", "Packets the pod received on the interface (its host veth end transmitted)."},
		txPackets: {"transmit_packets_total", "Packets the pod sent on the interface (its host veth end received)."},
		rxErrors:  {"receive_errors_total", "Transmit errors of the interface's host veth end, toward the pod."},
		txErrors:  {"transmit_errors_total", "Receive errors of the interface's host veth end, from the pod."},
		rxDropped: {"receive_dropped_total", "Packets toward the pod that its host veth end dropped while transmitting."},
		txDropped: {"transmit_dropped_total", "Packets from the pod that its host veth end dropped on receive."},
	}
	for i, h := range help {
		c.traffic[i] = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "pod", "network_"+h.name), h.help, podLabels, nil)
	}
	return c, nil
}

// hostVeth is a veth of the node whose peer is in another namespace, as the
// node's link dump shows it.
type hostVeth struct {
	index, peerIndex, nsid, master int
	name                           string
	stats                          netlink.LinkStatistics
}

// key is what identifies the veth for the mapping; a change in any field
// calls for a rescan.
func (v hostVeth) key() vethKey {
	return vethKey{index: v.index, peerIndex: v.peerIndex, nsid: v.nsid, master: v.master, name: v.name}
}

type vethKey struct {
	index, peerIndex, nsid, master int
	name                           string
}

// podEnd is what one method found about a host veth's pod end.
type podEnd struct {
	iface string // pod-side name; netns only
	ips   []netip.Addr
	// nsIPs are the addresses of every interface in the pod's namespace
	// (netns only): a Multus pod's status.podIPs hold only its primary
	// interface's addresses, yet its other interfaces are the same pod's.
	nsIPs []netip.Addr
	// netns is the path the pod's namespace was entered through (netns
	// only): a bind mount under --path.netns or <procfs>/<pid>/ns/net.
	netns string
}

// vethScan is one mapping: for each host veth (by ifindex), what each method
// found. It is immutable once built.
type vethScan struct {
	keys  []vethKey // sorted by index: the signature of the node's veths
	found map[int]map[string]podEnd
	at    time.Time
	// noAddr counts, per veth with no address from any method, the scans in
	// a row that found none; retry is set while one of them is below
	// vethMaxRetries, so an interface that never gets an address does not
	// cause a rescan every RetryInterval forever.
	noAddr map[vethKey]int
	retry  bool
	// interrupted: a dump changed while it was read; rescan next time.
	interrupted bool
}

// Update implements Collector.
func (c *Veth) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	h, err := c.nodeHandle(ctx)
	if err != nil {
		return err
	}
	defer h.Close()

	links, err := h.LinkList()
	c.roundTrips.Add(1)
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		// The link list changed during the dump (NLM_F_DUMP_INTR), so it
		// may miss a veth: read it once more.
		links, err = h.LinkList()
		c.roundTrips.Add(1)
	}
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list the node's links: %w", err)
	}
	veths := hostVeths(links)

	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if c.needScan(veths, now) {
		s, err := c.rescan(ctx, h, veths, now)
		if err != nil {
			return err
		}
		c.scan = s
	}
	c.emit(ch, veths, c.scan, now)
	return nil
}

// nodeHandle opens a netlink route socket in the node's namespace, with the
// scrape's deadline as its timeout.
func (c *Veth) nodeHandle(ctx context.Context) (*netlink.Handle, error) {
	var (
		h   *netlink.Handle
		err error
	)
	if c.cfg.NetNS != 0 {
		h, err = netlink.NewHandleAt(netns.NsHandle(c.cfg.NetNS), unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink route socket in the node's network namespace: %w", err)
	}
	if err := setHandleDeadline(ctx, h); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

func setHandleDeadline(ctx context.Context, h *netlink.Handle) error {
	d := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		d = max(time.Until(dl), time.Millisecond)
	}
	if err := h.SetSocketTimeout(d); err != nil {
		return fmt.Errorf("set netlink socket timeout: %w", err)
	}
	return nil
}

// hostVeths keeps the veths whose peer is in another namespace: a veth with
// both ends in the node's namespace (Cilium's cilium_host/cilium_net) has no
// IFLA_LINK_NETNSID and is no pod's.
func hostVeths(links []netlink.Link) []hostVeth {
	var out []hostVeth
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || a.NetNsID < 0 || a.ParentIndex == 0 {
			continue
		}
		v := hostVeth{index: a.Index, peerIndex: a.ParentIndex, nsid: a.NetNsID, master: a.MasterIndex, name: a.Name}
		if a.Statistics != nil {
			v.stats = *a.Statistics
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].index < out[j].index })
	return out
}

func (c *Veth) needScan(veths []hostVeth, now time.Time) bool {
	s := c.scan
	if s == nil || len(s.keys) != len(veths) {
		return true
	}
	for i, v := range veths {
		if s.keys[i] != v.key() {
			return true
		}
	}
	age := now.Sub(s.at)
	return s.interrupted || age >= c.cfg.RescanInterval || (s.retry && age >= c.cfg.RetryInterval)
}

// rescan builds a new mapping with every enabled method.
func (c *Veth) rescan(ctx context.Context, h *netlink.Handle, veths []hostVeth, now time.Time) (*vethScan, error) {
	s := &vethScan{at: now, found: make(map[int]map[string]podEnd, len(veths))}
	byIndex := make(map[int]*hostVeth, len(veths))
	for i := range veths {
		s.keys = append(s.keys, veths[i].key())
		byIndex[veths[i].index] = &veths[i]
	}
	record := func(hostIndex int, method string, end podEnd) {
		m := s.found[hostIndex]
		if m == nil {
			m = map[string]podEnd{}
			s.found[hostIndex] = m
		}
		prev := m[method]
		if end.iface != "" {
			prev.iface = end.iface
		}
		if end.nsIPs != nil {
			prev.nsIPs = end.nsIPs
		}
		if end.netns != "" {
			prev.netns = end.netns
		}
		for _, ip := range end.ips {
			if !slices.Contains(prev.ips, ip) {
				prev.ips = append(prev.ips, ip)
			}
		}
		m[method] = prev
	}
	if len(veths) > 0 {
		if c.methods[VethMethodRoute] {
			if err := c.scanRoutes(s, h, byIndex, record); err != nil {
				return nil, err
			}
		}
		if c.methods[VethMethodFDB] {
			if err := c.scanFDB(s, h, veths, byIndex, record); err != nil {
				return nil, err
			}
		}
		if c.methods[VethMethodNetNS] {
			if err := c.scanNetNS(ctx, h, veths, record); err != nil {
				return nil, err
			}
		}
	}
	s.noAddr = map[vethKey]int{}
	for _, v := range veths {
		hasAddr := false
		for _, end := range s.found[v.index] {
			hasAddr = hasAddr || len(end.ips) > 0
		}
		if hasAddr {
			continue
		}
		n := 1
		if c.scan != nil {
			n += c.scan.noAddr[v.key()]
		}
		s.noAddr[v.key()] = n
		if n <= vethMaxRetries {
			s.retry = true
		}
	}
	return s, nil
}

// scanRoutes finds the host routes of single addresses (/32, /128) that go
// straight out of a veth, with no gateway: point-to-point plugins install one
// per pod address.
func (c *Veth) scanRoutes(s *vethScan, h *netlink.Handle, byIndex map[int]*hostVeth, record func(int, string, podEnd)) error {
	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	c.roundTrips.Add(1)
	s.interrupted = s.interrupted || errors.Is(err, netlink.ErrDumpInterrupted)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list the node's routes: %w", err)
	}
	for _, r := range routes {
		if byIndex[r.LinkIndex] == nil || r.Dst == nil || r.Gw != nil || len(r.MultiPath) > 0 {
			continue
		}
		if r.Type != unix.RTN_UNICAST {
			continue
		}
		ones, bits := r.Dst.Mask.Size()
		if ones != bits || bits == 0 {
			continue
		}
		ip, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		record(r.LinkIndex, VethMethodRoute, podEnd{ips: []netip.Addr{ip.Unmap()}})
	}
	return nil
}

// scanFDB joins the neighbour tables of bridges with veth ports (IP -> MAC)
// to the bridges' forwarding databases (MAC -> port). Both only hold what
// traffic taught them and age out (neighbours within minutes, learned FDB
// entries after the bridge's ageing time, 300 s by default), so this is the
// fallback.
func (c *Veth) scanFDB(s *vethScan, h *netlink.Handle, veths []hostVeth, byIndex map[int]*hostVeth, record func(int, string, podEnd)) error {
	bridges := map[int]bool{}
	for _, v := range veths {
		if v.master != 0 {
			bridges[v.master] = true
		}
	}
	if len(bridges) == 0 {
		return nil
	}
	fdb, err := h.NeighList(0, unix.AF_BRIDGE)
	c.roundTrips.Add(1)
	s.interrupted = s.interrupted || errors.Is(err, netlink.ErrDumpInterrupted)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list the bridge forwarding database: %w", err)
	}
	type macKey struct {
		bridge int
		mac    string
	}
	port := map[macKey]int{}
	for _, n := range fdb {
		v := byIndex[n.LinkIndex]
		// Permanent entries are the ports' own (local) addresses; learned
		// ones are the stations behind the port.
		if v == nil || v.master == 0 || n.State&unix.NUD_PERMANENT != 0 || len(n.HardwareAddr) == 0 {
			continue
		}
		port[macKey{v.master, string(n.HardwareAddr)}] = n.LinkIndex
	}
	if len(port) == 0 {
		return nil
	}
	neighs, err := h.NeighList(0, netlink.FAMILY_ALL)
	c.roundTrips.Add(1)
	s.interrupted = s.interrupted || errors.Is(err, netlink.ErrDumpInterrupted)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list the node's neighbours: %w", err)
	}
	for _, n := range neighs {
		if !bridges[n.LinkIndex] || len(n.HardwareAddr) == 0 ||
			n.State&(unix.NUD_FAILED|unix.NUD_INCOMPLETE|unix.NUD_NOARP) != 0 {
			continue
		}
		p, ok := port[macKey{n.LinkIndex, string(n.HardwareAddr)}]
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || ip.IsLinkLocalUnicast() {
			continue
		}
		record(p, VethMethodFDB, podEnd{ips: []netip.Addr{ip.Unmap()}})
	}
	return nil
}

// resolved is a host veth's pod, as the winning method found it.
type resolved struct {
	pod    kube.PodRef
	iface  string
	method string
	netns  string
}

// resolve joins what the methods found to pods through the index. The
// first method in precedence order that names a pod wins; when two methods
// name different pods the disagreement is logged once.
func (c *Veth) resolve(v hostVeth, found map[string]podEnd, seen map[string]struct{}) (resolved, bool) {
	var (
		win   resolved
		ok    bool
		other []string
	)
	for _, m := range vethMethods {
		end, has := found[m]
		if !has {
			continue
		}
		ref, hit := c.podOf(end.ips)
		if !hit {
			ref, hit = c.podOf(end.nsIPs)
		}
		if !hit {
			continue
		}
		if !ok {
			win, ok = resolved{pod: ref, iface: end.iface, method: m, netns: end.netns}, true
			continue
		}
		if ref.Namespace != win.pod.Namespace || ref.Name != win.pod.Name {
			other = append(other, m+"="+ref.Namespace+"/"+ref.Name)
		}
	}
	if len(other) > 0 {
		key := v.name + "|" + win.method + "=" + win.pod.Namespace + "/" + win.pod.Name + "|" + strings.Join(other, ",")
		seen[key] = struct{}{}
		if _, logged := c.disagreed[key]; !logged {
			c.disagreed[key] = struct{}{}
			c.logger.Warn("veth mapping methods disagree; using the first",
				zap.String("host_interface", v.name),
				zap.String("method", win.method), zap.String("pod", win.pod.Namespace+"/"+win.pod.Name),
				zap.Strings("others", other))
		}
	}
	return win, ok
}

// PodNetworkNamespaces returns, as of the latest scrape, the path of the
// network namespace each pod ("namespace/name") was found in by the netns
// method. netinspect inspect shows it; it is not a metric, since paths are
// not stable identities.
func (c *Veth) PodNetworkNamespaces() map[string]string {
	if m := c.podNetns.Load(); m != nil {
		return *m
	}
	return nil
}

// podOf finds the pod that owns any of ips. Addresses of one interface all
// belong to one pod; the first hit is taken.
func (c *Veth) podOf(ips []netip.Addr) (kube.PodRef, bool) {
	for _, ip := range ips {
		if ref, ok := c.index.PodByIP(ip); ok && !ref.HostNetwork {
			return ref, true
		}
	}
	return kube.PodRef{}, false
}

type trafficKey struct{ namespace, pod, iface string }

func (c *Veth) emit(ch chan<- prometheus.Metric, veths []hostVeth, s *vethScan, now time.Time) {
	seen := map[string]struct{}{}
	traffic := map[trafficKey]*[numVethCounters]uint64{}
	var order []trafficKey
	var unmapped []string
	podNetns := map[string]string{}
	for _, v := range veths {
		r, ok := c.resolve(v, s.found[v.index], seen)
		if !ok {
			unmapped = append(unmapped, v.name)
			continue
		}
		if r.netns != "" {
			podNetns[r.pod.Namespace+"/"+r.pod.Name] = r.netns
		}
		ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1,
			r.pod.Namespace, r.pod.Name, r.iface, v.name, r.method)
		// Without the namespace the pod-side name is unknown (""), so two
		// interfaces of one pod mapped by route or fdb share their series:
		// their counters are summed.
		k := trafficKey{r.pod.Namespace, r.pod.Name, r.iface}
		t := traffic[k]
		if t == nil {
			t = new([numVethCounters]uint64)
			traffic[k] = t
			order = append(order, k)
		}
		// The host end's transmit is the pod's receive and vice versa.
		st := v.stats
		t[rxBytes] += st.TxBytes
		t[txBytes] += st.RxBytes
		t[rxPackets] += st.TxPackets
		t[txPackets] += st.RxPackets
		t[rxErrors] += st.TxErrors
		t[txErrors] += st.RxErrors
		t[rxDropped] += st.TxDropped
		t[txDropped] += st.RxDropped
	}
	for _, k := range order {
		for i, v := range traffic[k] {
			ch <- prometheus.MustNewConstMetric(c.traffic[i], prometheus.CounterValue, float64(v), k.namespace, k.pod, k.iface)
		}
	}
	c.podNetns.Store(&podNetns)
	ch <- prometheus.MustNewConstMetric(c.unmapped, prometheus.GaugeValue, float64(len(unmapped)))
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, now.Sub(s.at).Seconds())

	for k := range c.disagreed {
		if _, ok := seen[k]; !ok {
			delete(c.disagreed, k)
		}
	}
	if names := strings.Join(unmapped, ","); names != c.lastUnmapped {
		c.lastUnmapped = names
		if names != "" {
			c.logger.Debug("host veths with no pod", zap.Strings("host_interfaces", unmapped))
		}
	}
}
