package collector

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/natfill"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// staleIndex is the cluster of the stale-entry tests: kube-dns (dual-stack,
// dns 53/udp and dns-tcp 53/tcp to target port 5353) with endpoints in
// every condition, a TCP Service, and a UDP Service without endpoints.
func staleIndex() *kube.Index {
	ix := kube.NewIndex(attrNode)
	ix.SetPod(kube.PodInfo{Namespace: "default", Name: "client", UID: "c1", Node: attrNode, IPs: []netip.Addr{ip("10.244.0.10")}})
	dnsPorts := []kube.EndpointPort{{Name: "dns", Port: 5353, Protocol: "udp"}, {Name: "dns-tcp", Port: 5353, Protocol: "tcp"}}
	ix.SetService(kube.ServiceInfo{Namespace: "kube-system", Name: "kube-dns", Type: "ClusterIP",
		ClusterIPs: []netip.Addr{ip("10.96.0.10"), ip("fd00:10:96::a")}, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
		Ports: []kube.ServicePortInfo{{Name: "dns", Port: 53, Protocol: "udp"}, {Name: "dns-tcp", Port: 53, Protocol: "tcp"}}})
	ep := func(addr string, ready, serving, terminating bool) kube.EndpointInfo {
		return kube.EndpointInfo{IP: ip(addr), Ready: ready, Serving: serving, Terminating: terminating, Node: "node-b", Ports: dnsPorts}
	}
	ix.SetEndpointSlice("kube-system", "kube-dns-v4", "kube-dns", []kube.EndpointInfo{
		ep("10.244.1.1", true, true, false),
		ep("10.244.1.2", false, true, true),  // terminating, still serving
		ep("10.244.1.3", false, false, true), // terminating, no longer serving
	})
	ix.SetEndpointSlice("kube-system", "kube-dns-v6", "kube-dns", []kube.EndpointInfo{
		ep("fd00:10:244:1::1", true, true, false),
		ep("fd00:10:244:1::3", false, false, true),
	})
	ix.SetService(kube.ServiceInfo{Namespace: "web", Name: "frontend", Type: "ClusterIP",
		ClusterIPs: []netip.Addr{ip("10.96.0.100")}, Ports: []kube.ServicePortInfo{{Port: 80, Protocol: "tcp"}}})
	ix.SetService(kube.ServiceInfo{Namespace: "apps", Name: "statsd", Type: "ClusterIP",
		ClusterIPs: []netip.Addr{ip("10.96.0.50")}, Ports: []kube.ServicePortInfo{{Name: "statsd", Port: 8125, Protocol: "udp"}}})
	return ix
}

func dnatTo(addr string, port uint16, flows int) natfill.DNATBackend {
	return natfill.DNATBackend{Addr: ip(addr), Port: port, Flows: flows}
}

// staleServices are the DNATed flows of the stale-entry tests. Against
// staleIndex, kube-proxy v1.37.2 deletes: kube-dns 150 + 120 + 50 (IPv4) +
// 80 + 60 (IPv6) = 460, statsd 90; of them, the entries to addresses no
// endpoint holds (10.244.9.9, fd00:10:244:9::9, 10.244.2.7) black-hole
// traffic even when no packet refreshes them: 120 + 60 + 90 = 270.
var staleServices = []natfill.DNATService{
	{Addr: ip("10.96.0.10"), Port: 53, Backends: []natfill.DNATBackend{
		dnatTo("10.244.1.1", 5353, 300), // ready: kept
		dnatTo("10.244.1.2", 5353, 200), // serving while terminating: kept
		dnatTo("10.244.1.3", 5353, 150), // no longer serving: stale
		dnatTo("10.244.9.9", 5353, 120), // gone: stale, black hole
		dnatTo("10.244.1.1", 53, 50),    // a serving address on the wrong port: stale
	}},
	{Addr: ip("fd00:10:96::a"), Port: 53, Backends: []natfill.DNATBackend{
		dnatTo("fd00:10:244:1::1", 5353, 100), // ready: kept
		dnatTo("fd00:10:244:1::3", 5353, 80),  // no longer serving: stale
		dnatTo("fd00:10:244:9::9", 5353, 60),  // gone: stale, black hole
	}},
	{Addr: ip("10.96.0.10"), Port: 53, Proto: unix.IPPROTO_TCP, Backends: []natfill.DNATBackend{
		dnatTo("10.244.9.9", 5353, 70), // TCP: never stale in kube-proxy's sense
	}},
	{Addr: ip("10.96.0.100"), Port: 80, Proto: unix.IPPROTO_TCP, Backends: []natfill.DNATBackend{
		dnatTo("10.244.9.8", 8080, 100), // TCP, to a Service without endpoints: not stale
	}},
	{Addr: ip("10.96.0.50"), Port: 8125, Backends: []natfill.DNATBackend{
		dnatTo("10.244.2.7", 8125, 90), // a Service without endpoints: stale, black hole
	}},
}

