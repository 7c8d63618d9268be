package collector

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/kube"
)

// DNSName is the DNS probe collector's name in flags and metrics.
const DNSName = "dns"

// Defaults of the DNS probe collector.
const (
	DefaultDNSService  = "kube-system/kube-dns"
	DefaultDNSName     = "kubernetes.default.svc.cluster.local"
	DefaultDNSInterval = 15 * time.Second
	DefaultDNSTimeout  = 2 * time.Second
)

// dnsMaxParallel bounds the probes in flight in one round, so a cluster DNS
// with many replicas is not hit by every query at once.
const dnsMaxParallel = 8

// dnsDurationBuckets are the buckets of dns_probe_duration_seconds: a healthy
// answer from a local CoreDNS takes well under a millisecond, a lost UDP
// datagram costs the whole timeout.
var dnsDurationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// DNSConfig configures the DNS probe collector.
type DNSConfig struct {
	// Service is the cluster DNS Service as namespace/name.
	Service string
	// Names are the names resolved against every server.
	Names []string
	// Interval is the time between the starts of two probe rounds.
	Interval time.Duration
	// Timeout bounds one probe (dial, query and answer).
	Timeout time.Duration
	// NetNSPath, when set, is a network namespace (a bind mount or
	// /proc/<pid>/ns/net) the probes are sent from, instead of the
	// exporter's own. Tests use it to probe from a node namespace.
	NetNSPath string
}

// DNS probes the cluster DNS from the node: it resolves the configured names
// against the DNS Service's ClusterIPs and against each of its endpoints
// directly (so one bad replica is visible), over UDP and TCP, in the
// background. Update serves the last round's results; a probe never blocks a
// scrape.
type DNS struct {
	cfg              DNSConfig
	ns, svc          string
	index            *kube.Index
	logger           *zap.Logger
	success, rcode   *prometheus.Desc
	duration, match  *prometheus.Desc
	serverInfo, last *prometheus.Desc

	// hists accumulates the duration histograms between rounds; only the
	// refresher touches it.
	hists map[dnsKey]*dnsHist

	mu   sync.Mutex
	snap *dnsSnapshot
}

// dnsKey identifies one probe series.
type dnsKey struct{ server, name, protocol string }

type dnsHist struct {
	count   uint64
	sum     float64
	buckets []uint64 // per upper bound, not cumulative
}

// dnsServer is one address probed: a ClusterIP or an endpoint.
type dnsServer struct {
	addr      netip.Addr
	kind      string // "service" or "endpoint"
	namespace string // the endpoint's pod, from the index; empty when unknown
	pod       string
	ports     map[string]uint16 // protocol -> port
}

// dnsResult is one probe's outcome.
type dnsResult struct {
	key      dnsKey
	ok       bool
	answered bool
	rcode    string
	match    int // 1 or 0; -1 when the name is not a Service known to the index
	seconds  float64
	err      error
}

// dnsSnapshot is an immutable probe round.
type dnsSnapshot struct {
	at      time.Time
	err     error // the round could not run (Service not found)
	servers []dnsServer
	results []dnsResult
	hists   map[dnsKey]dnsHist
}

