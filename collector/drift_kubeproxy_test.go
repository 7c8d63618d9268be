package collector

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/kubeproxy"
	"github.com/netinspect/netinspect/source/iptables"
	"github.com/netinspect/netinspect/source/nftables"
	cpl "github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/kpfixture"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// The drift tests run the real kube-proxy 1.37.2 against a real API
// server with test/kpfixture's Services (every kind kube-proxy treats
// differently), and read drift through the collector's metrics, as
// Prometheus would. kube-proxy syncs every 5 s (controlplane.KubeProxyArgs);
// the collectors list every second with a grace of two listings.
const (
	driftRefresh    = time.Second
	driftGrace      = 2 * driftRefresh
	kubeProxySync   = 5 * time.Second
	driftInSyncRuns = 12 // listings that must agree, spanning two syncs
)

// driftKubeProxy is a running kube-proxy the drift tests can stop and
// resume (SIGSTOP, SIGCONT).
type driftKubeProxy interface {
	Pause(testing.TB)
	Resume(testing.TB)
	Tail() string
}

// driftView is what the kube_proxy_* series of one scrape say.
type driftView struct {
	// ports[family][state]
	ports map[string]map[string]float64
	// oldest[family]
	oldest map[string]float64
	// series are "family namespace/service:port state" -> seconds.
	series         map[string]float64
	dropped        float64
	histCount      uint64
	histSum        float64
	hasDriftSeries bool
}

func (v driftView) mismatches() float64 {
	n := 0.0
	for _, states := range v.ports {
		for s, c := range states {
			if s != kubeproxy.InSync.String() {
				n += c
			}
		}
	}
	return n
}

func (v driftView) String() string {
	var keys []string
	for k, age := range v.series {
		keys = append(keys, fmt.Sprintf("%s (%.0fs)", k, age))
	}
	sort.Strings(keys)
	return fmt.Sprintf("ports %v, oldest %v, series [%s], dropped %v", v.ports, v.oldest, strings.Join(keys, ", "), v.dropped)
}

// driftGather scrapes c and reads its drift series.
func driftGather(t testing.TB, c Collector) driftView {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(rulesUpdateCollector{c})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	v := driftView{ports: map[string]map[string]float64{}, oldest: map[string]float64{}, series: map[string]float64{}}
	label := func(m *dto.Metric, name string) string {
		for _, l := range m.GetLabel() {
			if l.GetName() == name {
				return l.GetValue()
			}
		}
		return ""
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "netinspect_kube_proxy_service_ports":
				v.hasDriftSeries = true
				f := label(m, "family")
				if v.ports[f] == nil {
					v.ports[f] = map[string]float64{}
				}
				v.ports[f][label(m, "state")] = m.GetGauge().GetValue()
			case "netinspect_kube_proxy_drift_oldest_seconds":
				v.oldest[label(m, "family")] = m.GetGauge().GetValue()
			case "netinspect_kube_proxy_drift_service_port_seconds":
				k := fmt.Sprintf("%s %s/%s:%s %s", label(m, "family"), label(m, "namespace"), label(m, "service"), label(m, "port"), label(m, "state"))
				v.series[k] = m.GetGauge().GetValue()
			case "netinspect_kube_proxy_drift_series_dropped":
				v.dropped = m.GetGauge().GetValue()
			case "netinspect_kube_proxy_drift_duration_seconds":
				v.histCount, v.histSum = m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
			}
		}
	}
	return v
}