// staleKeys are the (frontend, backend) pairs of staleServices that are
// stale, as the test reads them (not from the code under test).
var staleKeys = map[string]string{ // "frontend -> reply source": service
	"10.96.0.10:53 -> 10.244.1.3:5353":              "kube-dns",
	"10.96.0.10:53 -> 10.244.9.9:5353":              "kube-dns",
	"10.96.0.10:53 -> 10.244.1.1:53":                "kube-dns",
	"[fd00:10:96::a]:53 -> [fd00:10:244:1::3]:5353": "kube-dns",
	"[fd00:10:96::a]:53 -> [fd00:10:244:9::9]:5353": "kube-dns",
	"10.96.0.50:8125 -> 10.244.2.7:8125":            "statsd",
}

// TestStaleEntriesMatchConntrackOnADNATTable fills a namespace with real
// DNATed flows (IPv4 and IPv6, UDP and TCP) and checks the stale counts
// against what `conntrack -L --dst-nat` lists for the stale pairs.
func TestStaleEntriesMatchConntrackOnADNATTable(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netns.New(t, "stale")
	filled := natfill.FillDNAT(t, ns, staleServices)
	listed := natfill.DNATCounts(natfill.List(t, ns, natfill.DstNAT))
	perService := map[string]int{}
	total, gone := 0, 0
	for k, n := range listed {
		if filled.Counts[k] != n {
			t.Errorf("conntrack -L lists %d entries %s, natfill made %d", n, k, filled.Counts[k])
		}
		key := fmt.Sprintf("%s -> %s", k.OrigDst, k.ReplySrc)
		if svc, ok := staleKeys[key]; ok && k.Proto == unix.IPPROTO_UDP {
			perService[svc] += n
			total += n
			if a := k.ReplySrc.Addr(); a == ip("10.244.9.9") || a == ip("fd00:10:244:9::9") || a == ip("10.244.2.7") {
				gone += n
			}
		}
	}
	if total != 550 || gone != 270 {
		t.Fatalf("conntrack -L: %d stale entries of which %d gone, want 550 and 270: %v", total, gone, listed)
	}

	// Just filled: every entry got its packet within the interval, so
	// every stale one black-holes.
	a := newNetnsAttribution(t, ns, staleIndex(), 0)
	mustPass(t, a)
	want := func(blackholeDNS, blackholeStatsd, blackholeNode int) map[string]float64 {
		return map[string]float64{
			`netinspect_conntrack_stale_entries{namespace="apps",protocol="udp",service="statsd"}`:                    float64(perService["statsd"]),
			`netinspect_conntrack_stale_entries{namespace="kube-system",protocol="udp",service="kube-dns"}`:           float64(perService["kube-dns"]),
			`netinspect_conntrack_stale_blackhole_entries{namespace="apps",protocol="udp",service="statsd"}`:          float64(blackholeStatsd),
			`netinspect_conntrack_stale_blackhole_entries{namespace="kube-system",protocol="udp",service="kube-dns"}`: float64(blackholeDNS),
			`netinspect_conntrack_stale_node_entries`:                                                                 float64(total),
			`netinspect_conntrack_stale_node_blackhole_entries`:                                                       float64(blackholeNode),
		}
	}
	compareSeries(t, gather(t, a), want(perService["kube-dns"], perService["statsd"], total),
		"netinspect_conntrack_stale_entries", "netinspect_conntrack_stale_blackhole_entries", "netinspect_conntrack_stale_node_")
	r := a.current()
	if mt := r.Stale.MaxTimeout; mt > natfill.DNATTimeout || mt < natfill.DNATTimeout-time.Minute {
		t.Errorf("longest remaining timeout %v, want about %v (natfill's UDP timeout)", mt, natfill.DNATTimeout)
	}
	if !r.Stale.OldestStart.IsZero() {
		t.Errorf("oldest start %v with nf_conntrack_timestamp off", r.Stale.OldestStart)
	}
	pairs := map[string]uint64{}
	for _, p := range r.Stale.Pairs {
		pairs[fmt.Sprintf("%s -> %s", p.Frontend, p.ReplySource)] = p.Entries
	}
	for k, n := range listed {
		key := fmt.Sprintf("%s -> %s", k.OrigDst, k.ReplySrc)
		if _, stale := staleKeys[key]; stale && k.Proto == unix.IPPROTO_UDP && pairs[key] != uint64(n) {
			t.Errorf("pair %s: %d stale entries, conntrack -L lists %d", key, pairs[key], n)
		}
	}
	if len(pairs) != len(staleKeys) {
		t.Errorf("%d stale pairs, want %d: %v", len(pairs), len(staleKeys), pairs)
	}

	// With a one-second interval and no packet for two: only the entries
	// to addresses nobody holds still black-hole.
	quiet := in(must(NewAttribution(AttributionConfig{Interval: time.Second},
		Deps{Logger: zaptest.NewLogger(t), Paths: Paths{ProcFS: "/proc"}, Index: staleIndex()}))(t), ns)
	time.Sleep(2500 * time.Millisecond)
	mustPass(t, quiet)
	compareSeries(t, gather(t, quiet), want(120+60, 90, gone),
		"netinspect_conntrack_stale_entries", "netinspect_conntrack_stale_blackhole_entries", "netinspect_conntrack_stale_node_")
}

