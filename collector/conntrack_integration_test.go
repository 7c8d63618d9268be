package collector

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/netinspect/netinspect/source/conntrack"
	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// gather runs one Update of c and returns every sample keyed by its metric
// name and labels, e.g. `netinspect_conntrack_stat_drop_total` or
// `netinspect_conntrack_source_info{source="netlink"}`.
func gather(t *testing.T, c Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	set := NewSet(zaptest.NewLogger(t), map[string]Collector{"under_test": c})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reg.MustRegister(set.Scrape(ctx))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			if len(m.GetLabel()) > 0 {
				var ls []string
				for _, l := range m.GetLabel() {
					ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			}
		}
	}
	if out[`netinspect_scrape_collector_success{collector="under_test"}`] != 1 {
		t.Fatalf("collector did not succeed: %v", out)
	}
	return out
}

// conntrackS runs `conntrack -S` in ns and sums each counter over CPUs.
func conntrackS(t *testing.T, ns *netns.NS) map[string]float64 {
	t.Helper()
	sums := map[string]float64{}
	for _, line := range strings.Split(ns.MustRun("conntrack", "-S"), "\n") {
		for _, field := range strings.Fields(line) {
			k, v, ok := strings.Cut(field, "=")
			if !ok || k == "cpu" {
				continue
			}
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("conntrack -S field %q: %v", field, err)
			}
			sums[k] += n
		}
	}
	if len(sums) == 0 {
		t.Fatal("conntrack -S printed no counters")
	}
	return sums
}

// requireStatsMatch asserts that every statistic the collector exported
// equals the sum `conntrack -S` printed for it.
func requireStatsMatch(t *testing.T, got, want map[string]float64) {
	t.Helper()
	for s := range conntrack.NumStats {
		name := "netinspect_conntrack_stat_" + s.String() + "_total"
		v, ok := got[name]
		if !ok {
			t.Errorf("%s missing", name)
			continue
		}
		if v != want[s.String()] {
			t.Errorf("%s = %v, conntrack -S says %v", name, v, want[s.String()])
		}
	}
}

func newNetnsConntrack(t *testing.T, ns *netns.NS, perCPU bool) *Conntrack {
	return in(must(NewConntrack(ConntrackConfig{PerCPU: perCPU},
		Deps{Logger: zaptest.NewLogger(t), Paths: Paths{ProcFS: "/proc"}}))(t), ns)
}

func TestConntrackCountsEntriesOfItsNamespace(t *testing.T) {
	testenv.RequireCommand(t, "conntrack")
	ns := netns.New(t, "ct-count")
	const n = 250
	created, err := ctfill.Create(ns.FD(), ctfill.Spec{
		Count: n, Src: netip.MustParseAddr("10.1.0.1"), Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 53,
	})
	if err != nil || created != n {
		t.Fatalf("created %d of %d flows: %v", created, n, err)
	}

	c := newNetnsConntrack(t, ns, false)
	got := gather(t, c)
	limit, err := strconv.ParseFloat(ns.Sysctl("net.netfilter.nf_conntrack_max"), 64)
	if err != nil {
		t.Fatal(err)
	}
	if got["netinspect_conntrack_entries"] != n {
		t.Errorf("entries = %v, want %d", got["netinspect_conntrack_entries"], n)
	}
	if got["netinspect_conntrack_entries_limit"] != limit {
		t.Errorf("entries_limit = %v, want the namespace's nf_conntrack_max %v", got["netinspect_conntrack_entries_limit"], limit)
	}
	if got[`netinspect_conntrack_source_info{source="netlink"}`] != 1 {
		t.Errorf("source is not netlink: %v", got)
	}
	requireStatsMatch(t, got, conntrackS(t, ns))

	// Read-only: scraping again changes nothing in the table.
	again := gather(t, c)
	if again["netinspect_conntrack_entries"] != n {
		t.Errorf("entries after a second scrape = %v, want %d", again["netinspect_conntrack_entries"], n)
	}
	if count := strings.TrimSpace(ns.MustRun("conntrack", "-C")); count != strconv.Itoa(n) {
		t.Errorf("conntrack -C after scrapes = %s, want %d", count, n)
	}
}

