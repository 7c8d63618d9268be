package collector

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/test/netns"
)

// dnsBenchSetup starts n DNS servers inside a namespace behind a kube-dns
// Service (ClusterIP 10.96.0.10, endpoints 10.244.0.2...), index by hand.
func dnsBenchSetup(b *testing.B, n int) (*netns.NS, *kube.Index) {
	ns := netns.New(b, "dnsb")
	answers := map[string]netip.Addr{dnsTestName: netip.MustParseAddr("10.96.0.1")}
	ns.MustRun("ip", "addr", "add", "10.96.0.10/32", "dev", "lo")
	startDNSTestServer(b, ns.Path(), "10.96.0.10:53", "good", answers)
	ix := kube.NewIndex("node-1")
	ix.SetService(kube.ServiceInfo{Namespace: "default", Name: "kubernetes", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")}})
	ix.SetService(kube.ServiceInfo{Namespace: "kube-system", Name: "kube-dns", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports: []kube.ServicePortInfo{{Name: "dns", Port: 53, Protocol: "udp"}, {Name: "dns-tcp", Port: 53, Protocol: "tcp"}}})
	var eps []kube.EndpointInfo
	for i := range n {
		ip := netip.AddrFrom4([4]byte{10, 244, 0, byte(2 + i)})
		ns.MustRun("ip", "addr", "add", ip.String()+"/32", "dev", "lo")
		startDNSTestServer(b, ns.Path(), ip.String()+":53", "good", answers)
		eps = append(eps, kube.EndpointInfo{IP: ip, Ready: true, Pod: kube.PodRef{Namespace: "kube-system", Name: fmt.Sprintf("coredns-%d", i)},
			Ports: []kube.EndpointPort{{Name: "dns", Port: 53, Protocol: "udp"}, {Name: "dns-tcp", Port: 53, Protocol: "tcp"}}})
	}
	ix.SetEndpointSlice("kube-system", "kube-dns-1", "kube-dns", eps)
	return ns, ix
}

// BenchmarkDNSScrape measures the scrape path (Update serving the last
// round) with 10 replicas, 2 names, UDP and TCP (44 probe series). Baseline
// in the same run: sending as many prebuilt metrics, the floor of any scrape.
func BenchmarkDNSScrape(b *testing.B) {
	ns, ix := dnsBenchSetup(b, 10)
	d, err := inNS(NewDNS(DNSConfig{Names: []string{dnsTestName, "missing.default.svc.cluster.local"}, Timeout: time.Second}, Deps{Index: ix}))(ns)
	if err != nil {
		b.Fatal(err)
	}
	d.r.refresh(context.Background())
	var prebuilt []prometheus.Metric
	ch := make(chan prometheus.Metric, 1024)
	if err := d.Update(context.Background(), ch); err != nil {
		b.Fatal(err)
	}
	for len(ch) > 0 {
		prebuilt = append(prebuilt, <-ch)
	}
	b.Run("update", func(b *testing.B) {
		b.ReportMetric(float64(len(prebuilt)), "metrics/op")
		for b.Loop() {
			d.Update(context.Background(), ch)
			for len(ch) > 0 {
				<-ch
			}
		}
	})
	b.Run("baseline-prebuilt", func(b *testing.B) {
		for b.Loop() {
			for _, m := range prebuilt {
				ch <- m
			}
			for len(ch) > 0 {
				<-ch
			}
		}
	})
}

// BenchmarkDNSProbe measures one UDP probe sent from inside a network
// namespace (setns, dial, exchange). Baseline in the same run: the same
// query with a socket made once, so the difference is the per-probe setns
// and dial.
func BenchmarkDNSProbe(b *testing.B) {
	ns, ix := dnsBenchSetup(b, 1)
	d, err := inNS(NewDNS(DNSConfig{Timeout: time.Second}, Deps{Index: ix}))(ns)
	if err != nil {
		b.Fatal(err)
	}
	server := netip.MustParseAddrPort("10.96.0.10:53")
	b.Run("probe", func(b *testing.B) {
		for b.Loop() {
			if r := d.probe(context.Background(), server, dnsTestName, "udp", nil); !r.OK {
				b.Fatal(r.err)
			}
		}
	})
	b.Run("baseline-exchange", func(b *testing.B) {
		var conn net.Conn
		err := ns.Do(func() error {
			var err error
			conn, err = (&net.Dialer{}).DialContext(context.Background(), "udp", server.String())
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		co := &dns.Conn{Conn: conn}
		c := &dns.Client{Net: "udp", Timeout: time.Second}
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(dnsTestName), dns.TypeA)
		for b.Loop() {
			if _, _, err := c.ExchangeWithConnContext(context.Background(), m, co); err != nil {
				b.Fatal(err)
			}
		}
	})
}
