package collector

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/kube"
	sourcens "github.com/netinspect/netinspect/source/netns"
	cpl "github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/netns"
)

// dnsTestName is the name the test servers answer.
const dnsTestName = "kubernetes.default.svc.cluster.local"

// dnsTestServer is a DNS server of the test's own on UDP and TCP at one
// address inside a network namespace. mode is "good" (answers the names it
// knows, NXDOMAIN otherwise), "servfail", "wrong" (answers a wrong address)
// or "silent" (never answers).
type dnsTestServer struct {
	servers []*dns.Server
	// queried receives the name of each query, when there is room.
	queried chan string
}

func startDNSTestServer(t testing.TB, nsPath, addr, mode string, answers map[string]netip.Addr) *dnsTestServer {
	t.Helper()
	var (
		pc net.PacketConn
		l  net.Listener
	)
	if err := sourcens.Do(nsPath, func() error {
		var err error
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return err
		}
		l, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, nsPath, err)
	}
	queried := make(chan string, 16)
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		select {
		case queried <- q.Question[0].Name:
		default:
		}
		m := new(dns.Msg)
		m.SetReply(q)
		switch mode {
		case "silent":
			return
		case "servfail":
			m.Rcode = dns.RcodeServerFailure
		default:
			name := strings.TrimSuffix(q.Question[0].Name, ".")
			ip, ok := answers[name]
			if !ok {
				m.Rcode = dns.RcodeNameError
				break
			}
			if mode == "wrong" {
				ip = netip.MustParseAddr("192.0.2.1")
			}
			if q.Question[0].Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
					A:   ip.AsSlice()})
			}
		}
		w.WriteMsg(m)
	})
	s := &dnsTestServer{servers: []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}}, queried: queried}
	for _, srv := range s.servers {
		go srv.ActivateAndServe()
	}
	t.Cleanup(s.Stop)
	return s
}

// Stop stops the server; its ports are closed when Stop returns, so
// queries to it are refused (ICMP port unreachable, TCP reset).
func (s *dnsTestServer) Stop() {
	for _, srv := range s.servers {
		srv.Shutdown()
		if srv.PacketConn != nil {
			srv.PacketConn.Close()
		}
		if srv.Listener != nil {
			srv.Listener.Close()
		}
	}
}

// dnsTestScrape is a prometheus.Collector running one Update of c.
type dnsTestScrape struct{ c Collector }

func (dnsTestScrape) Describe(chan<- *prometheus.Desc) {}
func (s dnsTestScrape) Collect(ch chan<- prometheus.Metric) {
	s.c.Update(context.Background(), ch)
}

var dnsCompared = []string{
	"netinspect_dns_probe_success", "netinspect_dns_probe_response_code",
	"netinspect_dns_probe_answer_matches_service", "netinspect_dns_probe_server_info",
}

