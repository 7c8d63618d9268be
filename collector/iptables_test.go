package collector

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/kubeproxy"
	"github.com/netinspect/netinspect/source/iptables"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/proxyrules"
	"github.com/netinspect/netinspect/test/testenv"
)

// rulesUpdateCollector runs one Update per Collect.
type rulesUpdateCollector struct{ c Collector }

func (rulesUpdateCollector) Describe(chan<- *prometheus.Desc) {}

func (u rulesUpdateCollector) Collect(ch chan<- prometheus.Metric) {
	_ = u.c.Update(context.Background(), ch)
}

// rulesGather runs Update once and returns every sample as
// `name{label="value",...}` -> value, with labels in name order.
func rulesGather(t testing.TB, c Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(rulesUpdateCollector{c})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out[rulesSampleKey(mf.GetName(), m)] = m.GetGauge().GetValue()
		}
	}
	return out
}

func rulesSampleKey(name string, m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

// rulesSelect keeps the samples of the named metrics.
func rulesSelect(all map[string]float64, names ...string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range all {
		for _, n := range names {
			if strings.HasPrefix(k, n+"{") {
				out[k] = v
			}
		}
	}
	return out
}

// rulesPrefixed keeps the series whose name (and labels) start with one
// of prefixes.
func rulesPrefixed(all map[string]float64, prefixes ...string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range all {
		for _, p := range prefixes {
			if strings.HasPrefix(k, p) {
				out[k] = v
			}
		}
	}
	return out
}

func rulesDiff(t *testing.T, what string, got, want map[string]float64) {
	t.Helper()
	var lines []string
	for k, v := range want {
		if g, ok := got[k]; !ok {
			lines = append(lines, fmt.Sprintf("missing %s = %v", k, v))
		} else if g != v {
			lines = append(lines, fmt.Sprintf("%s = %v, want %v", k, g, v))
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			lines = append(lines, fmt.Sprintf("unexpected %s = %v", k, v))
		}
	}
	if len(lines) > 0 {
		sort.Strings(lines)
		t.Errorf("%s:\n%s", what, strings.Join(lines, "\n"))
	}
}

// rulesWaitRefresh waits for a snapshot of a listing that started after
// after and satisfies ok.
func rulesWaitRefresh(t testing.TB, c *IPTables, after time.Time, ok func(*IPTablesResult) bool) *IPTablesResult {
	t.Helper()
	_ = c.Start(t.Context())
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		c.refresher.Kick()
		if s := c.refresher.Snapshot(); s != nil && s.Started.After(after) {
			if s.Err != nil {
				t.Fatalf("listing failed: %v", s.Err)
			}
			if ok == nil || ok(s.Value) {
				return s.Value
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no matching iptables snapshot within a minute")
	return nil
}

// rulesRestore loads rules into ns with the backend's iptables-restore.
func rulesRestore(t testing.TB, ns *netns.NS, backend string, family int, text []byte) {
	t.Helper()
	bin := map[int]string{4: "iptables", 6: "ip6tables"}[family] + "-" + backend + "-restore"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := ns.Command(ctx, bin)
	cmd.Stdin = bytes.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", bin, err, out)
	}
}

// rulesKernelCounts lists every chain with `iptables -t <table> -S` (the
// kernel's own listing, independent of iptables-save and of our parser)
// and returns rules per chain of the KUBE- chains, hashed ones summed.
func rulesKernelCounts(t testing.TB, ns *netns.NS, backend, family, table string) map[string]int {
	t.Helper()
	bin := map[string]string{"ipv4": "iptables", "ipv6": "ip6tables"}[family] + "-" + backend
	out := ns.MustRun(bin, "-w", "5", "-t", table, "-S")
	counts := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[1], "KUBE-") {
			continue
		}
		chain := f[1]
		for _, p := range kubeproxy.HashedPrefixes {
			if strings.HasPrefix(chain, p) {
				chain = p + "*"
			}
		}
		switch f[0] {
		case "-N":
			counts[chain] += 0
		case "-A":
			counts[chain]++
		}
	}
	return counts
}

var sepTarget = regexp.MustCompile(`-j (KUBE-SEP-[A-Z2-7]{16})`)

// rulesSvcPort is one service port whose endpoint count a test checks.
type rulesSvcPort struct {
	Namespace, Name, PortName, Protocol string
	Port                                int
}

func rulesSvcPorts(svcs []proxyrules.Service) []rulesSvcPort {
	var out []rulesSvcPort
	for _, s := range svcs {
		out = append(out, rulesSvcPort{s.Namespace, s.Name, s.PortName, s.Protocol, s.Port})
	}
	return out
}

