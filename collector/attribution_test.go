package collector

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/netinspect/netinspect/kube"
	sourcens "github.com/netinspect/netinspect/source/netns"
	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

const attrNode = "node-a"

var ip = netip.MustParseAddr

// attributionIndex is the cluster of the attribution tests, built in-process
// with the Index's setters: four pods on this node, one elsewhere, two
// services.
func attributionIndex() *kube.Index {
	ix := kube.NewIndex(attrNode)
	for _, p := range []kube.PodInfo{
		{Namespace: "default", Name: "client-a", UID: "u1", Node: attrNode, IPs: []netip.Addr{ip("10.244.0.10"), ip("fd00:10:244::10")}},
		{Namespace: "default", Name: "client-b", UID: "u2", Node: attrNode, IPs: []netip.Addr{ip("10.244.0.11")}},
		{Namespace: "web", Name: "backend-1", UID: "u3", Node: attrNode, IPs: []netip.Addr{ip("10.244.0.20")}},
		{Namespace: "web", Name: "backend-2", UID: "u4", Node: attrNode, IPs: []netip.Addr{ip("10.244.0.21")}},
		{Namespace: "kube-system", Name: "coredns", UID: "u5", Node: "node-b", IPs: []netip.Addr{ip("10.244.5.3")}},
		{Namespace: "kube-system", Name: "proxy", UID: "u6", Node: attrNode, HostNetwork: true, IPs: []netip.Addr{ip("192.168.1.1")}},
	} {
		ix.SetPod(p)
	}
	ix.SetService(kube.ServiceInfo{Namespace: "kube-system", Name: "kube-dns", Type: "ClusterIP",
		ClusterIPs: []netip.Addr{ip("10.96.0.10"), ip("fd00:10:96::a")},
		Ports: []kube.ServicePortInfo{
			{Name: "dns", Port: 53, Protocol: "udp"},
			{Name: "dns-tcp", Port: 53, Protocol: "tcp"},
		}})
	ix.SetService(kube.ServiceInfo{Namespace: "web", Name: "frontend", Type: "ClusterIP",
		ClusterIPs: []netip.Addr{ip("10.96.0.100")},
		Ports:      []kube.ServicePortInfo{{Port: 80, Protocol: "tcp"}}})
	return ix
}

// attributionFlows are the flows of the attribution tests, each with what it
// adds to the ground truth in its comment.
var attributionFlows = []ctfill.Spec{
	// client-a udp +300, kube-dns udp +300 (backend on another node).
	{Count: 300, Src: ip("10.244.0.10"), Dst: ip("10.96.0.10"), DstPort: 53, ReplySrc: ip("10.244.5.3")},
	// client-b tcp +200, backend-1 tcp +200, frontend tcp +200.
	{Count: 200, Proto: 6, Src: ip("10.244.0.11"), Dst: ip("10.96.0.100"), DstPort: 80, ReplySrc: ip("10.244.0.20"), ReplySrcPort: 8080},
	// A node address (hostNetwork, not a pod by IP) to frontend:
	// backend-2 tcp +150, frontend tcp +150.
	{Count: 150, Proto: 6, Src: ip("192.168.1.1"), Dst: ip("10.96.0.100"), DstPort: 80, ReplySrc: ip("10.244.0.21"), ReplySrcPort: 8080},
	// Pod to pod without a service: client-a tcp +50, backend-2 tcp +50.
	{Count: 50, Proto: 6, Src: ip("10.244.0.10"), Dst: ip("10.244.0.21"), DstPort: 9000},
	// IPv6 to kube-dns, DNAT to an unknown address: client-a udp +40, kube-dns udp +40.
	{Count: 40, Src: ip("fd00:10:244::10"), Dst: ip("fd00:10:96::a"), DstPort: 53, ReplySrc: ip("fd00:10:244::99")},
	// Nothing of the cluster: scanned only.
	{Count: 60, Proto: 6, Src: ip("203.0.113.9"), Dst: ip("198.51.100.1"), DstPort: 443},
	// client-b tcp +30, kube-dns tcp +30.
	{Count: 30, Proto: 6, Src: ip("10.244.0.11"), Dst: ip("10.96.0.10"), DstPort: 53, ReplySrc: ip("10.244.5.3")},
	// Hairpin: backend-1 through frontend back to itself counts once:
	// backend-1 tcp +10, frontend tcp +10.
	{Count: 10, Proto: 6, Src: ip("10.244.0.20"), Dst: ip("10.96.0.100"), DstPort: 80, ReplySrc: ip("10.244.0.20"), ReplySrcPort: 8080},
	// A service address on a port the service does not have: no service,
	// client-b udp +5.
	{Count: 5, Src: ip("10.244.0.11"), Dst: ip("10.96.0.100"), DstPort: 81},
}

