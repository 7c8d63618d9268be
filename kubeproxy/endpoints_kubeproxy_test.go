package kubeproxy_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/source/iptables"
	cpl "github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/kpfixture"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"

	. "github.com/netinspect/netinspect/kubeproxy"
)

// The cluster of the real kube-proxy test: test/kpfixture's.
const (
	kpNS   = kpfixture.Namespace
	kpNode = kpfixture.Node
)

// kpListing reads what kube-proxy programmed for one family through the
// rule parser, as IPTablesListing.
func kpListing(t *testing.T, node *netns.NS, f IPFamily) *IPTablesListing {
	t.Helper()
	cmd := "iptables-save"
	if f == IPv6 {
		cmd = "ip6tables-save"
	}
	out, err := node.Run(cmd)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := iptables.ParseSave([]byte(out))
	if err != nil {
		t.Fatalf("parse %s: %v", cmd, err)
	}
	return rs.KubeProxyListing()
}

// kpCompare compares both families' listings with a fresh expectation.
func kpCompare(t *testing.T, ix *kube.Index, node *netns.NS) (*Expectation, []Comparison) {
	t.Helper()
	e := Expect(ix)
	return e, []Comparison{e.CompareIPTables(IPv4, kpListing(t, node, IPv4)), e.CompareIPTables(IPv6, kpListing(t, node, IPv6))}
}