// TestDNSProbeServers probes one ClusterIP and five endpoints that behave
// differently, from inside a network namespace, with the index built by
// hand: good, SERVFAIL, a wrong address, silent (the timeout bounds it) and
// nothing listening.
func TestDNSProbeServers(t *testing.T) {
	ns := netns.New(t, "dns")
	for _, a := range []string{"10.96.0.10", "10.244.0.2", "10.244.0.3", "10.244.0.4", "10.244.0.5", "10.244.0.6"} {
		ns.MustRun("ip", "addr", "add", a+"/32", "dev", "lo")
	}
	answers := map[string]netip.Addr{dnsTestName: netip.MustParseAddr("10.96.0.1")}
	startDNSTestServer(t, ns.Path(), "10.96.0.10:53", "good", answers)
	startDNSTestServer(t, ns.Path(), "10.244.0.2:5353", "good", answers)
	startDNSTestServer(t, ns.Path(), "10.244.0.3:5353", "servfail", answers)
	startDNSTestServer(t, ns.Path(), "10.244.0.4:5353", "wrong", answers)
	startDNSTestServer(t, ns.Path(), "10.244.0.5:5353", "silent", answers)

	ix := kube.NewIndex("node-1")
	ix.SetService(kube.ServiceInfo{Namespace: "default", Name: "kubernetes", Type: "ClusterIP",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")},
		Ports:      []kube.ServicePortInfo{{Name: "https", Port: 443, Protocol: "tcp"}}})
	ix.SetService(kube.ServiceInfo{Namespace: "kube-system", Name: "kube-dns", Type: "ClusterIP",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports: []kube.ServicePortInfo{
			{Name: "dns", Port: 53, Protocol: "udp"}, {Name: "dns-tcp", Port: 53, Protocol: "tcp"},
			{Name: "metrics", Port: 9153, Protocol: "tcp"}}})
	var eps []kube.EndpointInfo
	for i, pod := range []string{"good", "servfail", "wrong", "silent", "gone"} {
		eps = append(eps, kube.EndpointInfo{
			IP: netip.AddrFrom4([4]byte{10, 244, 0, byte(2 + i)}), Ready: pod != "gone", Node: "node-1",
			Pod: kube.PodRef{Namespace: "kube-system", Name: "coredns-" + pod},
			Ports: []kube.EndpointPort{
				{Name: "metrics", Port: 9153, Protocol: "tcp"},
				{Name: "dns", Port: 5353, Protocol: "udp"}, {Name: "dns-tcp", Port: 5353, Protocol: "tcp"}},
		})
	}
	ix.SetEndpointSlice("kube-system", "kube-dns-abc", "kube-dns", eps)

	d, err := inNS(NewDNS(DNSConfig{
		Names:   []string{dnsTestName, "missing.default.svc.cluster.local"},
		Timeout: 300 * time.Millisecond}, Deps{Logger: zap.NewNop(), Index: ix}))(ns)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Update(context.Background(), make(chan prometheus.Metric, 10)); !errors.Is(err, ErrNoData) {
		t.Fatalf("Update before the first round: %v, want ErrNoData", err)
	}
	d.r.refresh(context.Background())
	d.r.refresh(context.Background())

	want := `
# HELP netinspect_dns_probe_answer_matches_service Whether the addresses of the last answer equal the ClusterIPs the API has for the Service the name names (<service>.<namespace>.svc.<domain>); absent when the name is not such a Service or no answer came.
# TYPE netinspect_dns_probe_answer_matches_service gauge
netinspect_dns_probe_answer_matches_service{name="kubernetes.default.svc.cluster.local",protocol="tcp",server="10.244.0.2"} 1
netinspect_dns_probe_answer_matches_service{name="kubernetes.default.svc.cluster.local",protocol="tcp",server="10.244.0.3"} 0
netinspect_dns_probe_answer_matches_service{name="kubernetes.default.svc.cluster.local",protocol="tcp",server="10.244.0.4"} 0
netinspect_dns_probe_answer_matches_service{name="kubernetes.default.svc.cluster.local",protocol="tcp",server="10.96.0.10"} 1
netinspect_dns_probe_answer_matches_service{name="kubernetes.default.svc.cluster.local",protocol="udp",server="10.244.0.2"} 1
netinspect_dns_probe_answer_matches_service{name="kubernetes.default.svc.cluster.local",protocol="udp",server="10.244.0.3"} 0
netinspect_dns_probe_answer_matches_service{name="kubernetes.default.svc.cluster.local",protocol="udp",server="10.244.0.4"} 0
netinspect_dns_probe_answer_matches_service{name="kubernetes.default.svc.cluster.local",protocol="udp",server="10.96.0.10"} 1
# HELP netinspect_dns_probe_response_code Response code of the last answer for name from server over protocol (1 for the code it had); absent when no answer came.
# TYPE netinspect_dns_probe_response_code gauge
netinspect_dns_probe_response_code{name="kubernetes.default.svc.cluster.local",protocol="tcp",rcode="NOERROR",server="10.244.0.2"} 1
netinspect_dns_probe_response_code{name="kubernetes.default.svc.cluster.local",protocol="tcp",rcode="NOERROR",server="10.244.0.4"} 1
netinspect_dns_probe_response_code{name="kubernetes.default.svc.cluster.local",protocol="tcp",rcode="NOERROR",server="10.96.0.10"} 1
netinspect_dns_probe_response_code{name="kubernetes.default.svc.cluster.local",protocol="tcp",rcode="SERVFAIL",server="10.244.0.3"} 1
netinspect_dns_probe_response_code{name="kubernetes.default.svc.cluster.local",protocol="udp",rcode="NOERROR",server="10.244.0.2"} 1
netinspect_dns_probe_response_code{name="kubernetes.default.svc.cluster.local",protocol="udp",rcode="NOERROR",server="10.244.0.4"} 1
netinspect_dns_probe_response_code{name="kubernetes.default.svc.cluster.local",protocol="udp",rcode="NOERROR",server="10.96.0.10"} 1
netinspect_dns_probe_response_code{name="kubernetes.default.svc.cluster.local",protocol="udp",rcode="SERVFAIL",server="10.244.0.3"} 1
netinspect_dns_probe_response_code{name="missing.default.svc.cluster.local",protocol="tcp",rcode="NXDOMAIN",server="10.244.0.2"} 1
netinspect_dns_probe_response_code{name="missing.default.svc.cluster.local",protocol="tcp",rcode="NXDOMAIN",server="10.244.0.4"} 1
netinspect_dns_probe_response_code{name="missing.default.svc.cluster.local",protocol="tcp",rcode="NXDOMAIN",server="10.96.0.10"} 1
netinspect_dns_probe_response_code{name="missing.default.svc.cluster.local",protocol="tcp",rcode="SERVFAIL",server="10.244.0.3"} 1
netinspect_dns_probe_response_code{name="missing.default.svc.cluster.local",protocol="udp",rcode="NXDOMAIN",server="10.244.0.2"} 1
netinspect_dns_probe_response_code{name="missing.default.svc.cluster.local",protocol="udp",rcode="NXDOMAIN",server="10.244.0.4"} 1
netinspect_dns_probe_response_code{name="missing.default.svc.cluster.local",protocol="udp",rcode="NXDOMAIN",server="10.96.0.10"} 1
netinspect_dns_probe_response_code{name="missing.default.svc.cluster.local",protocol="udp",rcode="SERVFAIL",server="10.244.0.3"} 1
# HELP netinspect_dns_probe_server_info The servers probed: the DNS Service's ClusterIPs (kind service) and its endpoints (kind endpoint, with their pod from the index).
# TYPE netinspect_dns_probe_server_info gauge
netinspect_dns_probe_server_info{kind="endpoint",namespace="kube-system",pod="coredns-gone",server="10.244.0.6"} 1
netinspect_dns_probe_server_info{kind="endpoint",namespace="kube-system",pod="coredns-good",server="10.244.0.2"} 1
netinspect_dns_probe_server_info{kind="endpoint",namespace="kube-system",pod="coredns-servfail",server="10.244.0.3"} 1
netinspect_dns_probe_server_info{kind="endpoint",namespace="kube-system",pod="coredns-silent",server="10.244.0.5"} 1
netinspect_dns_probe_server_info{kind="endpoint",namespace="kube-system",pod="coredns-wrong",server="10.244.0.4"} 1
netinspect_dns_probe_server_info{kind="service",namespace="",pod="",server="10.96.0.10"} 1
# HELP netinspect_dns_probe_success Whether the last query for name to server over protocol got a NOERROR answer with at least one record (1) or not (0).
# TYPE netinspect_dns_probe_success gauge
netinspect_dns_probe_success{name="kubernetes.default.svc.cluster.local",protocol="tcp",server="10.244.0.2"} 1
netinspect_dns_probe_success{name="kubernetes.default.svc.cluster.local",protocol="tcp",server="10.244.0.3"} 0
netinspect_dns_probe_success{name="kubernetes.default.svc.cluster.local",protocol="tcp",server="10.244.0.4"} 1
netinspect_dns_probe_success{name="kubernetes.default.svc.cluster.local",protocol="tcp",server="10.244.0.5"} 0
netinspect_dns_probe_success{name="kubernetes.default.svc.cluster.local",protocol="tcp",server="10.244.0.6"} 0
netinspect_dns_probe_success{name="kubernetes.default.svc.cluster.local",protocol="tcp",server="10.96.0.10"} 1
netinspect_dns_probe_success{name="kubernetes.default.svc.cluster.local",protocol="udp",server="10.244.0.2"} 1
netinspect_dns_probe_success{name="kubernetes.default.svc.cluster.local",protocol="udp",server="10.244.0.3"} 0
netinspect_dns_probe_success{name="kubernetes.default.svc.cluster.local",protocol="udp",server="10.244.0.4"} 1
netinspect_dns_probe_success{name="kubernetes.default.svc.cluster.local",protocol="udp",server="10.244.0.5"} 0
netinspect_dns_probe_success{name="kubernetes.default.svc.cluster.local",protocol="udp",server="10.244.0.6"} 0
netinspect_dns_probe_success{name="kubernetes.default.svc.cluster.local",protocol="udp",server="10.96.0.10"} 1
netinspect_dns_probe_success{name="missing.default.svc.cluster.local",protocol="tcp",server="10.244.0.2"} 0
netinspect_dns_probe_success{name="missing.default.svc.cluster.local",protocol="tcp",server="10.244.0.3"} 0
netinspect_dns_probe_success{name="missing.default.svc.cluster.local",protocol="tcp",server="10.244.0.4"} 0
netinspect_dns_probe_success{name="missing.default.svc.cluster.local",protocol="tcp",server="10.244.0.5"} 0
netinspect_dns_probe_success{name="missing.default.svc.cluster.local",protocol="tcp",server="10.244.0.6"} 0
netinspect_dns_probe_success{name="missing.default.svc.cluster.local",protocol="tcp",server="10.96.0.10"} 0
netinspect_dns_probe_success{name="missing.default.svc.cluster.local",protocol="udp",server="10.244.0.2"} 0
netinspect_dns_probe_success{name="missing.default.svc.cluster.local",protocol="udp",server="10.244.0.3"} 0
netinspect_dns_probe_success{name="missing.default.svc.cluster.local",protocol="udp",server="10.244.0.4"} 0
netinspect_dns_probe_success{name="missing.default.svc.cluster.local",protocol="udp",server="10.244.0.5"} 0
netinspect_dns_probe_success{name="missing.default.svc.cluster.local",protocol="udp",server="10.244.0.6"} 0
netinspect_dns_probe_success{name="missing.default.svc.cluster.local",protocol="udp",server="10.96.0.10"} 0
`
	if err := testutil.CollectAndCompare(dnsTestScrape{d}, strings.NewReader(want), dnsCompared...); err != nil {
		t.Fatal(err)
	}
	// Every probe of both rounds is in the histograms: 6 servers x 2
	// names x 2 protocols, twice.
	if n := testutil.CollectAndCount(dnsTestScrape{d}, "netinspect_dns_probe_duration_seconds"); n != 24 {
		t.Fatalf("%d duration series, want 24", n)
	}
	for k, h := range d.r.Snapshot().Value.hists {
		if h.count != 2 {
			t.Errorf("histogram %v counts %d probes, want 2", k, h.count)
		}
	}

	// A replica that goes away takes its series along.
	ix.SetEndpointSlice("kube-system", "kube-dns-abc", "kube-dns", eps[:1])
	d.r.refresh(context.Background())
	if n := testutil.CollectAndCount(dnsTestScrape{d}, "netinspect_dns_probe_duration_seconds"); n != 8 {
		t.Fatalf("%d duration series after the slice shrank, want 8", n)
	}
}