const attributionFlowsTotal = 300 + 200 + 150 + 50 + 40 + 60 + 30 + 10 + 5

// attributionWantSeries is the ground truth of attributionFlows against
// attributionIndex, summed from the comments above.
const attributionWantSeries = `
# HELP netinspect_conntrack_pod_entries Conntrack entries whose original source (the client) or reply source (the backend serving it, after DNAT) is this pod, at the last pass.
# TYPE netinspect_conntrack_pod_entries gauge
netinspect_conntrack_pod_entries{namespace="default",pod="client-a",protocol="tcp"} 50
netinspect_conntrack_pod_entries{namespace="default",pod="client-a",protocol="udp"} 340
netinspect_conntrack_pod_entries{namespace="default",pod="client-b",protocol="tcp"} 230
netinspect_conntrack_pod_entries{namespace="default",pod="client-b",protocol="udp"} 5
netinspect_conntrack_pod_entries{namespace="web",pod="backend-1",protocol="tcp"} 210
netinspect_conntrack_pod_entries{namespace="web",pod="backend-2",protocol="tcp"} 200
# HELP netinspect_conntrack_service_entries Conntrack entries whose original destination address and port is this service, at the last pass; services beyond the top-K are summed into namespace="", service="".
# TYPE netinspect_conntrack_service_entries gauge
netinspect_conntrack_service_entries{namespace="kube-system",protocol="tcp",service="kube-dns"} 30
netinspect_conntrack_service_entries{namespace="kube-system",protocol="udp",service="kube-dns"} 340
netinspect_conntrack_service_entries{namespace="web",protocol="tcp",service="frontend"} 360
`

func fillFlows(t testing.TB, ns *netns.NS, specs []ctfill.Spec) {
	t.Helper()
	for _, s := range specs {
		n, err := ctfill.Create(ns.FD(), s)
		if err != nil || n != s.Count {
			t.Fatalf("created %d of %d flows %v -> %v: %v", n, s.Count, s.Src, s.Dst, err)
		}
	}
}

func newNetnsAttribution(t testing.TB, ns *netns.NS, ix *kube.Index, topK int) *Attribution {
	return in(must(NewAttribution(AttributionConfig{TopServices: topK, Interval: time.Hour},
		Deps{Logger: zaptest.NewLogger(t), Paths: Paths{ProcFS: "/proc"}, Index: ix}))(t), ns)
}

func attributionRegistry(t testing.TB, c Collector) *prometheus.Registry {
	reg := prometheus.NewPedanticRegistry()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	reg.MustRegister(NewSet(zaptest.NewLogger(t), map[string]Collector{"under_test": c}).Scrape(ctx))
	return reg
}

func mustPass(t testing.TB, a *Attribution) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := a.Pass(ctx); err != nil {
		t.Fatalf("pass: %v", err)
	}
}

func conntrackCount(t testing.TB, ns *netns.NS) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(ns.MustRun("conntrack", "-C")))
	if err != nil {
		t.Fatalf("conntrack -C: %v", err)
	}
	return n
}

