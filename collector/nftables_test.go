package collector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/proxyrules"
	"github.com/netinspect/netinspect/test/testenv"
)

func errorsIsNoData(err error) bool { return errors.Is(err, ErrNoData) }

var numgenMod = regexp.MustCompile(`"numgen":\s*\{[^}]*"mod":\s*(\d+)`)

func rulesNFTLoad(t testing.TB, ns *netns.NS, text []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := ns.Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(string(text))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s", err, out)
	}
}

// rulesNFTExpect builds the expected nftables samples from the kernel's own
// listing, `nft -j list table <family> kube-proxy`.
func rulesNFTExpect(t testing.TB, ns *netns.NS, unnamed map[string]string) map[string]float64 {
	t.Helper()
	want := map[string]float64{}
	for _, fam := range []struct{ nft, label string }{{"ip", "ipv4"}, {"ip6", "ipv6"}} {
		out, err := ns.Run("nft", "-j", "list", "table", fam.nft, "kube-proxy")
		if err != nil {
			continue
		}
		var doc struct {
			Nftables []map[string]json.RawMessage `json:"nftables"`
		}
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatalf("nft -j output: %v", err)
		}
		kinds := map[string]int{"service": 0, "local": 0, "external": 0, "endpoint": 0, "firewall": 0, "other": 0}
		rules := 0
		eps := map[string]int{}
		for _, obj := range doc.Nftables {
			for typ, raw := range obj {
				var o struct {
					Name  string            `json:"name"`
					Chain string            `json:"chain"`
					Elem  []json.RawMessage `json:"elem"`
				}
				_ = json.Unmarshal(raw, &o)
				switch typ {
				case "chain":
					kind := "other"
					if strings.Contains(o.Name, "/") {
						kind, _, _ = strings.Cut(o.Name, "-")
					}
					kinds[kind]++
					if kind == "service" {
						// service-<HASH8>-<ns>/<svc>/<proto>/<port>
						eps[o.Name[len("service-")+9:]] += 0
					}
				case "rule":
					rules++
					// A service chain balances over "numgen random mod N"
					// endpoints, or DNATs to its only one.
					if strings.HasPrefix(o.Chain, "service-") && strings.Contains(o.Chain, "/") {
						base := o.Chain[len("service-")+9:]
						n := 0
						if m := numgenMod.FindSubmatch(raw); m != nil {
							n, _ = strconv.Atoi(string(m[1]))
						} else if strings.Contains(string(raw), `"dnat"`) {
							n = 1
						}
						eps[base] = max(eps[base], n)
					}
				case "set", "map":
					if strings.HasPrefix(o.Name, "affinity-") {
						continue // per-endpoint sets are not exported
					}
					want[fmt.Sprintf(`netinspect_nftables_map_elements{family=%q,map=%q,table="kube-proxy"}`, fam.label, o.Name)] = float64(len(o.Elem))
				}
			}
		}
		for kind, n := range kinds {
			want[fmt.Sprintf(`netinspect_nftables_chains{family=%q,kind=%q,table="kube-proxy"}`, fam.label, kind)] = float64(n)
		}
		want[fmt.Sprintf(`netinspect_nftables_rules{family=%q,table="kube-proxy"}`, fam.label)] = float64(rules)
		for base, n := range eps {
			p := strings.Split(base, "/")
			port := p[3]
			if port == "" {
				port = unnamed[p[0]+"/"+p[1]]
			}
			want[fmt.Sprintf(`netinspect_nftables_service_endpoints{family=%q,namespace=%q,port=%q,service=%q}`, fam.label, p[0], port, p[1])] = float64(n)
		}
	}
	return want
}