// compareSeries checks that the series of got whose names start with one
// of prefixes are exactly want.
func compareSeries(t *testing.T, got, want map[string]float64, prefixes ...string) {
	t.Helper()
	seen := map[string]bool{}
	for k, v := range got {
		for _, p := range prefixes {
			if strings.HasPrefix(k, p) {
				seen[k] = true
				if w, ok := want[k]; !ok || w != v {
					t.Errorf("%s = %v, want %v (present: %v)", k, v, w, ok)
				}
			}
		}
	}
	for k, v := range want {
		if !seen[k] {
			t.Errorf("%s missing, want %v", k, v)
		}
	}
}

// TestStaleEntriesTopKAndTimestamps: services beyond the top-K are summed
// into service=""; with nf_conntrack_timestamp on, the oldest stale
// entry's age is exported.
func TestStaleEntriesTopKAndTimestamps(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netns.New(t, "stale-ts")
	ns.SetSysctl("net.netfilter.nf_conntrack_timestamp", "1")
	before := time.Now()
	natfill.FillDNAT(t, ns, staleServices)
	a := newNetnsAttribution(t, ns, staleIndex(), 1)
	mustPass(t, a)
	got := gather(t, a)
	compareSeries(t, got, map[string]float64{
		`netinspect_conntrack_stale_entries{namespace="",protocol="udp",service=""}`:                    90,
		`netinspect_conntrack_stale_entries{namespace="kube-system",protocol="udp",service="kube-dns"}`: 460,
	}, "netinspect_conntrack_stale_entries")
	r := a.current()
	if r.Stale.OldestStart.Before(before.Add(-time.Second)) || r.Stale.OldestStart.After(r.Finished) {
		t.Errorf("oldest stale entry started %v, want between %v and %v", r.Stale.OldestStart, before, r.Finished)
	}
	age, ok := got["netinspect_conntrack_stale_oldest_age_seconds"]
	if !ok || age < 0 || age > time.Since(before).Seconds()+1 {
		t.Errorf("netinspect_conntrack_stale_oldest_age_seconds = %v (present %v), want between 0 and %v", age, ok, time.Since(before).Seconds())
	}
}

// TestHealthyNodeHasNoStaleEntries: flows DNATed only to serving endpoints
// give exactly zero, and the node series are present at 0.
func TestHealthyNodeHasNoStaleEntries(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netns.New(t, "stale-ok")
	natfill.FillDNAT(t, ns, []natfill.DNATService{
		{Addr: ip("10.96.0.10"), Port: 53, Backends: []natfill.DNATBackend{dnatTo("10.244.1.1", 5353, 300), dnatTo("10.244.1.2", 5353, 100)}},
		{Addr: ip("fd00:10:96::a"), Port: 53, Backends: []natfill.DNATBackend{dnatTo("fd00:10:244:1::1", 5353, 100)}},
		// Draining TCP connections to an endpoint that left: not stale.
		{Addr: ip("10.96.0.10"), Port: 53, Proto: unix.IPPROTO_TCP, Backends: []natfill.DNATBackend{dnatTo("10.244.1.3", 5353, 100)}},
	})
	a := newNetnsAttribution(t, ns, staleIndex(), 0)
	mustPass(t, a)
	compareSeries(t, gather(t, a), map[string]float64{
		"netinspect_conntrack_stale_node_entries":           0,
		"netinspect_conntrack_stale_node_blackhole_entries": 0,
		"netinspect_conntrack_stale_max_timeout_seconds":    0,
	}, "netinspect_conntrack_stale_")
	if n := a.current().Scanned; n != 600 {
		t.Errorf("scanned %d entries, want 600", n)
	}
}