func TestAttributionCountsPerPodAndService(t *testing.T) {
	testenv.RequireCommand(t, "conntrack")
	ns := netns.New(t, "attr")
	fillFlows(t, ns, attributionFlows)
	a := newNetnsAttribution(t, ns, attributionIndex(), 0)
	reg := attributionRegistry(t, a)

	// Before the first pass there is nothing to serve.
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP netinspect_scrape_collector_success Whether the collector succeeded in this scrape (1) or failed, timed out or found its source absent (0).
# TYPE netinspect_scrape_collector_success gauge
netinspect_scrape_collector_success{collector="under_test"} 0
`), "netinspect_scrape_collector_success"); err != nil {
		t.Error(err)
	}

	mustPass(t, a)
	want := attributionWantSeries + `
# HELP netinspect_conntrack_attribution_entries_scanned Conntrack entries read by the last successful pass.
# TYPE netinspect_conntrack_attribution_entries_scanned gauge
netinspect_conntrack_attribution_entries_scanned ` + strconv.Itoa(attributionFlowsTotal) + `
# HELP netinspect_conntrack_attribution_errors_total Passes over the conntrack table that failed.
# TYPE netinspect_conntrack_attribution_errors_total counter
netinspect_conntrack_attribution_errors_total 0
# HELP netinspect_conntrack_attribution_passes_total Passes over the conntrack table that finished successfully.
# TYPE netinspect_conntrack_attribution_passes_total counter
netinspect_conntrack_attribution_passes_total 1
# HELP netinspect_scrape_collector_success Whether the collector succeeded in this scrape (1) or failed, timed out or found its source absent (0).
# TYPE netinspect_scrape_collector_success gauge
netinspect_scrape_collector_success{collector="under_test"} 1
`
	names := []string{"netinspect_conntrack_pod_entries", "netinspect_conntrack_service_entries",
		"netinspect_conntrack_attribution_entries_scanned", "netinspect_conntrack_attribution_errors_total",
		"netinspect_conntrack_attribution_passes_total", "netinspect_scrape_collector_success"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}

	// Age and duration of the pass are there and sane.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]float64{}
	for _, mf := range mfs {
		if len(mf.GetMetric()) == 1 && mf.GetMetric()[0].Gauge != nil {
			seen[mf.GetName()] = mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	if ts := seen["netinspect_conntrack_attribution_last_success_timestamp_seconds"]; ts < float64(time.Now().Add(-time.Hour).Unix()) || ts > float64(time.Now().Unix()+1) {
		t.Errorf("last_success_timestamp_seconds = %v, want about now", ts)
	}
	if d, ok := seen["netinspect_conntrack_attribution_last_duration_seconds"]; !ok || d <= 0 {
		t.Errorf("last_duration_seconds = %v (present %v), want > 0", d, ok)
	}

	// Read-only: passes and scrapes leave the table as it was.
	mustPass(t, a)
	if n := conntrackCount(t, ns); n != attributionFlowsTotal {
		t.Errorf("conntrack -C after passes = %d, want %d", n, attributionFlowsTotal)
	}
}

func TestAttributionTopServicesSumsTheRest(t *testing.T) {
	ns := netns.New(t, "attr-top")
	fillFlows(t, ns, attributionFlows)
	a := newNetnsAttribution(t, ns, attributionIndex(), 1)
	mustPass(t, a)
	want := `
# HELP netinspect_conntrack_service_entries Conntrack entries whose original destination address and port is this service, at the last pass; services beyond the top-K are summed into namespace="", service="".
# TYPE netinspect_conntrack_service_entries gauge
netinspect_conntrack_service_entries{namespace="",protocol="tcp",service=""} 30
netinspect_conntrack_service_entries{namespace="",protocol="udp",service=""} 340
netinspect_conntrack_service_entries{namespace="web",protocol="tcp",service="frontend"} 360
`
	if err := testutil.GatherAndCompare(attributionRegistry(t, a), strings.NewReader(want), "netinspect_conntrack_service_entries"); err != nil {
		t.Error(err)
	}
}

func TestAttributionWithoutIndexScansOnly(t *testing.T) {
	ns := netns.New(t, "attr-noix")
	fillFlows(t, ns, attributionFlows[:2])
	a := newNetnsAttribution(t, ns, nil, 0)
	mustPass(t, a)
	want := `
# HELP netinspect_conntrack_attribution_entries_scanned Conntrack entries read by the last successful pass.
# TYPE netinspect_conntrack_attribution_entries_scanned gauge
netinspect_conntrack_attribution_entries_scanned 500
`
	reg := attributionRegistry(t, a)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"netinspect_conntrack_attribution_entries_scanned", "netinspect_conntrack_pod_entries", "netinspect_conntrack_service_entries"); err != nil {
		t.Error(err)
	}
}

func TestAttributionStartRunsPassesInTheBackground(t *testing.T) {
	ns := netns.New(t, "attr-loop")
	fillFlows(t, ns, attributionFlows[:1])
	a := in(must(NewAttribution(AttributionConfig{Interval: 50 * time.Millisecond},
		Deps{Logger: zaptest.NewLogger(t), Paths: Paths{ProcFS: "/proc"}, Index: attributionIndex()}))(t), ns)
	ctx, cancel := context.WithCancel(context.Background())
	defer stopAttribution(a, cancel)
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx); err != nil { // a second Start is a no-op
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for a.passes.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d passes after a minute at a 50ms interval", a.passes.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := a.r.Snapshot().Value.Scanned; got != 300 {
		t.Errorf("scanned = %d, want 300", got)
	}
}

func TestAttributionWithoutConntrackIsNoData(t *testing.T) {
	a := must(NewAttribution(AttributionConfig{}, Deps{Logger: zaptest.NewLogger(t), Paths: Paths{ProcFS: t.TempDir()}}))(t)
	err := a.Pass(context.Background())
	if !errors.Is(err, ErrNoData) {
		t.Fatalf("pass without nf_conntrack_max = %v, want ErrNoData", err)
	}
	_ = a.Pass(context.Background())
	if err := a.Update(context.Background(), make(chan prometheus.Metric, 10)); !errors.Is(err, ErrNoData) {
		t.Errorf("Update without a table = %v, want ErrNoData", err)
	}
	if a.errs.Load() != 0 {
		t.Errorf("an absent table counted %d errors", a.errs.Load())
	}
}

func TestAttributionFailedPassKeepsServingTheLastResult(t *testing.T) {
	ns := netns.New(t, "attr-fail")
	fillFlows(t, ns, attributionFlows[:1])
	a := newNetnsAttribution(t, ns, attributionIndex(), 0)
	_ = a.Pass(context.Background())
	if a.passes.Load() != 1 {
		t.Fatalf("first pass did not succeed")
	}
	first := a.r.Snapshot().Value

	// A descriptor that is no network namespace: entering it fails, as it
	// would if the namespace were gone.
	f, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a.setTarget(sourcens.FromFD(int(f.Fd())))
	_ = a.Pass(context.Background())

	if a.r.Snapshot().Value != first {
		t.Error("a failed pass replaced the served result")
	}
	want := `
# HELP netinspect_conntrack_attribution_errors_total Passes over the conntrack table that failed.
# TYPE netinspect_conntrack_attribution_errors_total counter
netinspect_conntrack_attribution_errors_total 1
# HELP netinspect_conntrack_attribution_passes_total Passes over the conntrack table that finished successfully.
# TYPE netinspect_conntrack_attribution_passes_total counter
netinspect_conntrack_attribution_passes_total 1
# HELP netinspect_conntrack_pod_entries Conntrack entries whose original source (the client) or reply source (the backend serving it, after DNAT) is this pod, at the last pass.
# TYPE netinspect_conntrack_pod_entries gauge
netinspect_conntrack_pod_entries{namespace="default",pod="client-a",protocol="udp"} 300
# HELP netinspect_scrape_collector_success Whether the collector succeeded in this scrape (1) or failed, timed out or found its source absent (0).
# TYPE netinspect_scrape_collector_success gauge
netinspect_scrape_collector_success{collector="under_test"} 1
`
	if err := testutil.GatherAndCompare(attributionRegistry(t, a), strings.NewReader(want),
		"netinspect_conntrack_attribution_errors_total", "netinspect_conntrack_attribution_passes_total",
		"netinspect_conntrack_pod_entries", "netinspect_scrape_collector_success"); err != nil {
		t.Error(err)
	}
}

// stopAttribution cancels the background work of a and waits until it has
// stopped, so it cannot log after the test ended.
func stopAttribution(a *Attribution, cancel context.CancelFunc) {
	cancel()
	a.Close()
}
