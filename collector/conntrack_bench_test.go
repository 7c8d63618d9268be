package collector

import (
	"context"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/source/conntrack"
	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// BenchmarkConntrackScrape measures one scrape of the conntrack collector in
// a namespace holding 10,000 entries, by netlink (our path) and by procfs
// (node_exporter's method, our fallback), next to the baseline an engineer
// runs by hand: `conntrack -C` and `conntrack -S`.
func BenchmarkConntrackScrape(b *testing.B) {
	testenv.RequireCommand(b, "conntrack")
	ns := netns.New(b, "ct-bench")
	if n, err := ctfill.Create(ns.FD(), ctfill.Spec{Count: 10000, Src: netip.MustParseAddr("10.5.0.1"), Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 53}); err != nil {
		b.Fatalf("created %d flows: %v", n, err)
	}

	b.Run("netlink", func(b *testing.B) {
		c := in(must(NewConntrack(ConntrackConfig{}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(b), ns)
		benchScrape(b, c)
	})
	b.Run("procfs", func(b *testing.B) {
		// The benchmark process sits in the host namespace, so this reads the
		// host's (empty) table: the cost is the same, the values are not
		// compared here.
		b.ReportAllocs()
		for b.Loop() {
			if _, err := conntrack.ReadProcfs("/proc"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline-conntrack-cli", func(b *testing.B) {
		for b.Loop() {
			for _, arg := range []string{"-C", "-S"} {
				if out, err := exec.Command("ip", "netns", "exec", ns.Name, "conntrack", arg).CombinedOutput(); err != nil {
					b.Fatalf("conntrack %s: %v: %s", arg, err, out)
				}
			}
		}
	})
}

func benchScrape(b *testing.B, c Collector) {
	set := NewSet(zap.NewNop(), map[string]Collector{"bench": c})
	b.ReportAllocs()
	for b.Loop() {
		scrapeOnce(b, set)
	}
}

// scrapeOnce gathers one scrape of set into a fresh registry, as the
// exporter's handler does.
func scrapeOnce(b *testing.B, set *Set) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reg := prometheus.NewRegistry()
	reg.MustRegister(set.Scrape(ctx))
	mfs, err := reg.Gather()
	if err != nil || len(mfs) == 0 {
		b.Fatalf("gather: %v (%d families)", err, len(mfs))
	}
}