func rulesNFTWait(t testing.TB, c *NFTables, after time.Time) *NFTablesResult {
	t.Helper()
	_ = c.Start(t.Context())
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		c.refresher.Kick()
		if s := c.refresher.Snapshot(); s != nil && s.Started.After(after) {
			if s.Err != nil {
				t.Fatalf("listing failed: %v", s.Err)
			}
			return s.Value
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no nftables snapshot within a minute")
	return nil
}

func TestNFTablesCollector(t *testing.T) {
	testenv.RequireCommand(t, "nft")
	ns := netns.New(t, "nft")
	v4, v6 := rulesTestServices(4), rulesTestServices(6)
	rulesNFTLoad(t, ns, proxyrules.NFTables(v4, 4))
	rulesNFTLoad(t, ns, proxyrules.NFTables(v6, 6))
	before := rulesSnapshotText(t, ns)

	c := in(must(NewNFTables(NFTablesConfig{RefreshInterval: 50 * time.Millisecond, ServiceSeries: ServiceSeriesAll},
		Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(t), ns)
	t.Cleanup(c.Close)
	rulesNFTWait(t, c, time.Time{})

	names := []string{"netinspect_nftables_map_elements", "netinspect_nftables_chains", "netinspect_nftables_rules", "netinspect_nftables_service_endpoints"}
	got := rulesGather(t, c)
	// The default (drift) leaves out the per-service-port series and
	// nothing else.
	def := in(must(NewNFTables(DefaultNFTablesConfig(), Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(t), ns)
	t.Cleanup(def.Close)
	rulesNFTWait(t, def, time.Time{})
	rulesDiff(t, "default output", rulesPrefixed(rulesGather(t, def), "netinspect_nftables_", "netinspect_kube_proxy_"),
		rulesPrefixed(got, "netinspect_nftables_map_elements{", "netinspect_nftables_chains{", "netinspect_nftables_rules{", "netinspect_kube_proxy_"))
	want := rulesNFTExpect(t, ns, nil)
	// svc-2 has an unnamed port and no endpoints: it is only an element of
	// no-endpoint-services, whose key carries the port number.
	want[`netinspect_nftables_service_endpoints{family="ipv4",namespace="ns1",port="80",service="svc-2"}`] = 0
	want[`netinspect_nftables_service_endpoints{family="ipv6",namespace="ns1",port="80",service="svc-2"}`] = 0
	rulesDiff(t, "nftables series", rulesSelect(got, names...), want)
	if v := got[`netinspect_nftables_map_elements{family="ipv4",map="service-ips",table="kube-proxy"}`]; v != 5 {
		// 3 cluster IPs with endpoints + 1 external IP + 1 load-balancer IP.
		t.Errorf("service-ips elements = %v, want 5", v)
	}
	if v := got[`netinspect_nftables_service_endpoints{family="ipv4",namespace="ns1",port="http",service="svc-1"}`]; v != 2 {
		t.Errorf("svc-1 endpoints = %v, want 2", v)
	}
	if _, ok := got[`netinspect_rules_last_refresh_timestamp_seconds{source="nftables"}`]; !ok {
		t.Error("no rules_last_refresh_timestamp_seconds")
	}

	// Change endpoints: svc-0 grows to 3 (kube-proxy replaces the table's
	// content; here the table is rebuilt).
	v4[0].Endpoints = append(v4[0].Endpoints, netip.MustParseAddrPort("10.180.9.9:8080"))
	ns.MustRun("nft", "delete", "table", "ip", "kube-proxy")
	rulesNFTLoad(t, ns, proxyrules.NFTables(v4, 4))
	before = rulesSnapshotText(t, ns)
	rulesNFTWait(t, c, time.Now())
	got = rulesGather(t, c)
	want = rulesNFTExpect(t, ns, nil)
	want[`netinspect_nftables_service_endpoints{family="ipv4",namespace="ns1",port="80",service="svc-2"}`] = 0
	want[`netinspect_nftables_service_endpoints{family="ipv6",namespace="ns1",port="80",service="svc-2"}`] = 0
	rulesDiff(t, "after endpoint change", rulesSelect(got, names...), want)
	if v := got[`netinspect_nftables_service_endpoints{family="ipv4",namespace="ns1",port="http",service="svc-0"}`]; v != 3 {
		t.Errorf("svc-0 endpoints after the change = %v, want 3", v)
	}

	rulesNFTWait(t, c, time.Now())
	if after := rulesSnapshotText(t, ns); after != before {
		t.Errorf("ruleset changed while the collector listed it:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestNFTablesAbsent(t *testing.T) {
	ns := netns.New(t, "nftnone")
	c := in(must(NewNFTables(NFTablesConfig{RefreshInterval: time.Hour},
		Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(t), ns)
	t.Cleanup(c.Close)
	rulesNFTWait(t, c, time.Time{})
	err := c.Update(context.Background(), make(chan prometheus.Metric, 100))
	if !errorsIsNoData(err) {
		t.Fatalf("Update without a kube-proxy table: %v, want ErrNoData", err)
	}
}

// With KubeProxyMode (the binary sets it when the iptables collector is
// off) the nftables collector reports kube_proxy_mode_info: nftables from
// its own table, else from the iptables rules; without it, nothing, so the
// series is never reported twice.
func TestNFTablesReportsKubeProxyMode(t *testing.T) {
	testenv.RequireCommand(t, "nft")
	testenv.RequireCommand(t, "nsenter")
	const mode = "netinspect_kube_proxy_mode_info"
	newC := func(ns *netns.NS, report bool) *NFTables {
		c := in(must(NewNFTables(NFTablesConfig{RefreshInterval: time.Hour, KubeProxyMode: report},
			Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(t), ns)
		t.Cleanup(c.Close)
		rulesNFTWait(t, c, time.Time{})
		return c
	}

	nft := netns.New(t, "nftmode")
	rulesNFTLoad(t, nft, proxyrules.NFTables(rulesTestServices(4), 4))
	rulesDiff(t, "nftables mode", rulesSelect(rulesGather(t, newC(nft, true)), mode), map[string]float64{mode + `{mode="nftables"}`: 1})
	rulesDiff(t, "without KubeProxyMode", rulesSelect(rulesGather(t, newC(nft, false)), mode), map[string]float64{})

	ipt := netns.New(t, "nftmodeipt")
	rulesRestore(t, ipt, "nft", 4, proxyrules.IPTablesRestore(rulesTestServices(4), 4))
	c := newC(ipt, true)
	rulesDiff(t, "iptables mode", rulesSelect(rulesGather(t, c), mode), map[string]float64{mode + `{mode="iptables"}`: 1})
	if err := c.Update(context.Background(), make(chan prometheus.Metric, 100)); !errorsIsNoData(err) {
		t.Errorf("Update without a kube-proxy table: %v, want ErrNoData (the mode is reported all the same)", err)
	}
}