// TestDNSScrapeNeverWaits: while a round waits on a server that never
// answers (with a timeout far longer than the test), Update returns at once
// with the last results (none yet); stopping the collector ends the round.
func TestDNSScrapeNeverWaits(t *testing.T) {
	ns := netns.New(t, "dnsw")
	ns.MustRun("ip", "addr", "add", "10.96.0.10/32", "dev", "lo")
	srv := startDNSTestServer(t, ns.Path(), "10.96.0.10:53", "silent", nil)
	ix := kube.NewIndex("node-1")
	ix.SetService(kube.ServiceInfo{Namespace: "kube-system", Name: "kube-dns", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports: []kube.ServicePortInfo{{Name: "dns", Port: 53, Protocol: "udp"}}})
	d, err := inNS(NewDNS(DNSConfig{Timeout: time.Hour, Interval: time.Hour}, Deps{Index: ix}))(ns)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	<-srv.queried // the round is waiting for the answer now
	if err := d.Update(context.Background(), make(chan prometheus.Metric, 10)); !errors.Is(err, ErrNoData) {
		t.Fatalf("Update during the first round: %v, want ErrNoData", err)
	}
	cancel()
	cpl.Eventually(t, time.Minute, func() error {
		if n := testutil.CollectAndCount(dnsTestScrape{d}, "netinspect_dns_probe_success"); n != 1 {
			return fmt.Errorf("%d success series after the round was cancelled, want 1", n)
		}
		return nil
	})
	if v := testutil.ToFloat64(dnsTestSeries{d, "netinspect_dns_probe_success"}); v != 0 {
		t.Fatalf("success %v for a server that never answered, want 0", v)
	}
}

