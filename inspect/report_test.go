package inspect

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/netinspect/netinspect/collector"
	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/kubeproxy"
	"github.com/netinspect/netinspect/source/conntrack"
)

// fake is a collector whose result is fixed, like a collector's would be.
type fake[T any] struct {
	v   T
	err error
}

func (f fake[T]) Update(context.Context, chan<- prometheus.Metric) error { return f.err }

func (f fake[T]) Result(context.Context) (T, error) { return f.v, f.err }

func testIndex() *kube.Index {
	ix := kube.NewIndex("node-a")
	ix.SetPod(kube.PodInfo{Namespace: "shop", Name: "cart-0", Node: "node-a",
		IPs: []netip.Addr{netip.MustParseAddr("10.244.0.2"), netip.MustParseAddr("fd00::2")}})
	ix.SetPod(kube.PodInfo{Namespace: "a-very-long-namespace-name-for-the-payments-team", Name: "payments-api-7d9c8b6f5-x2x9q", Node: "node-a",
		IPs: []netip.Addr{netip.MustParseAddr("10.244.0.3")}})
	ix.SetService(kube.ServiceInfo{Namespace: "shop", Name: "cart", Type: "ClusterIP",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")},
		Ports:      []kube.ServicePortInfo{{Name: "http", Port: 80, Protocol: "tcp"}, {Port: 9090, Protocol: "tcp"}}})
	return ix
}

func testSources() []Source {
	shop := func(name string) kube.PodRef { return kube.PodRef{Namespace: "shop", Name: name} }
	var stats conntrack.CPUStats
	stats.Counters[conntrack.StatDrop], stats.Present[conntrack.StatDrop] = 12, true
	stats.Counters[conntrack.StatEarlyDrop], stats.Present[conntrack.StatEarlyDrop] = 3, true
	return []Source{
		{Name: "conntrack", Collector: fake[*collector.ConntrackResult]{v: &collector.ConntrackResult{Reading: conntrack.Reading{
			Source: "netlink", Entries: 196608, Limit: 262144, CPUs: []conntrack.CPUStats{stats},
		}}}},
		{Name: "veth", Collector: fake[*collector.VethResult]{v: &collector.VethResult{Interfaces: []collector.PodInterface{
			{Pod: shop("cart-0"), Interface: "eth0", HostInterface: "veth1a2b3c4d", Method: "netns", NetNS: "/run/netns/cni-1234"},
		}}}},
		{Name: "iptables", Collector: fake[*collector.IPTablesResult]{v: &collector.IPTablesResult{Mode: "iptables", Families: []collector.IPTablesFamily{
			{Family: "ipv4", Endpoints: []collector.ServicePortCount{{ServicePortRef: kube.ServicePortRef{Namespace: "shop", Service: "cart", Port: "http"}, N: 2}}},
		}, Drift: testDrift()}}},
		{Name: "conntrack-attribution", Collector: fake[*collector.AttributionResult]{v: &collector.AttributionResult{
			Pods: []collector.AttributedCount{
				{Namespace: "shop", Name: "cart-0", Protocol: "tcp", Entries: 100},
				{Namespace: "shop", Name: "cart-0", Protocol: "udp", Entries: 20},
			},
			Services: []collector.AttributedCount{{Namespace: "shop", Name: "cart", Protocol: "tcp", Entries: 90}},
		}}},
		{Name: "ipvs", Collector: fake[*collector.IPVSResult]{err: errors.Join(errors.New("/proc/net/ip_vs absent, ip_vs is not loaded"), collector.ErrNoData)}},
	}
}

