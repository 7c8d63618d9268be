package collector

import (
	"context"
	"fmt"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	cpl "github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/proxyrules"
	"github.com/netinspect/netinspect/test/testenv"
)

// The benchmarks load 5,000 services x 2 endpoints, shaped as kube-proxy
// 1.37 writes them, into a throw-away namespace with iptables-restore /
// nft -f (creating that many objects for the real kube-proxy takes minutes),
// and measure in the same run:
//   - baseline: the listing tool itself (iptables-save + ip6tables-save, or
//     nft list ruleset), as an operator would run it;
//   - collector-refresh: one listing by the collector (what its refresher
//     does), with the peak Go heap seen during it;
//   - scrape-during-refresh: one scrape (Update) while refreshes run back
//     to back in the background, with the worst scrape latency seen.
const rulesBenchServices, rulesBenchEndpoints = 5000, 2

func rulesBenchNS(b *testing.B) *netns.NS {
	b.Helper()
	testenv.RequireRoot(b)
	return netns.New(b, "rbench")
}

func BenchmarkIPTablesRefresh(b *testing.B) {
	testenv.RequireCommand(b, "iptables-nft-restore")
	testenv.RequireCommand(b, "nsenter")
	ns := rulesBenchNS(b)
	rulesRestore(b, ns, "nft", 4, proxyrules.IPTablesRestore(proxyrules.Generate("bench", rulesBenchServices, rulesBenchEndpoints, 4), 4))
	rulesRestore(b, ns, "nft", 6, proxyrules.IPTablesRestore(proxyrules.Generate("bench", 10, 2, 6), 6))

	b.Run("baseline=iptables-save", func(b *testing.B) {
		for b.Loop() {
			ns.MustRun("iptables-nft-save")
			ns.MustRun("ip6tables-nft-save")
		}
	})
	b.Run("collector-refresh", func(b *testing.B) {
		c := in(must(NewIPTables(IPTablesConfig{RefreshInterval: time.Hour, ServiceSeries: ServiceSeriesAll},
			Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(b), ns)
		b.Cleanup(c.Close)
		rulesWaitRefresh(b, c, time.Time{}, nil)
		rulesBenchRefresh(b, func(ctx context.Context) error { _, err := c.list(ctx); return err })
	})
	b.Run("scrape-during-refresh", func(b *testing.B) {
		c := in(must(NewIPTables(IPTablesConfig{RefreshInterval: time.Hour, ServiceSeries: ServiceSeriesAll},
			Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(b), ns)
		b.Cleanup(c.Close)
		rulesWaitRefresh(b, c, time.Time{}, nil)
		rulesBenchScrape(b, c, func(ctx context.Context) error { _, err := c.list(ctx); return err })
	})
}

func BenchmarkNFTablesRefresh(b *testing.B) {
	testenv.RequireCommand(b, "nft")
	ns := rulesBenchNS(b)
	rulesNFTLoad(b, ns, proxyrules.NFTables(proxyrules.Generate("bench", rulesBenchServices, rulesBenchEndpoints, 4), 4))

	b.Run("baseline=nft-list-ruleset", func(b *testing.B) {
		for b.Loop() {
			ns.MustRun("nft", "list", "ruleset")
		}
	})
	b.Run("collector-refresh", func(b *testing.B) {
		c := in(must(NewNFTables(NFTablesConfig{RefreshInterval: time.Hour, ServiceSeries: ServiceSeriesAll},
			Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(b), ns)
		b.Cleanup(c.Close)
		rulesNFTWait(b, c, time.Time{})
		rulesBenchRefresh(b, func(ctx context.Context) error { _, err := c.list(ctx); return err })
	})
	b.Run("scrape-during-refresh", func(b *testing.B) {
		c := in(must(NewNFTables(NFTablesConfig{RefreshInterval: time.Hour, ServiceSeries: ServiceSeriesAll},
			Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(b), ns)
		b.Cleanup(c.Close)
		rulesNFTWait(b, c, time.Time{})
		rulesBenchScrape(b, c, func(ctx context.Context) error { _, err := c.list(ctx); return err })
	})
}

// rulesBenchRefresh times refresh and reports the peak heap seen.
func rulesBenchRefresh(b *testing.B, refresh func(context.Context) error) {
	var stop atomic.Bool
	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		for !stop.Load() {
			metrics.Read(s)
			if v := s[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	b.ReportAllocs()
	for b.Loop() {
		if err := refresh(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	stop.Store(true)
	<-done
	b.ReportMetric(float64(peak.Load())/(1<<20), "peak-heap-MiB")
}

// rulesBenchScrape times scrapes of c while refresh runs back to back,
// and reports the worst scrape latency.
func rulesBenchScrape(b *testing.B, c Collector, refresh func(context.Context) error) {
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if err := refresh(context.Background()); err != nil {
				b.Errorf("refresh: %v", err)
				return
			}
		}
	}()
	ch := make(chan prometheus.Metric, 1<<16)
	var worst time.Duration
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		if err := c.Update(context.Background(), ch); err != nil {
			b.Fatal(err)
		}
		worst = max(worst, time.Since(start))
		for len(ch) > 0 {
			<-ch
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	b.ReportMetric(float64(worst.Microseconds())/1000, "max-scrape-ms")
}

// BenchmarkRealKubeProxyScale programs 5,000 services x 2 endpoints with
// the real kube-proxy (iptables mode, nft backend; then nftables mode) and
// measures the listing tools and the collectors' refreshes in the same run.
// Creating the objects takes minutes, so it only runs under -bench.
func BenchmarkRealKubeProxyScale(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireCommand(b, "nsenter")
	testenv.RequireCommand(b, "nft")
	cp := cpl.Start(b)
	cp.CreateNode(b, "node-1", "10.99.1.2")
	rulesCreateScale(b, cp, rulesBenchServices, rulesBenchEndpoints)

	b.Run("mode=iptables", func(b *testing.B) {
		node := netns.New(b, "kpscale")
		node.MustRun("ip", "addr", "add", "10.99.1.2/32", "dev", "lo")
		kp := cp.StartKubeProxy(b, node, cpl.KubeProxyOptions{NodeName: "node-1", Mode: "iptables"})
		defer kp.Stop()
		c := in(must(NewIPTables(IPTablesConfig{RefreshInterval: time.Hour, ServiceSeries: ServiceSeriesAll},
			Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(b), node)
		b.Cleanup(c.Close)
		rulesWaitScale(b, func() ([]int, error) {
			st, err := c.list(context.Background())
			if err != nil {
				return nil, err
			}
			var counts []int
			for _, f := range st.Families {
				for _, e := range f.Endpoints {
					if e.Namespace == "scale" {
						counts = append(counts, e.N)
					}
				}
			}
			return counts, nil
		})
		out := node.MustRun("iptables-nft-save")
		b.Logf("iptables-save: %d lines", strings.Count(out, "\n"))
		b.Run("baseline=iptables-save", func(b *testing.B) {
			for b.Loop() {
				node.MustRun("iptables-nft-save")
				node.MustRun("ip6tables-nft-save")
			}
		})
		b.Run("collector-refresh", func(b *testing.B) {
			rulesBenchRefresh(b, func(ctx context.Context) error { _, err := c.list(ctx); return err })
		})
		b.Run("scrape-during-refresh", func(b *testing.B) {
			rulesWaitRefresh(b, c, time.Time{}, nil)
			rulesBenchScrape(b, c, func(ctx context.Context) error { _, err := c.list(ctx); return err })
		})
	})

	b.Run("mode=nftables", func(b *testing.B) {
		node := netns.New(b, "kpscalenft")
		node.MustRun("ip", "addr", "add", "10.99.1.2/32", "dev", "lo")
		kp := cp.StartKubeProxy(b, node, cpl.KubeProxyOptions{NodeName: "node-1", Mode: "nftables"})
		defer kp.Stop()
		c := in(must(NewNFTables(NFTablesConfig{RefreshInterval: time.Hour, ServiceSeries: ServiceSeriesAll},
			Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(b), node)
		b.Cleanup(c.Close)
		rulesWaitScale(b, func() ([]int, error) {
			st, err := c.list(context.Background())
			if err != nil {
				return nil, err
			}
			var counts []int
			for _, f := range st.Families {
				for _, e := range f.Endpoints {
					if e.Namespace == "scale" {
						counts = append(counts, e.N)
					}
				}
			}
			return counts, nil
		})
		b.Run("baseline=nft-list-ruleset", func(b *testing.B) {
			for b.Loop() {
				node.MustRun("nft", "list", "ruleset")
			}
		})
		b.Run("collector-refresh", func(b *testing.B) {
			rulesBenchRefresh(b, func(ctx context.Context) error { _, err := c.list(ctx); return err })
		})
		b.Run("scrape-during-refresh", func(b *testing.B) {
			rulesNFTWait(b, c, time.Time{})
			rulesBenchScrape(b, c, func(ctx context.Context) error { _, err := c.list(ctx); return err })
		})
	})
}

// rulesCreateScale creates n ClusterIP services in namespace "scale", each
// with an EndpointSlice of eps ready endpoints, with a few parallel clients.
func rulesCreateScale(b *testing.B, cp *cpl.ControlPlane, n, eps int) {
	b.Helper()
	cp.EnsureNamespace(b, "scale")
	start := time.Now()
	jobs := make(chan int)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := range jobs {
				name := fmt.Sprintf("svc-%d", i)
				_, err := cp.Client.CoreV1().Services("scale").Create(ctx, &corev1.Service{
					ObjectMeta: metav1.ObjectMeta{Name: name},
					Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}}},
				}, metav1.CreateOptions{})
				if err != nil {
					errs <- err
					return
				}
				pname, port, proto, ready := "http", int32(8080), corev1.ProtocolTCP, true
				es := &discoveryv1.EndpointSlice{
					ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
					AddressType: discoveryv1.AddressTypeIPv4,
					Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port, Protocol: &proto}},
				}
				for e := range eps {
					k := i*eps + e
					es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
						Addresses:  []string{fmt.Sprintf("10.244.%d.%d", k/250, k%250+1)},
						Conditions: discoveryv1.EndpointConditions{Ready: &ready},
					})
				}
				if _, err := cp.Client.DiscoveryV1().EndpointSlices("scale").Create(ctx, es, metav1.CreateOptions{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := range n {
		select {
		case jobs <- i:
		case err := <-errs:
			close(jobs)
			b.Fatalf("create objects: %v", err)
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatalf("create objects: %v", err)
	default:
	}
	b.Logf("created %d services and %d EndpointSlices in %v", n, n, time.Since(start))
}

// rulesWaitScale waits until every Service of the scale fixture has all its
// endpoints in a listing; endpoints lists the endpoint count of each scale
// Service the listing has.
func rulesWaitScale(b *testing.B, endpoints func() ([]int, error)) {
	start := time.Now()
	cpl.Eventually(b, 10*time.Minute, func() error {
		counts, err := endpoints()
		if err != nil {
			return err
		}
		n := 0
		for _, c := range counts {
			if c == rulesBenchEndpoints {
				n++
			}
		}
		if n != rulesBenchServices {
			return fmt.Errorf("%d of %d services programmed", n, rulesBenchServices)
		}
		return nil
	})
	b.Logf("kube-proxy programmed %d services in %v", rulesBenchServices, time.Since(start))
}