// NewDNS returns the DNS probe collector. Start runs its probes.
func NewDNS(cfg DNSConfig, deps Deps) (*DNS, error) {
	if cfg.Service == "" {
		cfg.Service = DefaultDNSService
	}
	ns, svc, ok := strings.Cut(cfg.Service, "/")
	if !ok || ns == "" || svc == "" || strings.Contains(svc, "/") {
		return nil, fmt.Errorf("DNS service %q: want namespace/name, e.g. %s", cfg.Service, DefaultDNSService)
	}
	cfg.Names = slices.Clone(cfg.Names)
	if len(cfg.Names) == 0 {
		cfg.Names = []string{DefaultDNSName}
	}
	for i, n := range cfg.Names {
		n = strings.TrimSpace(n)
		if _, ok := dns.IsDomainName(n); !ok || n == "" {
			return nil, fmt.Errorf("DNS probe name %q is not a domain name", n)
		}
		cfg.Names[i] = n
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultDNSInterval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultDNSTimeout
	}
	logger := deps.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	labels := []string{"server", "name", "protocol"}
	d := &DNS{
		cfg: cfg, ns: ns, svc: svc, index: deps.Index, logger: logger,
		hists: map[dnsKey]*dnsHist{},
		success: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "dns", "probe_success"),
			"Whether the last query for name to server over protocol got a NOERROR answer with at least one record (1) or not (0).", labels, nil),
		duration: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "dns", "probe_duration_seconds"),
			"Time from dial to answer (or to the error or timeout) of the DNS probe queries.", labels, nil),
		rcode: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "dns", "probe_response_code"),
			"Response code of the last answer for name from server over protocol (1 for the code it had); absent when no answer came.", append(labels, "rcode"), nil),
		match: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "dns", "probe_answer_matches_service"),
			"Whether the addresses of the last answer equal the ClusterIPs the API has for the Service the name names (<service>.<namespace>.svc.<domain>); absent when the name is not such a Service or no answer came.", labels, nil),
		serverInfo: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "dns", "probe_server_info"),
			"The servers probed: the DNS Service's ClusterIPs (kind service) and its endpoints (kind endpoint, with their pod from the index).", []string{"server", "kind", "namespace", "pod"}, nil),
		last: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "dns", "probe_last_round_timestamp_seconds"),
			"When the last round of DNS probes started.", nil, nil),
	}
	return d, nil
}