// testDrift: cart's unnamed port 9090 is missing on this node, and a
// deleted Service old/gone still has rules.
func testDrift() *collector.DriftResult {
	missing := kubeproxy.DriftSeries{Key: kubeproxy.DriftKey{Family: kubeproxy.IPv4, Namespace: "shop", Service: "cart", Port: "9090"}, State: kubeproxy.Missing, Age: 45 * time.Second}
	stale := kubeproxy.DriftSeries{Key: kubeproxy.DriftKey{Family: kubeproxy.IPv4, Namespace: "old", Service: "gone", Port: "grpc"}, State: kubeproxy.Stale, Age: 90 * time.Second}
	return &collector.DriftResult{Mode: "iptables", DriftReport: kubeproxy.DriftReport{
		Families: []kubeproxy.FamilyDrift{{Family: kubeproxy.IPv4, ServicePorts: [4]int{1, 1, 1, 0}, Oldest: 90 * time.Second}},
		Series:   []kubeproxy.DriftSeries{stale, missing}, Counted: []kubeproxy.DriftSeries{stale, missing},
	}}
}

func TestBuildJoinsKernelViewToKubernetes(t *testing.T) {
	res, problems := Gather(context.Background(), testSources())
	r := Build("node-a", "kubernetes cache synced", testIndex(), res, problems, Filter{})

	if r.KubeProxyMode != "iptables" {
		t.Errorf("mode %q", r.KubeProxyMode)
	}
	if c := r.Conntrack; c == nil || c.UsageRatio != 0.75 || c.Stats["drop"] != 12 || c.Source != "netlink" {
		t.Errorf("conntrack %+v", c)
	}
	if got := r.Conntrack.TopPods; len(got) != 1 || got[0] != (Entries{"shop", "cart-0", 120}) {
		t.Errorf("top pods %+v, want shop/cart-0 with 120 (tcp+udp)", got)
	}
	var cart *Pod
	for i := range r.Pods {
		if r.Pods[i].Name == "cart-0" {
			cart = &r.Pods[i]
		}
	}
	if cart == nil || len(cart.Interfaces) != 1 || cart.Interfaces[0].HostInterface != "veth1a2b3c4d" || *cart.ConntrackEntries != 120 || cart.Netns != "/run/netns/cni-1234" {
		t.Fatalf("cart-0 %+v", cart)
	}
	// old/gone is only in the rules (stale); cart is in the index.
	if len(r.Services) != 2 || r.Services[0].Name != "gone" || len(r.Services[1].Ports) != 2 {
		t.Fatalf("services %+v", r.Services)
	}
	cartSvc := r.Services[1]
	http, unnamed := cartSvc.Ports[1], cartSvc.Ports[0] // ports sort by name: "9090" before "http"
	if http.Port != "http" || http.IPTablesEndpoints == nil || *http.IPTablesEndpoints != 2 {
		t.Errorf("port http %+v", http)
	}
	if fmt.Sprint(http.Drift) != "[{ipv4 in_sync 0}]" || fmt.Sprint(unnamed.Drift) != "[{ipv4 missing 45}]" {
		t.Errorf("drift of cart's ports: http %v, 9090 %v", http.Drift, unnamed.Drift)
	}
	if g := r.Services[0]; g.Namespace != "old" || len(g.Ports) != 1 || fmt.Sprint(g.Ports[0].Drift) != "[{ipv4 stale 90}]" {
		t.Errorf("stale service %+v", g)
	}
	if d := r.KubeProxyDrift; d == nil || d.Mode != "iptables" || fmt.Sprint(d.Families) != "[{ipv4 1 1 1 0 90}]" {
		t.Errorf("drift summary %+v", d)
	}
	if len(r.Problems) != 1 || r.Problems[0].Source != "ipvs" || !r.Problems[0].Absent {
		t.Errorf("problems %+v", r.Problems)
	}

	only := Build("node-a", "", testIndex(), res, problems, Filter{Namespace: "shop", Pod: "cart-0"})
	if len(only.Pods) != 1 || len(only.Services) != 0 {
		t.Errorf("filter by pod: %d pods, %d services", len(only.Pods), len(only.Services))
	}
}

