package collector

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/source/links"
	"github.com/netinspect/netinspect/source/netns"
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
	// Methods are the mapping methods to use; empty means all of them.
	Methods []string
	// RescanInterval bounds how long a mapping is reused while the node's
	// veths stay the same. The node's link list, read on every scrape,
	// triggers a rescan as soon as a veth appears, goes or moves.
	RescanInterval time.Duration
	// PodConntrack reads, on every scrape, the conntrack table of each pod
	// network namespace the mapping entered (method netns): one ctnetlink
	// request per pod, never per entry.
	PodConntrack bool
}

// DefaultVethConfig is the veth collector's configuration when no flag says
// otherwise.
func DefaultVethConfig() VethConfig {
	return VethConfig{Methods: VethMethods(), RescanInterval: time.Minute, PodConntrack: true}
}

// withDefaults fills the unset fields from DefaultVethConfig.
func (cfg VethConfig) withDefaults() VethConfig {
	d := DefaultVethConfig()
	if len(cfg.Methods) == 0 {
		cfg.Methods = d.Methods
	}
	if cfg.RescanInterval <= 0 {
		cfg.RescanInterval = d.RescanInterval
	}
	return cfg
}

// vethRetryInterval is how soon a scan is repeated when some veth's pod end
// had no address yet, as while a CNI plugin is still setting it up.
const vethRetryInterval = 5 * time.Second

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
	target   netns.Target
	// retryInterval is vethRetryInterval; tests shorten it.
	retryInterval time.Duration

	info, unmapped, age *prometheus.Desc
	traffic             [numVethCounters]*prometheus.Desc
	podCT, podCTLimit   *prometheus.Desc

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
	// ctInUse holds the pod namespaces whose conntrack table has held
	// entries since they were mapped (pruned to the mapped ones).
	ctInUse map[netns.ID]bool
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

// NewVeth returns the veth collector, or an error for an unknown mapping
// method.
func NewVeth(cfg VethConfig, deps Deps) (*Veth, error) {
	cfg = cfg.withDefaults()
	methods := map[string]bool{}
	for _, m := range cfg.Methods {
		if err := oneOf("veth mapping method", m, vethMethods); err != nil {
			return nil, err
		}
		methods[m] = true
	}
	c := &Veth{
		ctInUse:       map[netns.ID]bool{},
		cfg:           cfg,
		methods:       methods,
		procfs:        deps.Paths.ProcFS,
		netnsDir:      deps.Paths.NetNS,
		logger:        deps.logger(),
		index:         deps.Index,
		retryInterval: vethRetryInterval,
		disagreed:     map[string]struct{}{},
		info: identityDesc("pod", "interface_info",
			"A pod interface whose host end (a veth) is on this node, and how it was mapped: netns, route or fdb.",
			podIdentity, "interface", "host_interface", "method"),
		unmapped: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "veth", "unmapped"),
			"Host veth interfaces whose peer is in another network namespace but belongs to no known pod.", nil, nil),
		age: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "veth", "mapping_age_seconds"),
			"Seconds since the veth-to-pod mapping was last rebuilt (network namespaces, routes, bridge tables).", nil, nil),
		podCT: identityDesc("pod", "conntrack_entries",
			"Entries in the conntrack table of the pod's own network namespace (which the node's conntrack_entries does not count), for pods whose namespace tracks connections (its table has held entries since the pod was mapped: a sidecar's REDIRECT or other NAT rules in the pod).",
			podIdentity),
		podCTLimit: identityDesc("pod", "conntrack_entries_limit",
			"The limit of the pod namespace's conntrack table: each namespace counts its own entries against the node's global nf_conntrack_max.",
			podIdentity),
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
		c.traffic[i] = identityDesc("pod", "network_"+h.name, h.help, podIdentity, "interface")
	}
	return c, nil
}

// setTarget makes the collector read the node namespace t (tests).
func (c *Veth) setTarget(t netns.Target) { c.target = t }