// TestStaleEntriesWithUnreadableTimeouts: a procfs without the UDP timeout
// sysctls (and without the modules file) still counts stale entries, judges
// refreshes by the kernel's default timeouts, and says so once at debug
// level; the pass succeeds.
func TestStaleEntriesWithUnreadableTimeouts(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netns.New(t, "stale-noproc")
	natfill.FillDNAT(t, ns, staleServices[4:]) // statsd: 90 stale entries
	root := t.TempDir()
	dir := filepath.Join(root, "sys/net/netfilter")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nf_conntrack_max"), []byte("262144\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	a := in(must(NewAttribution(AttributionConfig{Interval: time.Hour},
		Deps{Logger: zap.New(core), Paths: Paths{ProcFS: root}, Index: staleIndex()}))(t), ns)
	for range 2 {
		mustPass(t, a)
	}
	r := a.current().Stale
	if r.Entries != 90 || r.Blackhole != 90 {
		t.Errorf("stale %d, black-holing %d; want 90 and 90", r.Entries, r.Blackhole)
	}
	if a.judge.udpTimeout != defaultUDPTimeout || a.judge.udpStream != defaultUDPStreamTimeout {
		t.Errorf("UDP timeouts %d/%d, want the kernel defaults", a.judge.udpTimeout, a.judge.udpStream)
	}
	if n := logs.FilterMessageSnippet("use defaults").FilterLevelExact(zapcore.DebugLevel).Len(); n != 1 {
		t.Errorf("%d debug logs about the defaults, want 1: %v", n, logs.All())
	}
}

// TestStaleSeriesAreBounded: with 10,000 UDP Services in the index and
// stale entries for 500 of them, the stale series are the top-K (100) plus
// one sum per protocol, twice (stale and black-holing); with every entry
// DNATed to a serving endpoint, none at all. The node series are 3 either
// way.
func TestStaleSeriesAreBounded(t *testing.T) {
	testenv.RequireRoot(t)
	const services, staleFor = 10000, 500
	build := func(withEndpoints bool) *kube.Index {
		ix := kube.NewIndex(attrNode)
		for i := range services {
			name := fmt.Sprintf("svc-%d", i)
			ix.SetService(kube.ServiceInfo{Namespace: "bench", Name: name, Type: "ClusterIP",
				ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
				Ports:      []kube.ServicePortInfo{{Name: "dns", Port: 53, Protocol: "udp"}}})
			if withEndpoints {
				ix.SetEndpointSlice("bench", name+"-1", name, []kube.EndpointInfo{{IP: netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}),
					Ready: true, Serving: true, Ports: []kube.EndpointPort{{Name: "dns", Port: 53, Protocol: "udp"}}}})
			}
		}
		return ix
	}
	ns := netns.New(t, "stale-bound")
	var specs []ctfill.Spec
	for i := range staleFor {
		specs = append(specs, ctfill.Spec{Count: 1 + i%3, Src: ip("10.1.0.1"), Dst: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), DstPort: 53,
			ReplySrc: netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})})
	}
	fillFlows(t, ns, specs)
	count := func(ix *kube.Index) (perService, node int) {
		a := newNetnsAttribution(t, ns, ix, 100)
		mustPass(t, a)
		for k := range gather(t, a) {
			switch {
			case strings.HasPrefix(k, "netinspect_conntrack_stale_entries{"), strings.HasPrefix(k, "netinspect_conntrack_stale_blackhole_entries{"):
				perService++
			case strings.HasPrefix(k, "netinspect_conntrack_stale_"):
				node++
			}
		}
		return perService, node
	}
	if s, n := count(build(false)); s != 2*(100+1) || n != 3 {
		t.Errorf("stale for %d of %d Services: %d per-service and %d node series, want %d and 3", staleFor, services, s, n, 2*(100+1))
	}
	if s, n := count(build(true)); s != 0 || n != 3 {
		t.Errorf("healthy: %d per-service and %d node series, want 0 and 3", s, n)
	}
}
