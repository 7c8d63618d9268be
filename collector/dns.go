package collector

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/source/dnsprobe"
	"github.com/netinspect/netinspect/source/netns"
)

// DNSName is the DNS probe collector's name in flags and metrics.
const DNSName = "dns"

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
}

// DefaultDNSConfig is the DNS probe collector's configuration when no flag
// says otherwise.
func DefaultDNSConfig() DNSConfig {
	return DNSConfig{
		Service:  "kube-system/kube-dns",
		Names:    []string{"kubernetes.default.svc.cluster.local"},
		Interval: 15 * time.Second,
		Timeout:  2 * time.Second,
	}
}

// withDefaults fills the unset fields from DefaultDNSConfig.
func (cfg DNSConfig) withDefaults() DNSConfig {
	d := DefaultDNSConfig()
	if cfg.Service == "" {
		cfg.Service = d.Service
	}
	cfg.Names = slices.Clone(cfg.Names)
	if len(cfg.Names) == 0 {
		cfg.Names = d.Names
	}
	if cfg.Interval <= 0 {
		cfg.Interval = d.Interval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = d.Timeout
	}
	return cfg
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
	target           netns.Target
	success, rcode   *prometheus.Desc
	duration, match  *prometheus.Desc
	serverInfo, last *prometheus.Desc

	// hists accumulates the duration histograms between rounds; only the
	// refresher touches it.
	hists map[dnsKey]*dnsHist

	r *refresher[*DNSResult]
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

// DNSProbeResult is one probe's outcome.
type DNSProbeResult struct {
	Server, Name, Protocol string
	OK                     bool
	answered               bool
	rcode                  string
	match                  int // 1 or 0; -1 when the name is not a Service known to the index
	seconds                float64
	err                    error
}

func (r *DNSProbeResult) key() dnsKey { return dnsKey{r.Server, r.Name, r.Protocol} }

// DNSResult is an immutable probe round.
type DNSResult struct {
	err     error // the round could not run (Service not found)
	servers []dnsServer
	// Probes are the round's probes.
	Probes []DNSProbeResult
	hists  map[dnsKey]dnsHist
}

// NewDNS returns the DNS probe collector. Start runs its probes.
func NewDNS(cfg DNSConfig, deps Deps) (*DNS, error) {
	cfg = cfg.withDefaults()
	ns, svc, ok := strings.Cut(cfg.Service, "/")
	if !ok || ns == "" || svc == "" || strings.Contains(svc, "/") {
		return nil, fmt.Errorf("DNS service %q: want namespace/name, e.g. %s", cfg.Service, DefaultDNSConfig().Service)
	}
	for i, n := range cfg.Names {
		n = strings.TrimSpace(n)
		if !dnsprobe.IsDomainName(n) {
			return nil, fmt.Errorf("DNS probe name %q is not a domain name", n)
		}
		cfg.Names[i] = n
	}
	labels := []string{"server", "name", "protocol"}
	d := &DNS{
		cfg: cfg, ns: ns, svc: svc, index: deps.Index, logger: deps.logger(),
		hists: map[dnsKey]*dnsHist{},
		success: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "dns", "probe_success"),
			"Whether the last query for name to server over protocol got a NOERROR answer with at least one record (1) or not (0).", labels, nil),
		duration: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "dns", "probe_duration_seconds"),
			"Time from dial to answer (or to the error or timeout) of the DNS probe queries.", labels, nil),
		rcode: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "dns", "probe_response_code"),
			"Response code of the last answer for name from server over protocol (1 for the code it had); absent when no answer came.", append(labels, "rcode"), nil),
		match: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "dns", "probe_answer_matches_service"),
			"Whether the addresses of the last answer equal the ClusterIPs the API has for the Service the name names (<service>.<namespace>.svc.<domain>); absent when the name is not such a Service or no answer came.", labels, nil),
		serverInfo: identityDesc("dns", "probe_server_info",
			"The servers probed: the DNS Service's ClusterIPs (kind service) and its endpoints (kind endpoint, with their pod from the index).", podIdentity, "server", "kind"),
		last: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "dns", "probe_last_round_timestamp_seconds"),
			"When the last round of DNS probes started.", nil, nil),
	}
	// A round is bounded by its probes' timeouts, not as a whole. A round
	// that cannot run (no Service) is a failed read.
	d.r = newRefresher(DNSName, cfg.Interval, 0, func(ctx context.Context) (*DNSResult, error) {
		r := d.probeAll(ctx)
		return r, r.err
	})
	return d, nil
}

