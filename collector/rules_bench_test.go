package collector

import (
	"context"
	"flag"
	"fmt"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/kubeproxy"

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
	// collector-refresh reads the nft backend over netlink;
	// collector-refresh-exec is the same refresh listing with
	// iptables-nft-save and ParseSave, as before (and as the fallback).
	for _, execOnly := range []bool{false, true} {
		name := "collector-refresh"
		if execOnly {
			name += "-exec"
		}
		b.Run(name, func(b *testing.B) {
			c := in(must(NewIPTables(IPTablesConfig{RefreshInterval: time.Hour, ServiceSeries: ServiceSeriesAll},
				Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(b), ns)
			b.Cleanup(c.Close)
			rulesWaitRefresh(b, c, time.Time{}, nil)
			c.reader.ExecOnly = execOnly
			st, err := c.list(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			if c.fellBack != "" {
				b.Fatalf("netlink reader fell back: %s", c.fellBack)
			}
			b.Logf("%d families, %d service ports", len(st.Families), len(st.Families[0].Endpoints))
			rulesBenchRefresh(b, func(ctx context.Context) error { _, err := c.list(ctx); return err })
		})
	}
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

// rulesBenchRefresh times refresh and reports the peak heap seen, and the
// heap live before (after a collection: the index and what else the
// process holds), so that the refresh's own share is the difference.
func rulesBenchRefresh(b *testing.B, refresh func(context.Context) error) {
	var stop atomic.Bool
	var peak atomic.Uint64
	runtime.GC()
	base := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(base)
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
	// After the loop: b.Loop's start resets what was reported before it.
	b.ReportMetric(float64(base[0].Value.Uint64())/(1<<20), "live-heap-before-MiB")
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

// The real-kube-proxy benchmark's cluster: 10,000 Services x 3 endpoints.
const scaleServices, scaleEndpoints = 10000, 3

// BenchmarkRealKubeProxyScale programs 10,000 services x 3 endpoints with
// the real kube-proxy (iptables mode, nft backend; then nftables mode) and
// measures in the same run the listing tool (baseline), the collector's
// refresh with the drift comparison against the index a kube.Watcher keeps
// (collector-refresh, with the peak heap of the process), and scrapes while
// refreshes run back to back (scrape-during-refresh). The refresh is judged
// in sync first, so the comparison does the work of a healthy node.
// Creating the objects takes a minute or two, so it only runs under -bench.
func BenchmarkRealKubeProxyScale(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireCommand(b, "nsenter")
	testenv.RequireCommand(b, "nft")
	cp := cpl.Start(b)
	cp.CreateNode(b, "node-1", "10.99.1.2")
	cp.EnsureNamespace(b, "scale")
	cp.CreateServices(b, "scale", 0, scaleServices, scaleEndpoints)
	ix := benchIndex(b, cp, scaleServices+1)
	deps := Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ix}
	drift := DriftConfig{MaxSeries: 50, Grace: DriftGrace{Intervals: 2}}

	b.Run("mode=iptables", func(b *testing.B) {
		node := netns.New(b, "kpscale")
		node.MustRun("ip", "addr", "add", "10.99.1.2/32", "dev", "lo")
		kp := cp.StartKubeProxy(b, node, cpl.KubeProxyOptions{NodeName: "node-1", Mode: "iptables"})
		defer kp.Stop()
		c := in(must(NewIPTables(IPTablesConfig{RefreshInterval: time.Hour, Drift: drift}, deps))(b), node)
		b.Cleanup(c.Close)
		benchIPTablesDrift(b, node, c)
	})

	b.Run("mode=nftables", func(b *testing.B) {
		node := netns.New(b, "kpscalenft")
		node.MustRun("ip", "addr", "add", "10.99.1.2/32", "dev", "lo")
		kp := cp.StartKubeProxy(b, node, cpl.KubeProxyOptions{NodeName: "node-1", Mode: "nftables"})
		defer kp.Stop()
		c := in(must(NewNFTables(NFTablesConfig{RefreshInterval: time.Hour, Drift: drift}, deps))(b), node)
		b.Cleanup(c.Close)
		benchNFTablesDrift(b, node, c)
	})
}

// benchIPTablesDrift and benchNFTablesDrift run benchDrift for a collector
// of each kind.
func benchIPTablesDrift(b *testing.B, ns *netns.NS, c *IPTables) {
	benchDrift(b, ns, c, func(ctx context.Context) (*DriftResult, error) {
		st, err := c.list(ctx)
		if err != nil {
			return nil, err
		}
		return st.Drift, nil
	}, func() { rulesWaitRefresh(b, c, time.Time{}, nil) }, []string{"iptables-nft-save"}, []string{"ip6tables-nft-save"})
}

func benchNFTablesDrift(b *testing.B, ns *netns.NS, c *NFTables) {
	benchDrift(b, ns, c, func(ctx context.Context) (*DriftResult, error) {
		st, err := c.list(ctx)
		if err != nil {
			return nil, err
		}
		return st.Drift, nil
	}, func() { rulesNFTWait(b, c, time.Time{}) }, []string{"nft", "list", "ruleset"})
}

// benchDrift waits until c's listing of ns judges every service port in
// sync, then measures in the same run: the listing tool (baseline, the
// commands of baseline run back to back), one refresh of the collector with
// the drift comparison, with the peak heap of the process, and scrapes
// while refreshes run back to back, with the worst scrape latency.
func benchDrift(b *testing.B, ns *netns.NS, c Collector, list func(context.Context) (*DriftResult, error), waitSnapshot func(), baseline ...[]string) {
	benchWaitInSync(b, func() (*DriftResult, error) { return list(context.Background()) })
	b.Logf("%s: %d lines", strings.Join(baseline[0], " "), strings.Count(ns.MustRun(baseline[0]...), "\n"))
	name := "baseline=" + strings.ReplaceAll(strings.Join(baseline[0], "-"), "-nft-", "-")
	b.Run(name, func(b *testing.B) {
		for b.Loop() {
			for _, argv := range baseline {
				ns.MustRun(argv...)
			}
		}
	})
	refresh := func(ctx context.Context) error { _, err := list(ctx); return err }
	b.Run("collector-refresh+drift", func(b *testing.B) { rulesBenchRefresh(b, refresh) })
	b.Run("scrape-during-refresh", func(b *testing.B) {
		waitSnapshot()
		rulesBenchScrape(b, c, refresh)
	})
}

// benchIndex is the index a kube.Watcher keeps of cp for node-1, once it
// holds services Services.
func benchIndex(b *testing.B, cp *cpl.ControlPlane, services int) *kube.Index {
	b.Helper()
	w, err := kube.NewWatcher(kube.Config{REST: cp.Config, NodeName: "node-1", Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	w.Start(ctx)
	ix := w.Index()
	cpl.Eventually(b, 5*time.Minute, func() error {
		if _, n, _ := ix.Counts(); !ix.Synced() || n != services {
			return fmt.Errorf("index: synced %v, %d services", ix.Synced(), n)
		}
		return nil
	})
	return ix
}

// benchWaitInSync lists until a listing judges every service port in sync
// (kube-proxy programmed them all).
func benchWaitInSync(b *testing.B, list func() (*DriftResult, error)) {
	b.Helper()
	start := time.Now()
	cpl.Eventually(b, 10*time.Minute, func() error {
		d, err := list()
		if err != nil {
			return err
		}
		if d == nil {
			return fmt.Errorf("drift not judged")
		}
		var in, out int
		for _, f := range d.Families {
			in += f.ServicePorts[kubeproxy.InSync]
			out += f.ServicePorts[kubeproxy.Missing] + f.ServicePorts[kubeproxy.Stale] + f.ServicePorts[kubeproxy.EndpointsDiffer]
		}
		if d.Pending+out > 0 {
			return fmt.Errorf("%d in sync, %d pending, %d drifting", in, d.Pending, out)
		}
		return nil
	})
	b.Logf("kube-proxy's rules agree with the API after %v", time.Since(start).Round(time.Second))
}

// BenchmarkDriftLargeCluster is the scale at which kube-proxy itself
// struggles (kubernetes#139513: a full nftables sync took 16 min at 44k
// services): 41,667 services x 6 endpoints (250,002), shaped as kube-proxy
// 1.37 writes them (test/proxyrules: iptables-restore, and nft -f with the
// DNAT maps of 1.37's nftables mode) into throw-away namespaces, with an
// index of the same services; one refresh with the drift comparison
// against the listing tool, in the same run. Loading the rules takes
// minutes and gigabytes, so it runs only when -bench names it:
//
//	go test ./collector -run '^$' -bench DriftLargeCluster -benchtime 3x -timeout 60m
func BenchmarkDriftLargeCluster(b *testing.B) {
	if !strings.Contains(flag.Lookup("test.bench").Value.String(), "LargeCluster") {
		b.Skip("opt-in: -bench DriftLargeCluster")
	}
	testenv.RequireRoot(b)
	testenv.RequireCommand(b, "nft")
	testenv.RequireCommand(b, "iptables-nft-restore")
	const n, eps = 41667, 6
	svcs := proxyrules.Generate("large", n, eps, 4)
	ix := driftIndexOf(svcs)
	deps := Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ix}
	drift := DriftConfig{MaxSeries: 50, Grace: DriftGrace{Intervals: 2}}

	b.Run("mode=iptables", func(b *testing.B) {
		ns := rulesBenchNS(b)
		start := time.Now()
		rulesRestore(b, ns, "nft", 4, proxyrules.IPTablesRestore(svcs, 4))
		b.Logf("loaded %d services x %d endpoints with iptables-nft-restore in %v", n, eps, time.Since(start).Round(time.Second))
		c := in(must(NewIPTables(IPTablesConfig{RefreshInterval: time.Hour, Timeout: 30 * time.Minute, Drift: drift}, deps))(b), ns)
		b.Cleanup(c.Close)
		benchIPTablesDrift(b, ns, c)
	})
	b.Run("mode=nftables", func(b *testing.B) {
		ns := rulesBenchNS(b)
		start := time.Now()
		rulesNFTLoad(b, ns, proxyrules.NFTablesDNAT(svcs, 4))
		b.Logf("loaded %d services x %d endpoints with nft -f in %v", n, eps, time.Since(start).Round(time.Second))
		c := in(must(NewNFTables(NFTablesConfig{RefreshInterval: time.Hour, Timeout: 30 * time.Minute, Drift: drift}, deps))(b), ns)
		b.Cleanup(c.Close)
		benchNFTablesDrift(b, ns, c)
	})
}