// vethKeyOf is what identifies a veth for the mapping; a change in any
// field calls for a rescan.
func vethKeyOf(v links.Veth) vethKey {
	return vethKey{index: v.Index, peerIndex: v.PeerIndex, nsid: v.NSID, master: v.Master, name: v.Name}
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
	// only): a bind mount under --path.netns or <procfs>/<pid>/ns/net;
	// netnsID its identity then.
	netns   string
	netnsID netns.ID
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

// VethResult is one reading of the node's veths joined to pods.
type VethResult struct {
	// Interfaces are the pod interfaces whose host end is on this node, in
	// the order of the host veths' ifindex.
	Interfaces []PodInterface
	// Traffic are the counters per pod interface, from the pod's point of
	// view; interfaces mapped without a name share one entry per pod.
	Traffic []PodTraffic
	// Unmapped are the host veths whose pod is unknown.
	Unmapped []string
	// Age is how old the mapping is.
	Age time.Duration
	// Conntrack are the pods' own conntrack tables, for the pods whose
	// namespace tracks connections (VethConfig.PodConntrack).
	Conntrack []PodConntrack
}

// PodConntrack is the conntrack table of a pod's own network namespace.
type PodConntrack struct {
	Pod            kube.PodRef
	Entries, Limit uint64
}

// PodInterface is a pod interface and its host veth.
type PodInterface struct {
	Pod kube.PodRef
	// Interface is the pod-side name; known only with method netns.
	Interface, HostInterface, Method string
	// NetNS is the path the pod's network namespace was entered through
	// (method netns), else "". Not a metric: paths are no stable identity.
	NetNS string
	// netnsID is the namespace's identity when NetNS was entered.
	netnsID netns.ID
}

// PodTraffic are the counters of one pod interface, by vethCounter.
type PodTraffic struct {
	Pod       kube.PodRef
	Interface string
	Counters  [numVethCounters]uint64
}

// Update implements Collector.
func (c *Veth) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	r, err := c.Result(ctx)
	if err != nil {
		return err
	}
	for _, p := range r.Interfaces {
		ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, podValues(p.Pod, p.Interface, p.HostInterface, p.Method)...)
	}
	for _, t := range r.Traffic {
		for i, v := range t.Counters {
			ch <- prometheus.MustNewConstMetric(c.traffic[i], prometheus.CounterValue, float64(v), podValues(t.Pod, t.Interface)...)
		}
	}
	for _, p := range r.Conntrack {
		ch <- prometheus.MustNewConstMetric(c.podCT, prometheus.GaugeValue, float64(p.Entries), podValues(p.Pod)...)
		ch <- prometheus.MustNewConstMetric(c.podCTLimit, prometheus.GaugeValue, float64(p.Limit), podValues(p.Pod)...)
	}
	ch <- prometheus.MustNewConstMetric(c.unmapped, prometheus.GaugeValue, float64(len(r.Unmapped)))
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, r.Age.Seconds())
	return nil
}

// Result reads the node's links (one netlink dump, which carries the
// counters), rebuilds the mapping when needed, and joins it to pods.
func (c *Veth) Result(ctx context.Context) (*VethResult, error) {
	r, err := links.Open(ctx, c.target)
	if err != nil {
		return nil, fmt.Errorf("node's network namespace: %w", err)
	}
	defer func() {
		c.roundTrips.Add(r.RoundTrips())
		r.Close()
	}()
	veths, err := r.Veths()
	if err != nil {
		return nil, err
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if c.needScan(veths, now) {
		s, err := c.rescan(ctx, r, veths, now)
		if err != nil {
			return nil, err
		}
		c.scan = s
	}
	res := c.join(veths, c.scan, now)
	if c.cfg.PodConntrack {
		res.Conntrack = c.podConntrack(ctx, res.Interfaces)
	}
	return res, nil
}

func (c *Veth) needScan(veths []links.Veth, now time.Time) bool {
	s := c.scan
	if s == nil || len(s.keys) != len(veths) {
		return true
	}
	for i, v := range veths {
		if s.keys[i] != vethKeyOf(v) {
			return true
		}
	}
	age := now.Sub(s.at)
	return s.interrupted || age >= c.cfg.RescanInterval || (s.retry && age >= c.retryInterval)
}

// rescan builds a new mapping with every enabled method.
func (c *Veth) rescan(ctx context.Context, r *links.Reader, veths []links.Veth, now time.Time) (*vethScan, error) {
	s := &vethScan{at: now, found: make(map[int]map[string]podEnd, len(veths))}
	isVeth := make(map[int]bool, len(veths))
	for _, v := range veths {
		s.keys = append(s.keys, vethKeyOf(v))
		isVeth[v.Index] = true
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
			prev.netns, prev.netnsID = end.netns, end.netnsID
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
			found, interrupted, err := r.HostRoutes(isVeth)
			if err != nil {
				return nil, err
			}
			s.interrupted = s.interrupted || interrupted
			for _, f := range found {
				record(f.LinkIndex, VethMethodRoute, podEnd{ips: []netip.Addr{f.Addr}})
			}
		}
		if c.methods[VethMethodFDB] {
			found, interrupted, err := r.BridgeStations(veths)
			if err != nil {
				return nil, err
			}
			s.interrupted = s.interrupted || interrupted
			for _, f := range found {
				record(f.LinkIndex, VethMethodFDB, podEnd{ips: []netip.Addr{f.Addr}})
			}
		}
		if c.methods[VethMethodNetNS] {
			ends, warn, err := r.PeerEnds(ctx, veths, links.Namespaces{Dir: c.netnsDir, ProcFS: c.procfs})
			if warn != nil {
				c.netnsErrOnce.Do(func() {
					c.logger.Warn("cannot open a netlink socket in a pod network namespace; mapping by routes and bridge tables only (grant CAP_SYS_ADMIN and hostPID, or mount the runtime's netns directory)",
						zap.Error(warn))
				})
			}
			if err != nil {
				return nil, err
			}
			for _, e := range ends {
				record(e.HostIndex, VethMethodNetNS, podEnd{iface: e.Name, ips: e.IPs, nsIPs: e.NSIPs, netns: e.NetNS, netnsID: e.NetNSID})
			}
		}
	}
	s.noAddr = map[vethKey]int{}
	for _, v := range veths {
		hasAddr := false
		for _, end := range s.found[v.Index] {
			hasAddr = hasAddr || len(end.ips) > 0
		}
		if hasAddr {
			continue
		}
		k := vethKeyOf(v)
		n := 1
		if c.scan != nil {
			n += c.scan.noAddr[k]
		}
		s.noAddr[k] = n
		if n <= vethMaxRetries {
			s.retry = true
		}
	}
	return s, nil
}