// rulesKernelEndpoints counts the distinct KUBE-SEP targets of a service's
// KUBE-SVC and KUBE-SVL chains with `iptables -t nat -S <chain>`.
func rulesKernelEndpoints(t testing.TB, ns *netns.NS, backend, family string, s rulesSvcPort) int {
	t.Helper()
	bin := map[string]string{"ipv4": "iptables", "ipv6": "ip6tables"}[family] + "-" + backend
	hash := kubeproxy.PortProtoHash(kubeproxy.ServicePortName(s.Namespace, s.Name, s.PortName), s.Protocol)
	seen := map[string]bool{}
	for _, prefix := range []string{kubeproxy.PrefixSVC, kubeproxy.PrefixSVL} {
		out, err := ns.Run(bin, "-w", "5", "-t", "nat", "-S", prefix+hash)
		if err != nil {
			continue // no chain: kube-proxy rejects the service
		}
		for _, m := range sepTarget.FindAllStringSubmatch(out, -1) {
			seen[m[1]] = true
		}
	}
	return len(seen)
}

// rulesTestServices are services of every shape kube-proxy writes rules
// for: ClusterIP, session affinity, NodePort with external and
// load-balancer IPs, an unnamed port without endpoints, UDP.
func rulesTestServices(family int) []proxyrules.Service {
	svcs := proxyrules.Generate("ns1", 4, 2, family)
	svcs[0].SessionAffinity = true
	svcs[1].NodePort = 30080
	if family == 4 {
		svcs[1].ExternalIPs = []netip.Addr{netip.MustParseAddr("192.0.2.10")}
		svcs[1].LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("192.0.2.20")}
	} else {
		svcs[1].ExternalIPs = []netip.Addr{netip.MustParseAddr("2001:db8::10")}
		svcs[1].LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("2001:db8::20")}
	}
	svcs[2].Endpoints = nil
	svcs[2].PortName = ""
	svcs[3].Protocol, svcs[3].PortName, svcs[3].Port = "udp", "dns", 53
	svcs[3].Endpoints = svcs[3].Endpoints[:1]
	return svcs
}

// rulesExpectIPTables builds the expected iptables samples from the
// kernel's own listing.
func rulesExpectIPTables(t testing.TB, ns *netns.NS, backend string, svcs map[string][]rulesSvcPort) map[string]float64 {
	t.Helper()
	want := map[string]float64{}
	for _, family := range []string{"ipv4", "ipv6"} {
		for _, table := range []string{"filter", "nat", "mangle"} {
			for chain, n := range rulesKernelCounts(t, ns, backend, family, table) {
				want[fmt.Sprintf(`netinspect_iptables_rules{chain=%q,family=%q,table=%q}`, chain, family, table)] = float64(n)
			}
		}
		for _, p := range kubeproxy.HashedPrefixes {
			k := fmt.Sprintf(`netinspect_iptables_rules{chain=%q,family=%q,table="nat"}`, p+"*", family)
			if _, ok := want[k]; !ok {
				want[k] = 0
			}
		}
		for _, s := range svcs[family] {
			port := s.PortName
			if port == "" {
				port = fmt.Sprint(s.Port)
			}
			want[fmt.Sprintf(`netinspect_iptables_service_endpoints{family=%q,namespace=%q,port=%q,service=%q}`, family, s.Namespace, port, s.Name)] =
				float64(rulesKernelEndpoints(t, ns, backend, family, s))
		}
	}
	return want
}