// dnsTestSeries is a prometheus.Collector of one metric family of an Update.
type dnsTestSeries struct {
	c    Collector
	name string
}

func (dnsTestSeries) Describe(chan<- *prometheus.Desc) {}
func (s dnsTestSeries) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric, 100)
	s.c.Update(context.Background(), all)
	close(all)
	for m := range all {
		if strings.Contains(m.Desc().String(), `"`+s.name+`"`) {
			ch <- m
		}
	}
}

// TestDNSNoService: without the index, or without the Service in it, the
// collector reports no data (success 0 from the adapter), not a failure.
func TestDNSNoService(t *testing.T) {
	for _, tc := range []struct {
		name string
		ix   *kube.Index
	}{
		{"nil index", nil},
		{"service absent", kube.NewIndex("node-1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := NewDNS(DNSConfig{}, Deps{Index: tc.ix})
			if err != nil {
				t.Fatal(err)
			}
			d.r.refresh(context.Background())
			ch := make(chan prometheus.Metric, 10)
			if err := d.Update(context.Background(), ch); !errors.Is(err, ErrNoData) {
				t.Fatalf("Update: %v, want ErrNoData", err)
			}
			if len(ch) != 1 {
				t.Fatalf("%d metrics, want only the round's timestamp", len(ch))
			}
		})
	}
}

func TestDNSConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg  DNSConfig
		want string
	}{
		{DNSConfig{Service: "kube-dns"}, "want namespace/name"},
		{DNSConfig{Service: "a/b/c"}, "want namespace/name"},
		{DNSConfig{Service: "/b"}, "want namespace/name"},
		{DNSConfig{Names: []string{"bad..name"}}, "not a domain name"},
	} {
		_, err := NewDNS(tc.cfg, Deps{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewDNS(%+v): %v, want an error with %q", tc.cfg, err, tc.want)
		}
	}
}

func TestServiceOfName(t *testing.T) {
	for _, tc := range []struct {
		name, ns, svc string
		ok            bool
	}{
		{"kubernetes.default.svc.cluster.local", "default", "kubernetes", true},
		{"kube-dns.kube-system.svc.cluster.local.", "kube-system", "kube-dns", true},
		{"example.com", "", "", false},
		{"a.b.pod.cluster.local", "", "", false},
	} {
		ns, svc, ok := serviceOfName(tc.name)
		if ns != tc.ns || svc != tc.svc || ok != tc.ok {
			t.Errorf("serviceOfName(%q) = %q, %q, %v", tc.name, ns, svc, ok)
		}
	}
}