func TestTableFitsEightyColumns(t *testing.T) {
	res, problems := Gather(context.Background(), testSources())
	var out bytes.Buffer
	if err := Build("node-a", "kubernetes cache synced", testIndex(), res, problems, Filter{}).WriteTable(&out); err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(out.String(), "\n") {
		if len(line) > Width {
			t.Errorf("line %d is %d columns: %q", i+1, len(line), line)
		}
	}
	for _, want := range []string{"196608 of 262144 entries (75.0%)", "shop/cart-0", "veth1a2b3c4d/netns", "ipt 2", "ipvs (absent)",
		"ipv4 (iptables mode): 1 in sync, 1 missing, 1 stale, 0 endpoints; oldest 90s", "drift ipv4: missing for 45s", "drift ipv4: stale for 90s"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

// ValidateJSON checks a report's JSON against report.schema.json.
func ValidateJSON(t *testing.T, doc []byte) {
	t.Helper()
	sch, err := jsonschema.NewCompiler().Compile("report.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		t.Fatalf("report is not JSON: %v", err)
	}
	if err := sch.Validate(inst); err != nil {
		t.Errorf("report does not match the schema: %v\n%s", err, doc)
	}
}

func TestJSONMatchesSchema(t *testing.T) {
	res, problems := Gather(context.Background(), testSources())
	for _, r := range []Report{
		Build("node-a", "synced", testIndex(), res, problems, Filter{}),
		Build("", "kubernetes enrichment off", nil, Results{}, nil, Filter{}),
	} {
		var out bytes.Buffer
		if err := r.WriteJSON(&out); err != nil {
			t.Fatal(err)
		}
		ValidateJSON(t, out.Bytes())
	}
	// The schema rejects what the report must not contain.
	var bad map[string]any
	var out bytes.Buffer
	if err := Build("n", "", nil, Results{}, nil, Filter{}).WriteJSON(&out); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out.Bytes(), &bad); err != nil {
		t.Fatal(err)
	}
	bad["unexpected"] = 1
	b, _ := json.Marshal(bad)
	if schemaAccepts(t, b) {
		t.Error("schema accepted an unknown field")
	}
}

func schemaAccepts(t *testing.T, doc []byte) bool {
	t.Helper()
	sch, err := jsonschema.NewCompiler().Compile("report.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	inst, _ := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	return sch.Validate(inst) == nil
}

// warmingSource is a background source whose first snapshot takes a few
// polls, and absentSource one whose feature is missing altogether.
type warmingSource struct {
	polls   int
	started bool
}

func (w *warmingSource) Start(context.Context) error { w.started = true; return nil }

func (w *warmingSource) Update(context.Context, chan<- prometheus.Metric) error { return nil }

func (w *warmingSource) Result(context.Context) (*collector.IPTablesResult, error) {
	if !w.started {
		return nil, errors.New("read before Start")
	}
	if w.polls++; w.polls < 3 {
		return nil, errors.Join(collector.ErrNotReady, collector.ErrNoData)
	}
	return &collector.IPTablesResult{Mode: "nftables"}, nil
}

func TestGatherWaitsForFirstSnapshotButNotForAbsentSources(t *testing.T) {
	w := &warmingSource{}
	absent := fake[*collector.NFTablesResult]{err: errors.Join(errors.New("no table kube-proxy"), collector.ErrNoData)}
	res, problems := Gather(context.Background(), []Source{{Name: "iptables", Collector: w}, {Name: "nftables", Collector: absent}})
	if w.polls != 3 {
		t.Errorf("background source polled %d times, want 3", w.polls)
	}
	if r := Build("n", "", nil, res, problems, Filter{}); r.KubeProxyMode != "nftables" {
		t.Errorf("mode %q from the warmed-up source, want nftables", r.KubeProxyMode)
	}
	if len(problems) != 1 || problems[0].Source != "nftables" || !problems[0].Absent {
		t.Errorf("problems %+v, want nftables absent", problems)
	}
}