// resolved is a host veth's pod, as the winning method found it.
type resolved struct {
	pod     kube.PodRef
	iface   string
	method  string
	netns   string
	netnsID netns.ID
}

// resolve joins what the methods found to pods through the index. The
// first method in precedence order that names a pod wins; when two methods
// name different pods the disagreement is logged once.
func (c *Veth) resolve(v links.Veth, found map[string]podEnd, seen map[string]struct{}) (resolved, bool) {
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
			win, ok = resolved{pod: ref, iface: end.iface, method: m, netns: end.netns, netnsID: end.netnsID}, true
			continue
		}
		if ref.Namespace != win.pod.Namespace || ref.Name != win.pod.Name {
			other = append(other, m+"="+ref.Namespace+"/"+ref.Name)
		}
	}
	if len(other) > 0 {
		key := v.Name + "|" + win.method + "=" + win.pod.Namespace + "/" + win.pod.Name + "|" + strings.Join(other, ",")
		seen[key] = struct{}{}
		if _, logged := c.disagreed[key]; !logged {
			c.disagreed[key] = struct{}{}
			c.logger.Warn("veth mapping methods disagree; using the first",
				zap.String("host_interface", v.Name),
				zap.String("method", win.method), zap.String("pod", win.pod.Namespace+"/"+win.pod.Name),
				zap.Strings("others", other))
		}
	}
	return win, ok
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

// join resolves every veth of the mapping s to its pod.
func (c *Veth) join(veths []links.Veth, s *vethScan, now time.Time) *VethResult {
	r := &VethResult{Age: now.Sub(s.at)}
	seen := map[string]struct{}{}
	traffic := map[trafficKey]int{} // position in r.Traffic
	for _, v := range veths {
		res, ok := c.resolve(v, s.found[v.Index], seen)
		if !ok {
			r.Unmapped = append(r.Unmapped, v.Name)
			continue
		}
		r.Interfaces = append(r.Interfaces, PodInterface{Pod: res.pod, Interface: res.iface, HostInterface: v.Name, Method: res.method, NetNS: res.netns, netnsID: res.netnsID})
		// Without the namespace the pod-side name is unknown (""), so two
		// interfaces of one pod mapped by route or fdb share their series:
		// their counters are summed.
		k := trafficKey{res.pod.Namespace, res.pod.Name, res.iface}
		i, have := traffic[k]
		if !have {
			i = len(r.Traffic)
			traffic[k] = i
			r.Traffic = append(r.Traffic, PodTraffic{Pod: kube.PodRef{Namespace: res.pod.Namespace, Name: res.pod.Name}, Interface: res.iface})
		}
		// The host end's transmit is the pod's receive and vice versa.
		t, st := &r.Traffic[i].Counters, v.Stats
		t[rxBytes] += st.TxBytes
		t[txBytes] += st.RxBytes
		t[rxPackets] += st.TxPackets
		t[txPackets] += st.RxPackets
		t[rxErrors] += st.TxErrors
		t[txErrors] += st.RxErrors
		t[rxDropped] += st.TxDropped
		t[txDropped] += st.RxDropped
	}

	for k := range c.disagreed {
		if _, ok := seen[k]; !ok {
			delete(c.disagreed, k)
		}
	}
	if names := strings.Join(r.Unmapped, ","); names != c.lastUnmapped {
		c.lastUnmapped = names
		if names != "" {
			c.logger.Debug("host veths with no pod", zap.Strings("host_interfaces", r.Unmapped))
		}
	}
	return r
}