// Start runs a probe round now and then every interval until ctx is done.
func (d *DNS) Start(ctx context.Context) error {
	go func() {
		t := time.NewTicker(d.cfg.Interval)
		defer t.Stop()
		for {
			d.round(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return nil
}

// Update sends the last round's results; it never waits for a probe.
func (d *DNS) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	d.mu.Lock()
	s := d.snap
	d.mu.Unlock()
	if s == nil {
		return fmt.Errorf("DNS probes: %w: %w", ErrNotReady, ErrNoData)
	}
	ch <- prometheus.MustNewConstMetric(d.last, prometheus.GaugeValue, float64(s.at.UnixNano())/1e9)
	if s.err != nil {
		return s.err
	}
	for _, sv := range s.servers {
		ch <- prometheus.MustNewConstMetric(d.serverInfo, prometheus.GaugeValue, 1, sv.addr.String(), sv.kind, sv.namespace, sv.pod)
	}
	for _, r := range s.results {
		k := r.key
		ch <- prometheus.MustNewConstMetric(d.success, prometheus.GaugeValue, b2f(r.ok), k.server, k.name, k.protocol)
		if r.answered {
			ch <- prometheus.MustNewConstMetric(d.rcode, prometheus.GaugeValue, 1, k.server, k.name, k.protocol, r.rcode)
			if r.match >= 0 {
				ch <- prometheus.MustNewConstMetric(d.match, prometheus.GaugeValue, float64(r.match), k.server, k.name, k.protocol)
			}
		}
		h := s.hists[k]
		cum := make(map[float64]uint64, len(dnsDurationBuckets))
		var acc uint64
		for i, ub := range dnsDurationBuckets {
			acc += h.buckets[i]
			cum[ub] = acc
		}
		ch <- prometheus.MustNewConstHistogram(d.duration, h.count, h.sum, cum, k.server, k.name, k.protocol)
	}
	return nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// round runs one probe round and publishes its snapshot.
func (d *DNS) round(ctx context.Context) {
	snap := d.probeAll(ctx)
	d.mu.Lock()
	d.snap = snap
	d.mu.Unlock()
}

// servers finds the DNS Service's ClusterIPs and endpoints in the index, and
// the ClusterIPs of every Service (for the answer check).
func (d *DNS) servers() ([]dnsServer, map[[2]string][]netip.Addr, error) {
	if d.index == nil {
		return nil, nil, fmt.Errorf("%w: Kubernetes enrichment is off, so the DNS Service %s/%s cannot be found", ErrNoData, d.ns, d.svc)
	}
	var (
		svc   *kube.ServiceInfo
		known = map[[2]string][]netip.Addr{}
	)
	services := d.index.Services()
	for i, s := range services {
		known[[2]string{s.Namespace, s.Name}] = s.ClusterIPs
		if s.Namespace == d.ns && s.Name == d.svc {
			svc = &services[i]
		}
	}
	if svc == nil {
		return nil, known, fmt.Errorf("%w: DNS Service %s/%s not in the index (see --collector.dns.service)", ErrNoData, d.ns, d.svc)
	}
	// The Service's DNS ports: the first UDP and the first TCP port.
	svcPorts := map[string]uint16{}
	portNames := map[string]string{}
	for _, p := range svc.Ports {
		if p.Protocol != "udp" && p.Protocol != "tcp" {
			continue
		}
		if _, dup := svcPorts[p.Protocol]; !dup {
			svcPorts[p.Protocol] = p.Port
			portNames[p.Protocol] = p.Name
		}
	}
	var out []dnsServer
	for _, ip := range svc.ClusterIPs {
		if ip.IsValid() && !ip.IsUnspecified() && len(svcPorts) > 0 {
			out = append(out, dnsServer{addr: ip, kind: "service", ports: svcPorts})
		}
	}
	seen := map[netip.Addr]bool{}
	// Not-ready endpoints are probed too: a replica failing its readiness
	// probe is the one worth seeing.
	for _, ep := range d.index.Endpoints(d.ns, d.svc) {
		if !ep.IP.IsValid() || seen[ep.IP] {
			continue
		}
		seen[ep.IP] = true
		// The endpoint's target port for each of the Service's protocols:
		// by the Service port's name, else the first of the protocol.
		ports := map[string]uint16{}
		for _, p := range ep.Ports {
			if _, ok := svcPorts[p.Protocol]; !ok {
				continue
			}
			if _, dup := ports[p.Protocol]; !dup || p.Name == portNames[p.Protocol] {
				ports[p.Protocol] = p.Port
			}
		}
		if len(ports) == 0 {
			continue
		}
		out = append(out, dnsServer{addr: ep.IP, kind: "endpoint", namespace: ep.Pod.Namespace, pod: ep.Pod.Name, ports: ports})
	}
	return out, known, nil
}

// probeAll probes every server with every name over each protocol the
// Service serves, dnsMaxParallel at a time.
func (d *DNS) probeAll(ctx context.Context) *dnsSnapshot {
	snap := &dnsSnapshot{at: time.Now()}
	servers, known, err := d.servers()
	if err != nil {
		snap.err = err
		return snap
	}
	snap.servers = servers
	type job struct {
		server netip.AddrPort
		name   string
		proto  string
	}
	var jobs []job
	for _, sv := range servers {
		for _, name := range d.cfg.Names {
			for _, proto := range []string{"udp", "tcp"} {
				if port, ok := sv.ports[proto]; ok {
					jobs = append(jobs, job{netip.AddrPortFrom(sv.addr, port), name, proto})
				}
			}
		}
	}
	results := make([]dnsResult, len(jobs))
	sem := make(chan struct{}, dnsMaxParallel)
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			results[i] = d.probe(ctx, j.server, j.name, j.proto, known)
		}()
	}
	wg.Wait()

	live := make(map[dnsKey]bool, len(results))
	for _, r := range results {
		live[r.key] = true
		h := d.hists[r.key]
		if h == nil {
			h = &dnsHist{buckets: make([]uint64, len(dnsDurationBuckets))}
			d.hists[r.key] = h
		}
		h.count++
		h.sum += r.seconds
		for i, ub := range dnsDurationBuckets {
			if r.seconds <= ub {
				h.buckets[i]++
				break
			}
		}
		if !r.ok {
			d.logger.Debug("DNS probe failed", zap.String("server", r.key.server), zap.String("name", r.key.name),
				zap.String("protocol", r.key.protocol), zap.String("rcode", r.rcode), zap.Error(r.err))
		}
	}
	// Servers that are gone (a replica replaced) take their series along.
	snap.hists = make(map[dnsKey]dnsHist, len(live))
	for k, h := range d.hists {
		if !live[k] {
			delete(d.hists, k)
			continue
		}
		snap.hists[k] = dnsHist{count: h.count, sum: h.sum, buckets: slices.Clone(h.buckets)}
	}
	snap.results = results
	return snap
}

// probe sends one query for name to server over proto and reads the answer,
// bounded by the configured timeout.
func (d *DNS) probe(ctx context.Context, server netip.AddrPort, name, proto string, known map[[2]string][]netip.Addr) (r dnsResult) {
	r = dnsResult{key: dnsKey{server: server.Addr().String(), name: name, protocol: proto}, match: -1}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	start := time.Now()
	defer func() { r.seconds = time.Since(start).Seconds() }()

	conn, err := d.dial(ctx, proto, server.String())
	if err != nil {
		r.err = err
		return r
	}
	defer conn.Close()
	// miekg/dns takes only the deadline from ctx; a cancelled ctx (the
	// exporter stopping) must end the exchange too.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	qtype := dns.TypeA
	if server.Addr().Is6() {
		qtype = dns.TypeAAAA
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: proto, Timeout: d.cfg.Timeout}
	resp, _, err := c.ExchangeWithConnContext(ctx, m, &dns.Conn{Conn: conn})
	if err != nil {
		r.err = err
		return r
	}
	r.answered = true
	r.rcode = dns.RcodeToString[resp.Rcode]
	if r.rcode == "" {
		r.rcode = strconv.Itoa(resp.Rcode)
	}
	var addrs []netip.Addr
	for _, rr := range resp.Answer {
		switch v := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(v.A.To4()); ok {
				addrs = append(addrs, a)
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(v.AAAA); ok {
				addrs = append(addrs, a)
			}
		}
	}
	r.ok = resp.Rcode == dns.RcodeSuccess && len(resp.Answer) > 0
	if !r.ok && r.err == nil {
		r.err = fmt.Errorf("answer with rcode %s and %d records", r.rcode, len(resp.Answer))
	}
	if svcNS, svcName, ok := serviceOfName(name); ok {
		if ips, ok := known[[2]string{svcNS, svcName}]; ok {
			var want []netip.Addr
			for _, ip := range ips {
				if ip.Is4() == server.Addr().Is4() {
					want = append(want, ip)
				}
			}
			if len(want) > 0 {
				r.match = 0
				if sameAddrs(addrs, want) {
					r.match = 1
				}
			}
		}
	}
	return r
}

// serviceOfName returns the Service a cluster name <service>.<namespace>.svc.<domain> names.
func serviceOfName(name string) (namespace, service string, ok bool) {
	labels := strings.Split(strings.TrimSuffix(name, "."), ".")
	if len(labels) < 4 || labels[2] != "svc" {
		return "", "", false
	}
	return labels[1], labels[0], true
}

func sameAddrs(a, b []netip.Addr) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, netip.Addr.Compare)
	slices.SortFunc(b, netip.Addr.Compare)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// dial connects to addr, from NetNSPath when it is set.
func (d *DNS) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var dl net.Dialer
	if d.cfg.NetNSPath == "" {
		return dl.DialContext(ctx, network, addr)
	}
	var conn net.Conn
	err := inNetNS(d.cfg.NetNSPath, func() error {
		var err error
		conn, err = dl.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// inNetNS runs fn on a goroutine whose OS thread has entered the network
// namespace at path, so the sockets fn creates belong to it (a socket keeps
// its namespace for life). The thread goes back to its own namespace after;
// if it cannot, it stays locked and the Go runtime discards it.
func inNetNS(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer own.Close()
		target, err := os.Open(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open network namespace %s: %w", path, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s (needs CAP_SYS_ADMIN): %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}