// driftIndex watches the API server of rc for the fixture's node, as the
// exporter does, and returns the index once it holds services Services and
// slices EndpointSlices.
func driftIndex(t *testing.T, rc *rest.Config, services, slices int) *kube.Index {
	t.Helper()
	w, err := kube.NewWatcher(kube.Config{REST: rc, NodeName: kpfixture.Node, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w.Start(ctx)
	ix := w.Index()
	cpl.Eventually(t, time.Minute, func() error {
		if !ix.Synced() {
			_, detail := w.Ready()
			return fmt.Errorf("index not synced: %s", detail)
		}
		if z := ix.NodeZone(); z != kpfixture.Zone {
			return fmt.Errorf("zone %q", z)
		}
		if _, nsvc, nsl := ix.Counts(); nsvc != services || nsl != slices {
			return fmt.Errorf("%d services, %d slices indexed; want %d, %d", nsvc, nsl, services, slices)
		}
		return nil
	})
	return ix
}

// driftExpected counts the service ports kube-proxy programs per family.
func driftExpected(ix *kube.Index) map[string]float64 {
	e := kubeproxy.Expect(ix)
	out := map[string]float64{}
	for _, f := range []kubeproxy.IPFamily{kubeproxy.IPv4, kubeproxy.IPv6} {
		if n := len(e.Family(f)); n > 0 {
			out[f.String()] = float64(n)
		}
	}
	return out
}

// driftInSync waits until the collector reports no drift with every
// expected service port in sync, then requires it to stay so, with
// nothing pending either, for driftInSyncRuns listings. pending reads the
// latest listing's typed result.
func driftInSync(t *testing.T, c Collector, ix *kube.Index, kp driftKubeProxy, pending func() (int, time.Time)) {
	t.Helper()
	inSync := func() error {
		want := driftExpected(ix)
		v := driftGather(t, c)
		if !v.hasDriftSeries {
			return fmt.Errorf("no drift series yet")
		}
		for fam, n := range want {
			if got := v.ports[fam][kubeproxy.InSync.String()]; got != n {
				return fmt.Errorf("%s: %v service ports in sync, want %v: %s", fam, got, n, v)
			}
		}
		if m := v.mismatches(); m != 0 || len(v.series) != 0 || v.dropped != 0 {
			return fmt.Errorf("%v mismatches: %s", m, v)
		}
		for fam, age := range v.oldest {
			if age != 0 {
				return fmt.Errorf("%s oldest mismatch %vs", fam, age)
			}
		}
		if n, _ := pending(); n != 0 {
			return fmt.Errorf("%d mismatches pending", n)
		}
		return nil
	}
	cpl.Eventually(t, 90*time.Second, func() error {
		if err := inSync(); err != nil {
			return fmt.Errorf("%w\nkube-proxy:\n%s", err, kp.Tail())
		}
		return nil
	})
	start := time.Now()
	var last time.Time
	for runs := 0; runs < driftInSyncRuns; {
		if _, at := pending(); at.After(last) {
			last = at
			runs++
			if err := inSync(); err != nil {
				t.Fatalf("listing %d after agreeing: %v", runs, err)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("in sync for %d listings over %v: %v", driftInSyncRuns, time.Since(start).Round(time.Second), driftExpected(ix))
}

// driftInduced stops kube-proxy, changes the cluster in every way drift
// tells apart, and requires each change to show with its service and state
// once its grace has passed; then resumes kube-proxy and requires every
// mismatch to clear within a sync and a listing (plus slack for a loaded
// or emulated machine), counted in the duration histogram. kube-proxy's
// IPv4 proxier is the one changed.
func driftInduced(t *testing.T, client kubernetes.Interface, c Collector, ix *kube.Index, kp driftKubeProxy, pending func() (int, time.Time), slack time.Duration) {
	v4 := discoveryv1.AddressTypeIPv4
	svc := func(name string, eps ...kpfixture.Endpoint) kpfixture.Service {
		return kpfixture.Service{Name: name, Spec: corev1.ServiceSpec{Ports: kpfixture.Ports("http")}, Slices: []kpfixture.Slice{{Family: v4, Endpoints: eps}}}
	}
	ep := func(i int) kpfixture.Endpoint { return kpfixture.Ready(fmt.Sprintf("10.244.9.%d", i), "node-2") }
	for _, s := range []kpfixture.Service{
		svc("drift-del", ep(1)),
		svc("drift-up", ep(2)),
		svc("drift-down", ep(3), ep(4), ep(5)),
		svc("drift-ready", ep(6), ep(7)),
	} {
		kpfixture.Create(t, client, s)
	}
	t.Cleanup(func() {
		for _, name := range []string{"drift-new", "drift-up", "drift-down", "drift-ready"} {
			kpfixture.Delete(t, client, name)
		}
	})
	driftInSync(t, c, ix, kp, pending)

	kp.Pause(t)
	paused := time.Now()
	kpfixture.Create(t, client, svc("drift-new", ep(8)))
	kpfixture.Delete(t, client, "drift-del")
	kpfixture.SetEndpoints(t, client, "drift-up-0", ep(2), ep(10), ep(11))
	kpfixture.SetEndpoints(t, client, "drift-down-0", ep(3))
	notReady := ep(7)
	notReady.Ready = false
	kpfixture.SetEndpoints(t, client, "drift-ready-0", ep(6), notReady)

	ns := kpfixture.Namespace
	want := map[string]bool{
		"ipv4 " + ns + "/drift-new:http missing":     true,
		"ipv4 " + ns + "/drift-del:http stale":       true,
		"ipv4 " + ns + "/drift-up:http endpoints":    true,
		"ipv4 " + ns + "/drift-down:http endpoints":  true,
		"ipv4 " + ns + "/drift-ready:http endpoints": true,
	}
	var v driftView
	cpl.Eventually(t, time.Minute, func() error {
		v = driftGather(t, c)
		got := map[string]bool{}
		for k := range v.series {
			got[k] = true
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("drift series %s, want %v", v, want)
		}
		return nil
	})
	shown := time.Since(paused)
	for k, age := range v.series {
		if age < driftGrace.Seconds() {
			t.Errorf("%s counted after %vs, before its grace of %v", k, age, driftGrace)
		}
	}
	if p := v.ports["ipv4"]; p["missing"] != 1 || p["stale"] != 1 || p["endpoints"] != 3 {
		t.Errorf("ipv4 states %v, want 1 missing, 1 stale, 3 endpoints", p)
	}
	if v.oldest["ipv4"] < driftGrace.Seconds() || v.oldest["ipv6"] != 0 {
		t.Errorf("oldest %v", v.oldest)
	}
	t.Logf("with kube-proxy stopped, every change showed %v after the first: %s", shown.Round(100*time.Millisecond), v)

	before := v.histCount
	kp.Resume(t)
	resumed := time.Now()
	cpl.Eventually(t, time.Minute, func() error {
		if v = driftGather(t, c); v.mismatches() != 0 || len(v.series) != 0 {
			return fmt.Errorf("after SIGCONT: %s\nkube-proxy:\n%s", v, kp.Tail())
		}
		return nil
	})
	cleared := time.Since(resumed)
	t.Logf("all clear %v after SIGCONT (kube-proxy syncs every %v, the collector lists every %v); histogram count %d -> %d, sum %.1fs",
		cleared.Round(100*time.Millisecond), kubeProxySync, driftRefresh, before, v.histCount, v.histSum)
	if bound := kubeProxySync + driftRefresh + slack; cleared > bound {
		t.Errorf("mismatches cleared %v after SIGCONT, later than %v", cleared, bound)
	}
	if v.histCount < before+uint64(len(want)) {
		t.Errorf("duration histogram counted %d cleared mismatches, want at least %d", v.histCount-before, len(want))
	}
}

// TestDriftRealKubeProxy: with the real kube-proxy in sync, in iptables
// mode on both backends and in nftables mode, the collector of that mode
// reports every service port of the fixture in sync and nothing else, for
// several listings; stopped, kube-proxy's missed changes show as drift of
// the right state and service once the grace passed, and clear when it
// resumes. The collector of the other mode judges nothing.
func TestDriftRealKubeProxy(t *testing.T) {
	testenv.RequireRoot(t)
	for _, cmd := range []string{"nsenter", "nft", "iptables-nft-save", "iptables-legacy-save", "ip6tables-save"} {
		testenv.RequireCommand(t, cmd)
	}
	cp := cpl.Start(t)
	svcs := kpfixture.Services()
	slices := kpfixture.SetUp(t, cp.Client, svcs) + 1 // and default/kubernetes's
	ix := driftIndex(t, cp.Config, len(svcs)+1, slices)
	deps := Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ix}
	drift := DriftConfig{MaxSeries: 50, Grace: DriftGrace{Intervals: 2}}

	for _, mode := range []struct{ name, kubeProxy, backend string }{
		{"iptables-nft", "iptables", "nft"},
		{"iptables-legacy", "iptables", "legacy"},
		{"nftables", "nftables", ""},
	} {
		t.Run(mode.name, func(t *testing.T) {
			if mode.backend == "legacy" {
				t.Setenv("PATH", kpfixture.LegacyPath(t))
			}
			node := kpfixture.NodeNS(t, "drift"+mode.kubeProxy[:3])
			kp := cp.StartKubeProxy(t, node, cpl.KubeProxyOptions{NodeName: kpfixture.Node, Mode: mode.kubeProxy})
			ipt := in(must(NewIPTables(IPTablesConfig{RefreshInterval: driftRefresh, Drift: drift}, deps))(t), node)
			t.Cleanup(ipt.Close)
			nft := in(must(NewNFTables(NFTablesConfig{RefreshInterval: driftRefresh, Drift: drift}, deps))(t), node)
			t.Cleanup(nft.Close)
			var judge, other Collector = ipt, nft
			pending := func() (int, time.Time) {
				s := ipt.Snapshot()
				if s == nil || s.Value == nil || s.Value.Drift == nil {
					return -1, time.Time{}
				}
				return s.Value.Drift.Pending, s.Started
			}
			if mode.kubeProxy == "nftables" {
				judge, other = nft, ipt
				pending = func() (int, time.Time) {
					s := nft.Snapshot()
					if s == nil || s.Value == nil || s.Value.Drift == nil {
						return -1, time.Time{}
					}
					return s.Value.Drift.Pending, s.Started
				}
			}
			driftInSync(t, judge, ix, kp, pending)
			if v := driftGather(t, other); v.hasDriftSeries || len(v.series) != 0 {
				t.Errorf("the collector of the other mode judges drift: %s", v)
			}
			if mode.kubeProxy == "iptables" {
				if st := rulesWaitRefresh(t, ipt, time.Time{}, nil); st.Backend != mode.backend {
					t.Errorf("listed backend %q, want %q", st.Backend, mode.backend)
				}
			}
			if mode.backend == "nft" {
				requireNetlinkEqualsSave(t, node)
			}
			if mode.kubeProxy == "nftables" {
				nftTargetsAgree(t, node)
			}
			driftInduced(t, cp.Client, judge, ix, kp, pending, 10*time.Second)
			if mode.kubeProxy == "nftables" {
				// After the induced changes kube-proxy may keep stale
				// endpoint chains for a while: those maps are read.
				nftTargetsAgree(t, node)
			}
		})
	}
}

// requireNetlinkEqualsSave: on the rules the real kube-proxy wrote, the
// iptables reader's netlink listing of the nft backend (no fallback) and
// iptables-nft-save's give equal Rulesets per family. kube-proxy may sync
// between the two listings, so they are compared until they agree or the
// deadline passes.
func requireNetlinkEqualsSave(t *testing.T, node *netns.NS) {
	t.Helper()
	nl := &iptables.Reader{Backend: iptables.BackendNFT, ProcFS: "/proc", Target: node.Target()}
	ex := &iptables.Reader{Backend: iptables.BackendNFT, ProcFS: "/proc", Target: node.Target(), ExecOnly: true}
	var services int
	cpl.Eventually(t, 30*time.Second, func() error {
		got, err := nl.Read(context.Background())
		if err != nil {
			return err
		}
		if got.Fallback != nil {
			return fmt.Errorf("netlink reader fell back: %w", got.Fallback)
		}
		want, err := ex.Read(context.Background())
		if err != nil {
			return err
		}
		if len(got.Families) != len(want.Families) || len(want.Families) == 0 {
			return fmt.Errorf("%d families, iptables-nft-save %d", len(got.Families), len(want.Families))
		}
		for i, w := range want.Families {
			if d := iptables.Diff(got.Families[i].Rules, w.Rules); got.Families[i].Name != w.Name || d != "" {
				return fmt.Errorf("%s: netlink and iptables-nft-save differ: %s", w.Name, d)
			}
		}
		services = len(got.Family("ipv4").Table("nat").Services)
		return nil
	})
	if services == 0 {
		t.Error("no kube-proxy service chains in the nat table")
	}
}

// nftTargetsAgree: the drift listing of kube-proxy's table in node is the
// same whether every per-service chain's anonymous maps are read or, as
// the collector does (nftTargets), the service chains' verdict maps whose
// gotos the endpoint chains' names give are not; and that shortcut is
// taken for some chains (else this proves nothing). Both reads run back to
// back, a few times if kube-proxy changed the table in between.
func nftTargetsAgree(t *testing.T, node *netns.NS) {
	t.Helper()
	all := func(*nftables.Table) func(string) bool { return kubeproxy.IsNFTServiceChain }
	read := func(targets func(*nftables.Table) func(string) bool) []nftables.Table {
		r := nftables.Reader{ProcFS: "/proc", Target: node.Target(), Targets: targets}
		tables, err := r.Read(context.Background(), kubeproxy.NFTTable)
		if err != nil {
			t.Fatal(err)
		}
		return tables
	}
	normalize := func(l *kubeproxy.NFTablesListing) {
		for name, ch := range l.Chains {
			sort.Strings(ch.Gotos)
			sort.Slice(ch.DNAT, func(i, j int) bool { return ch.DNAT[i].String() < ch.DNAT[j].String() })
			l.Chains[name] = ch
		}
	}
	var diff string
	for range 3 {
		full, fast := read(all), read(nftTargets)
		if len(full) == 0 || len(full) != len(fast) {
			t.Fatalf("kube-proxy's table read %d times with every map, %d with nftTargets", len(full), len(fast))
		}
		diff = ""
		byName := 0
		for i := range full {
			eps := kubeproxy.NFTEndpointChains(fast[i].Chains)
			for chain, r := range fast[i].ChainRules {
				if _, ok := kubeproxy.NFTServiceGotosByName(chain, r.Modulus, len(r.VerdictMaps), eps); ok {
					byName++
				}
			}
			a, b := nftListing(&full[i]), nftListing(&fast[i])
			normalize(a)
			normalize(b)
			if !reflect.DeepEqual(a, b) {
				diff += fmt.Sprintf("%s: every map read %+v\nnftTargets %+v\n", full[i].Family, a.Chains, b.Chains)
			}
		}
		if diff == "" {
			if byName == 0 {
				t.Fatal("no service chain's gotos were known by name: the shortcut is not exercised")
			}
			t.Logf("drift listing the same with %d service chains' maps left unread", byName)
			return
		}
		time.Sleep(time.Second)
	}
	t.Errorf("the drift listings differ:\n%s", diff)
}