func TestConntrackPerCPUStatisticsSumToTotals(t *testing.T) {
	testenv.RequireCommand(t, "conntrack")
	ns := netns.New(t, "ct-cpu")
	enableConntrackHooks(t, ns)
	sendNewUDPFlows(t, ns, 20000, 50)

	summed := gather(t, newNetnsConntrack(t, ns, false))
	perCPU := gather(t, newNetnsConntrack(t, ns, true))
	for s := range conntrack.NumStats {
		name := "netinspect_conntrack_stat_" + s.String() + "_total"
		var sum float64
		cpus := 0
		for k, v := range perCPU {
			if strings.HasPrefix(k, name+"{cpu=") {
				sum += v
				cpus++
			}
		}
		if cpus == 0 {
			t.Errorf("%s has no per-CPU series", name)
		}
		if sum != summed[name] {
			t.Errorf("%s: per-CPU series sum to %v, summed series is %v", name, sum, summed[name])
		}
	}
	requireStatsMatch(t, summed, conntrackS(t, ns))
}

// TestConntrackTableFull fills a namespace's table to nf_conntrack_max (the
// host's own count stays untouched: conntrack tables are per namespace) and
// checks the drop counters against the kernel when new flows arrive.
func TestConntrackTableFull(t *testing.T) {
	testenv.RequireCommand(t, "conntrack")
	testenv.RequireCommand(t, "nft")
	ns := netns.New(t, "ct-full")
	enableConntrackHooks(t, ns)
	limit, err := strconv.Atoi(ns.Sysctl("net.netfilter.nf_conntrack_max"))
	if err != nil {
		t.Fatal(err)
	}
	c := newNetnsConntrack(t, ns, false)

	t.Run("assured entries: new flows are dropped", func(t *testing.T) {
		fill(t, ns, limit, true)
		before := gather(t, c)
		if before["netinspect_conntrack_entries"] != float64(limit) {
			t.Fatalf("entries = %v, want the limit %d", before["netinspect_conntrack_entries"], limit)
		}
		const packets = 40
		sendNewUDPFlows(t, ns, 30000, packets)
		after := gather(t, c)
		requireStatsMatch(t, after, conntrackS(t, ns))
		if d := after["netinspect_conntrack_stat_drop_total"] - before["netinspect_conntrack_stat_drop_total"]; d < packets {
			t.Errorf("drop_total moved by %v for %d new flows into a full table of assured entries", d, packets)
		}
		if after["netinspect_conntrack_entries"] != float64(limit) {
			t.Errorf("entries = %v, want still %d", after["netinspect_conntrack_entries"], limit)
		}
	})

	t.Run("unassured entries: the kernel evicts early", func(t *testing.T) {
		ns.MustRun("conntrack", "-F") // the test's own namespace, never the host's
		fill(t, ns, limit, false)
		before := gather(t, c)
		sendNewUDPFlows(t, ns, 40000, 40)
		after := gather(t, c)
		requireStatsMatch(t, after, conntrackS(t, ns))
		if after["netinspect_conntrack_stat_early_drop_total"] <= before["netinspect_conntrack_stat_early_drop_total"] {
			t.Errorf("early_drop_total did not move (%v -> %v)", before["netinspect_conntrack_stat_early_drop_total"], after["netinspect_conntrack_stat_early_drop_total"])
		}
	})
}

// fill creates flows until the namespace's table holds limit entries.
func fill(t *testing.T, ns *netns.NS, limit int, assured bool) {
	t.Helper()
	created, err := ctfill.Create(ns.FD(), ctfill.Spec{
		Count: limit, Src: netip.MustParseAddr("10.2.0.1"), Dst: netip.MustParseAddr("10.96.0.1"), DstPort: 443,
		Assured: assured,
	})
	if err != nil && !errors.Is(err, ctfill.ErrTableFull) {
		t.Fatalf("fill table: created %d: %v", created, err)
	}
	if count := strings.TrimSpace(ns.MustRun("conntrack", "-C")); count != strconv.Itoa(limit) {
		t.Fatalf("table holds %s entries after filling, want %d", count, limit)
	}
}

// enableConntrackHooks adds an nftables rule that uses conntrack in ns:
// since kernel 5.x conntrack only tracks packets in a namespace whose rules
// need it (nf_ct_netns_get).
func enableConntrackHooks(t *testing.T, ns *netns.NS) {
	t.Helper()
	ns.MustRun("nft", "add table inet netinspect_test")
	ns.MustRun("nft", "add chain inet netinspect_test out { type filter hook output priority 0 ; }")
	ns.MustRun("nft", "add rule inet netinspect_test out ct state new counter")
}

// sendNewUDPFlows sends one UDP datagram to each of n ports on loopback in
// ns, from a fresh socket each, so that every one is a new conntrack flow.
func sendNewUDPFlows(t *testing.T, ns *netns.NS, firstPort, n int) {
	t.Helper()
	script := fmt.Sprintf(`for p in $(seq %d %d); do echo x 2>/dev/null >/dev/udp/127.0.0.1/$p || true; done`, firstPort, firstPort+n-1)
	ns.MustRun("bash", "-c", script)
}