func mismatchText(cs []Comparison) string {
	var parts []string
	for _, c := range cs {
		for _, m := range c.Mismatches {
			parts = append(parts, fmt.Sprintf("%s %s/%s:%s %s", m.Key.Family, m.Key.Namespace, m.Key.Service, m.Key.Port, m.State))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, "\n")
}

// kpInSync waits until kube-proxy and the mirror agree, then requires them
// to keep agreeing over several listings spanning more than two of
// kube-proxy's 5 s sync periods, and returns the last expectation.
func kpInSync(t *testing.T, ix *kube.Index, node *netns.NS, kp *cpl.KubeProxy, tr *DriftTracker) *Expectation {
	t.Helper()
	var cs []Comparison
	cpl.Eventually(t, 90*time.Second, func() error {
		_, cs = kpCompare(t, ix, node)
		if s := mismatchText(cs); s != "" {
			return fmt.Errorf("kube-proxy and the mirror disagree:\n%s\n%s", s, kp.Tail())
		}
		return nil
	})
	var e *Expectation
	t.Logf("agreed: %d IPv4 and %d IPv6 service ports compared", cs[0].ServicePorts, cs[1].ServicePorts)
	for i := range 12 {
		e, cs = kpCompare(t, ix, node)
		if s := mismatchText(cs); s != "" {
			t.Fatalf("listing %d after agreeing: mismatches\n%s", i, s)
		}
		r := tr.Observe(time.Now(), 0, cs...)
		for _, fd := range r.Families {
			if fd.ServicePorts[Missing]+fd.ServicePorts[Stale]+fd.ServicePorts[EndpointsDiffer] != 0 || fd.Oldest != 0 {
				t.Fatalf("tracker reports drift: %+v", fd)
			}
		}
		if len(r.Series) != 0 || r.Pending != 0 {
			t.Fatalf("tracker series %v, pending %d", r.Series, r.Pending)
		}
		time.Sleep(time.Second)
	}
	return e
}

// TestMirrorMatchesRealKubeProxyIPTables runs the real kube-proxy 1.37.2 in
// iptables mode against a real API server, with a Service of every kind
// the mirror knows, reads what it programmed with iptables-save through the
// rule parser, and requires the mirror's expectation (computed from the
// exporter's own watcher and index) to equal it exactly, for several
// refreshes, before and after the cluster changes.
func TestMirrorMatchesRealKubeProxyIPTables(t *testing.T) {
	testenv.RequireRoot(t)
	for _, c := range []string{"iptables-save", "ip6tables-save", "nsenter"} {
		testenv.RequireCommand(t, c)
	}
	cp := cpl.Start(t)
	ctx := context.Background()
	svcs := kpfixture.Services()
	slices := kpfixture.SetUp(t, cp.Client, svcs) + 1 // and default/kubernetes's

	w, err := kube.NewWatcher(kube.Config{REST: cp.Config, NodeName: kpNode, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	w.Start(wctx)
	ix := w.Index()
	cpl.Eventually(t, 60*time.Second, func() error {
		if ok, detail := w.Ready(); !ok {
			return fmt.Errorf("%s", detail)
		}
		if ix.NodeZone() != "zone-a" {
			return fmt.Errorf("zone %q", ix.NodeZone())
		}
		_, nsvc, nslices := ix.Counts()
		if nsvc != len(svcs)+1 || nslices != slices {
			return fmt.Errorf("%d services, %d slices indexed", nsvc, nslices)
		}
		return nil
	})

	newTracker := func() *DriftTracker {
		tr, err := NewDriftTracker(DriftConfig{RefreshInterval: time.Second, Grace: 0, MaxSeries: 50, FastRelistInterval: time.Second, Buckets: DefaultDriftBuckets})
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	// The legacy backend first, on the initial cluster: kube-proxy and
	// iptables-save both run as iptables-legacy.
	t.Run("legacy backend", func(t *testing.T) {
		t.Setenv("PATH", kpfixture.LegacyPath(t))
		node := kpfixture.NodeNS(t, "kplegacy")
		kp := cp.StartKubeProxy(t, node, cpl.KubeProxyOptions{NodeName: kpNode, Mode: "iptables"})
		kpCheckFixture(t, kpInSync(t, ix, node, kp, newTracker()), svcs)
		if out := node.MustRun("iptables-save"); !strings.Contains(out, "KUBE-SERVICES") || !strings.Contains(kpPathOf(t, "iptables-save"), "legacy") {
			t.Errorf("not the legacy backend: iptables-save is %s", kpPathOf(t, "iptables-save"))
		}
		kp.Stop()
	})

	node := kpfixture.NodeNS(t, "kpdrift")
	kp := cp.StartKubeProxy(t, node, cpl.KubeProxyOptions{NodeName: kpNode, Mode: "iptables"})
	tr := newTracker()
	e := kpInSync(t, ix, node, kp, tr)
	kpCheckFixture(t, e, svcs)

	// The cluster changes; kube-proxy and the mirror must agree again.
	t.Run("after changes", func(t *testing.T) {
		// web: one endpoint stops being ready; itp-local: its local
		// endpoint starts terminating (the Local chain falls back to it);
		// a new Service; one deleted.
		kpfixture.UpdateSlice(t, cp.Client, "web-0", func(es *discoveryv1.EndpointSlice) { es.Endpoints[0].Conditions.Ready = ptrTo(false) })
		kpfixture.UpdateSlice(t, cp.Client, "itp-local-0", func(es *discoveryv1.EndpointSlice) {
			es.Endpoints[0].Conditions = discoveryv1.EndpointConditions{Ready: ptrTo(false), Serving: ptrTo(true), Terminating: ptrTo(true)}
		})
		kpfixture.Create(t, cp.Client, kpfixture.Service{Name: "late", Spec: corev1.ServiceSpec{Ports: kpfixture.Ports("http")},
			Slices: []kpfixture.Slice{{Family: discoveryv1.AddressTypeIPv4, Endpoints: []kpfixture.Endpoint{kpfixture.Ready("10.244.2.40", "node-2")}}}})
		if err := cp.Client.CoreV1().Services(kpNS).Delete(ctx, "sticky", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e := kpInSync(t, ix, node, kp, tr)
		want := map[string][]string{"web": {"10.244.3.1:8080"}, "itp-local": {"10.244.1.10:8080"}, "late": {"10.244.2.40:8080"}}
		for name, eps := range want {
			kpCheckReachable(t, e, name, eps)
		}
		if e.Find(ServicePortID{Family: IPv4, Namespace: kpNS, Name: "sticky", Port: "http", Protocol: "tcp"}) != nil {
			t.Error("deleted Service still expected")
		}
	})
	// The node moves to zone-b: kube-proxy resyncs on the topology change.
	t.Run("after the node changes zone", func(t *testing.T) {
		n, err := cp.Client.CoreV1().Nodes().Get(ctx, kpNode, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Labels[corev1.LabelTopologyZone] = "zone-b"
		if _, err := cp.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		cpl.Eventually(t, 30*time.Second, func() error {
			if z := ix.NodeZone(); z != "zone-b" {
				return fmt.Errorf("zone %q", z)
			}
			return nil
		})
		e := kpInSync(t, ix, node, kp, tr)
		kpCheckReachable(t, e, "zone-mine", []string{"10.244.3.18:8080", "10.244.3.19:8080"})
		kpCheckReachable(t, e, "zone-other", []string{"10.244.3.20:8080", "10.244.3.21:8080"})
	})
}

func ptrTo[T any](v T) *T { return &v }

func kpPathOf(t *testing.T, cmd string) string {
	p, err := exec.LookPath(cmd)
	if err != nil {
		t.Fatal(err)
	}
	target, err := os.Readlink(p)
	if err != nil {
		return p
	}
	return target
}

func kpFirstPort(e *Expectation, name string) *ExpectedPort {
	for i := range e.Family(IPv4) {
		if p := &e.Family(IPv4)[i]; p.ID.Namespace == kpNS && p.ID.Name == name {
			return p
		}
	}
	return nil
}

func kpCheckReachable(t *testing.T, e *Expectation, name string, want []string) {
	t.Helper()
	p := kpFirstPort(e, name)
	if p == nil {
		t.Errorf("%s: not expected", name)
		return
	}
	var got []string
	for _, ep := range p.Reachable() {
		got = append(got, ep.String())
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("%s: endpoints %v, want %v", name, got, want)
	}
}

// kpCheckFixture: the expectation kube-proxy agreed with is the one each
// case is about (not, say, every endpoint everywhere).
func kpCheckFixture(t *testing.T, e *Expectation, svcs []kpfixture.Service) {
	t.Helper()
	for _, s := range svcs {
		p := kpFirstPort(e, s.Name)
		if s.Chains == "" {
			if p != nil && s.Name != "v6only" && s.Name != "dual" {
				t.Errorf("%s: kube-proxy does not proxy it, yet it is expected", s.Name)
			}
			continue
		}
		if p == nil {
			t.Errorf("%s: not expected", s.Name)
			continue
		}
		chains := map[[3]bool]string{{true, false, false}: "svc", {false, true, false}: "svl", {true, true, false}: "svc+svl",
			{false, false, true}: "reject", {false, false, false}: "none"}[[3]bool{len(p.Cluster) > 0, len(p.Local) > 0, !p.HasEndpoints}]
		if chains != s.Chains {
			t.Errorf("%s: chains %q, want %q", s.Name, chains, s.Chains)
		}
		if s.Reachable != nil {
			kpCheckReachable(t, e, s.Name, s.Reachable)
		}
	}
	for _, id := range []ServicePortID{
		{Family: IPv6, Namespace: kpNS, Name: "v6only", Port: "http", Protocol: "tcp"},
		{Family: IPv6, Namespace: kpNS, Name: "dual", Port: "dns", Protocol: "udp"},
	} {
		if p := e.Find(id); p == nil || len(p.Cluster) == 0 || !p.ClusterIP.Is6() {
			t.Errorf("%v: %+v", id, p)
		}
	}
	if p := e.Find(ServicePortID{Family: IPv6, Namespace: kpNS, Name: "dual", Port: "dns", Protocol: "udp"}); p != nil &&
		!p.Cluster.Equal(EndpointSet{netip.MustParseAddrPort("[fd00:10:244:2::26]:8053"), netip.MustParseAddrPort("[fd00:10:244:3::26]:8053")}) {
		t.Errorf("dual IPv6 endpoints %v", p.Cluster)
	}
}