// setTarget makes the collector send its probes from the network namespace
// t (tests).
func (d *DNS) setTarget(t netns.Target) { d.target = t }

// Start runs a probe round now and then every interval until ctx is done.
func (d *DNS) Start(ctx context.Context) error { return d.r.Start(ctx) }

// Close stops the probe rounds and waits for the one running.
func (d *DNS) Close() { d.r.Close() }

// Result is the last round.
func (d *DNS) Result(context.Context) (*DNSResult, error) {
	s := d.r.Snapshot()
	if s == nil {
		return nil, fmt.Errorf("DNS probes: %w: %w", ErrNotReady, ErrNoData)
	}
	if s.Err != nil {
		return nil, s.Err
	}
	return s.Value, nil
}

// Update sends the last round's results; it never waits for a probe.
func (d *DNS) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	snap := d.r.Snapshot()
	if snap == nil {
		return fmt.Errorf("DNS probes: %w: %w", ErrNotReady, ErrNoData)
	}
	ch <- prometheus.MustNewConstMetric(d.last, prometheus.GaugeValue, unixSeconds(snap.Started))
	d.r.emitAge(ch, snap)
	if snap.Err != nil {
		return snap.Err
	}
	s := snap.Value
	for _, sv := range s.servers {
		ch <- prometheus.MustNewConstMetric(d.serverInfo, prometheus.GaugeValue, 1, podValues(kube.PodRef{Namespace: sv.namespace, Name: sv.pod}, sv.addr.String(), sv.kind)...)
	}
	for _, r := range s.Probes {
		k := r.key()
		ch <- prometheus.MustNewConstMetric(d.success, prometheus.GaugeValue, b2f(r.OK), k.server, k.name, k.protocol)
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
func (d *DNS) probeAll(ctx context.Context) *DNSResult {
	snap := &DNSResult{}
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
	results := make([]DNSProbeResult, len(jobs))
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
		live[r.key()] = true
		h := d.hists[r.key()]
		if h == nil {
			h = &dnsHist{buckets: make([]uint64, len(dnsDurationBuckets))}
			d.hists[r.key()] = h
		}
		h.count++
		h.sum += r.seconds
		for i, ub := range dnsDurationBuckets {
			if r.seconds <= ub {
				h.buckets[i]++
				break
			}
		}
		if !r.OK {
			d.logger.Debug("DNS probe failed", zap.String("server", r.Server), zap.String("name", r.Name),
				zap.String("protocol", r.Protocol), zap.String("rcode", r.rcode), zap.Error(r.err))
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
	snap.Probes = results
	return snap
}

// probe sends one query for name to server over proto and reads the answer,
// bounded by the configured timeout.
func (d *DNS) probe(ctx context.Context, server netip.AddrPort, name, proto string, known map[[2]string][]netip.Addr) (r DNSProbeResult) {
	r = DNSProbeResult{Server: server.Addr().String(), Name: name, Protocol: proto, match: -1}
	start := time.Now()
	a, err := dnsprobe.Query(ctx, d.target, server, name, proto, d.cfg.Timeout)
	r.seconds = time.Since(start).Seconds()
	r.err = err
	if a == nil {
		return r
	}
	r.answered, r.rcode, r.OK = true, a.Rcode, a.OK
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
				if sameAddrs(a.Addrs, want) {
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