func rulesSnapshotText(t testing.TB, ns *netns.NS) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range [][]string{
		{"iptables-nft-save"}, {"ip6tables-nft-save"}, {"iptables-legacy-save"}, {"ip6tables-legacy-save"},
		{"nft", "list", "ruleset"},
	} {
		out, _ := ns.Run(cmd...)
		for _, line := range strings.Split(out, "\n") {
			// iptables-save stamps the time of the listing.
			if strings.HasPrefix(line, "# Generated by") || strings.HasPrefix(line, "# Completed on") {
				continue
			}
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func TestIPTablesCollector(t *testing.T) {
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			for _, cmd := range []string{"iptables-" + backend + "-restore", "ip6tables-" + backend + "-restore", "nsenter", "nft"} {
				testenv.RequireCommand(t, cmd)
			}
			ns := netns.New(t, "ipt"+backend)
			svcs := map[string][]proxyrules.Service{"ipv4": rulesTestServices(4), "ipv6": rulesTestServices(6)}
			ports := func() map[string][]rulesSvcPort {
				return map[string][]rulesSvcPort{"ipv4": rulesSvcPorts(svcs["ipv4"]), "ipv6": rulesSvcPorts(svcs["ipv6"])}
			}
			rulesRestore(t, ns, backend, 4, proxyrules.IPTablesRestore(svcs["ipv4"], 4))
			rulesRestore(t, ns, backend, 6, proxyrules.IPTablesRestore(svcs["ipv6"], 6))
			before := rulesSnapshotText(t, ns)

			c := in(must(NewIPTables(IPTablesConfig{RefreshInterval: 50 * time.Millisecond, ServiceSeries: ServiceSeriesAll},
				Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(t), ns)
			t.Cleanup(c.Close)
			st := rulesWaitRefresh(t, c, time.Time{}, nil)
			if st.Backend != backend {
				t.Errorf("detected backend %q, want %q", st.Backend, backend)
			}

			got := rulesGather(t, c)
			// The default (drift) leaves out the per-service-port series
			// and nothing else.
			def := in(must(NewIPTables(DefaultIPTablesConfig(), Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(t), ns)
			t.Cleanup(def.Close)
			rulesWaitRefresh(t, def, time.Time{}, nil)
			rulesDiff(t, "default output", rulesPrefixed(rulesGather(t, def), "netinspect_iptables_", "netinspect_kube_proxy_"),
				rulesPrefixed(got, "netinspect_iptables_rules{", "netinspect_kube_proxy_"))
			rulesDiff(t, "iptables series", rulesSelect(got, "netinspect_iptables_rules", "netinspect_iptables_service_endpoints"),
				rulesExpectIPTables(t, ns, backend, ports()))
			rulesDiff(t, "mode", rulesSelect(got, "netinspect_kube_proxy_mode_info"),
				map[string]float64{`netinspect_kube_proxy_mode_info{mode="iptables"}`: 1})
			if v := got[`netinspect_rules_last_refresh_timestamp_seconds{source="iptables"}`]; v <= 0 {
				t.Errorf("rules_last_refresh_timestamp_seconds = %v", v)
			}
			if _, ok := got[`netinspect_rules_refresh_duration_seconds{source="iptables"}`]; !ok {
				t.Error("no rules_refresh_duration_seconds")
			}
			// Spot-check against the fixture too, so an error shared by
			// the kernel listing and the expectation cannot hide.
			if v := got[`netinspect_iptables_service_endpoints{family="ipv4",namespace="ns1",port="http",service="svc-0"}`]; v != 2 {
				t.Errorf("svc-0 endpoints = %v, want 2", v)
			}
			if v, ok := got[`netinspect_iptables_service_endpoints{family="ipv6",namespace="ns1",port="80",service="svc-2"}`]; !ok || v != 0 {
				t.Errorf("svc-2 (no endpoints, unnamed port) = %v (present %v), want 0", v, ok)
			}

			// Change endpoints: svc-0 grows to 3, svc-1 loses its
			// endpoints; the next refresh shows it.
			svcs["ipv4"][0].Endpoints = append(svcs["ipv4"][0].Endpoints, netip.MustParseAddrPort("10.180.9.9:8080"))
			svcs["ipv4"][1].Endpoints = nil
			rulesRestore(t, ns, backend, 4, proxyrules.IPTablesRestore(svcs["ipv4"], 4))
			rulesWaitRefresh(t, c, time.Now(), nil)
			before = rulesSnapshotText(t, ns)
			got = rulesGather(t, c)
			want := rulesExpectIPTables(t, ns, backend, ports())
			rulesDiff(t, "after endpoint change", rulesSelect(got, "netinspect_iptables_rules", "netinspect_iptables_service_endpoints"), want)
			if v := got[`netinspect_iptables_service_endpoints{family="ipv4",namespace="ns1",port="http",service="svc-0"}`]; v != 3 {
				t.Errorf("svc-0 endpoints after the change = %v, want 3", v)
			}
			if v := got[`netinspect_iptables_service_endpoints{family="ipv4",namespace="ns1",port="http",service="svc-1"}`]; v != 0 {
				t.Errorf("svc-1 endpoints after the change = %v, want 0", v)
			}

			// Read-only: more refreshes change nothing in the ruleset.
			rulesWaitRefresh(t, c, time.Now(), nil)
			if after := rulesSnapshotText(t, ns); after != before {
				t.Errorf("ruleset changed while the collector listed it:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

func TestIPTablesModeDetection(t *testing.T) {
	testenv.RequireCommand(t, "nsenter")
	testenv.RequireCommand(t, "nft")
	ns := netns.New(t, "iptmode")
	newC := func() *IPTables {
		c := in(must(NewIPTables(IPTablesConfig{RefreshInterval: time.Hour},
			Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(t), ns)
		t.Cleanup(c.Close)
		return c
	}
	before := rulesSnapshotText(t, ns)
	if st := rulesWaitRefresh(t, newC(), time.Time{}, nil); st.Mode != kubeproxy.ModeNone {
		t.Errorf("empty netns: mode %q, want none", st.Mode)
	}
	// Listing an empty namespace creates no table in either backend.
	if after := rulesSnapshotText(t, ns); after != before {
		t.Errorf("listing an empty namespace changed it:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// nftables mode: kube-proxy's own table.
	rulesNFTLoad(t, ns, proxyrules.NFTables(rulesTestServices(4), 4))
	if st := rulesWaitRefresh(t, newC(), time.Time{}, nil); st.Mode != kubeproxy.ModeNFTables {
		t.Errorf("with table ip kube-proxy: mode %q, want nftables", st.Mode)
	}
	ns.MustRun("nft", "delete", "table", "ip", "kube-proxy")

	// ipvs mode: kube-proxy's ipvs filter chain and ipset matches.
	rulesRestore(t, ns, "nft", 4, []byte("*filter\n:KUBE-IPVS-FILTER - [0:0]\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"))
	if st := rulesWaitRefresh(t, newC(), time.Time{}, nil); st.Mode != kubeproxy.ModeIPVS {
		t.Errorf("with KUBE-IPVS-FILTER: mode %q, want ipvs", st.Mode)
	}
}

// When kube-proxy's comments are gone, service chains are attributed by
// recomputing kube-proxy's chain-name hash from the services in the index.
// The real kube-proxy keeps the comments of KUBE-SERVICES even in large
// clusters, so this path is fed rules with every comment removed.
func TestIPTablesAttributionByHash(t *testing.T) {
	svcs := rulesTestServices(4)
	text := proxyrules.IPTablesRestore(svcs, 4)
	text = regexp.MustCompile(` -m comment --comment ("[^"]*"|\S+)`).ReplaceAll(text, nil)
	if bytes.Contains(text, []byte("--comment")) {
		t.Fatal("comments left")
	}
	rs, err := iptables.ParseSave(text)
	if err != nil {
		t.Fatal(err)
	}
	ix := kube.NewIndex("node")
	for _, s := range svcs {
		ix.SetService(kube.ServiceInfo{Namespace: s.Namespace, Name: s.Name, Type: "ClusterIP",
			ClusterIPs: []netip.Addr{s.ClusterIP},
			Ports:      []kube.ServicePortInfo{{Name: s.PortName, Port: uint16(s.Port), Protocol: s.Protocol}}})
	}
	for _, tc := range []struct {
		name  string
		index *kube.Index
		want  []ServicePortCount
	}{
		{"with index", ix, []ServicePortCount{
			{kube.ServicePortRef{Namespace: "ns1", Service: "svc-0", Port: "http"}, 2}, {kube.ServicePortRef{Namespace: "ns1", Service: "svc-1", Port: "http"}, 2}, {kube.ServicePortRef{Namespace: "ns1", Service: "svc-3", Port: "dns"}, 1},
		}},
		// Without the index the endpoints are still counted, under empty
		// labels (never guessed).
		{"without index", nil, []ServicePortCount{{kube.ServicePortRef{Namespace: "", Service: "", Port: ""}, 5}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := must(NewIPTables(IPTablesConfig{}, Deps{Logger: zap.NewNop(), Index: tc.index}))(t)
			f := c.aggregate("ipv4", rs)
			if fmt.Sprint(f.Endpoints) != fmt.Sprint(tc.want) {
				t.Errorf("endpoints %v, want %v", f.Endpoints, tc.want)
			}
		})
	}
}

func TestIPTablesNoIPTablesSave(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	c := must(NewIPTables(IPTablesConfig{RefreshInterval: time.Hour}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(t)
	defer c.Close()
	_ = c.Start(t.Context())
	deadline := time.Now().Add(time.Minute)
	for c.refresher.Snapshot() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	err := c.Update(context.Background(), make(chan prometheus.Metric, 100))
	if !errorsIsNoData(err) {
		t.Fatalf("Update without iptables-save: %v, want ErrNoData", err)
	}
}
