package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// targetsRuleset has the shapes kube-proxy 1.37's nftables mode writes
// (pkg/proxy/nftables/proxier.go writeServiceToEndpointDNATs and
// writeServiceToEndpointJumps): a numgen DNAT map, a lone DNAT, a numgen
// verdict map to endpoint chains (session affinity), an external chain's
// goto, and the named maps of the service IPs and of the service ports
// without endpoints; IPv6 alike.
const targetsRuleset = `
table ip kube-proxy {
  chain reject-chain {
    reject
  }
  chain service-AAAAAAAA-ns/web/tcp/http {
    meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.244.1.1 . 8080, 1 : 10.244.1.2 . 8080 }
  }
  chain service-BBBBBBBB-ns/one/tcp/http {
    meta l4proto tcp dnat to 10.244.1.3:8080
  }
  chain endpoint-CCCCCCCC-ns/s/tcp/http__10.244.1.4/8080 {
    meta l4proto tcp dnat to 10.244.1.4:8080
  }
  chain endpoint-DDDDDDDD-ns/s/tcp/http__10.244.1.5/8080 {
    meta l4proto tcp dnat to 10.244.1.5:8080
  }
  chain service-EEEEEEEE-ns/s/tcp/http {
    numgen random mod 2 vmap { 0 : goto endpoint-CCCCCCCC-ns/s/tcp/http__10.244.1.4/8080, 1 : goto endpoint-DDDDDDDD-ns/s/tcp/http__10.244.1.5/8080 }
  }
  chain external-EEEEEEEE-ns/s/tcp/http {
    fib saddr type local goto service-EEEEEEEE-ns/s/tcp/http
    goto service-EEEEEEEE-ns/s/tcp/http
  }
  map service-ips {
    type ipv4_addr . inet_proto . inet_service : verdict
    elements = { 10.96.0.10 . tcp . 80 : goto service-AAAAAAAA-ns/web/tcp/http }
  }
  map no-endpoint-services {
    type ipv4_addr . inet_proto . inet_service : verdict
    elements = { 10.96.0.11 . tcp . 80 comment "ns/empty:http" : goto reject-chain,
                 10.96.0.12 . tcp . 80 comment "ns/local:http" : drop }
  }
}
table ip6 kube-proxy {
  chain service-FFFFFFFF-ns/web/tcp/http {
    meta l4proto tcp dnat ip6 addr . port to numgen random mod 2 map { 0 : fd00::1 . 8080, 1 : fd00::2 . 8080 }
  }
  chain service-GGGGGGGG-ns/one/tcp/http {
    meta l4proto tcp dnat to [fd00::3]:8080
  }
}
`

// TestReadTargets loads kube-proxy's shapes into a namespace and reads them
// back: every DNAT target and goto, through literal rules and anonymous
// maps, and the verdicts of named map elements.
func TestReadTargets(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "nft")
	ns := netns.New(t, "nfttargets")
	file := filepath.Join(t.TempDir(), "rules.nft")
	if err := os.WriteFile(file, []byte(targetsRuleset), 0o644); err != nil {
		t.Fatal(err)
	}
	ns.MustRun("nft", "-f", file)

	r := Reader{ProcFS: "/proc", Target: ns.Target(), Targets: func(*Table) func(string) bool {
		return func(chain string) bool { return strings.Contains(chain, "/") }
	}}
	tables, err := r.Read(context.Background(), "kube-proxy")
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) != 2 {
		t.Fatalf("%d tables, want ip and ip6", len(tables))
	}
	got := map[string]string{}
	for _, tb := range tables {
		for chain, st := range tb.ChainRules {
			var parts []string
			eps := slices.Clone(st.DNAT)
			slices.SortFunc(eps, netip.AddrPort.Compare)
			for _, ep := range eps {
				parts = append(parts, ep.String())
			}
			gotos := slices.Clone(st.Gotos)
			slices.Sort(gotos)
			parts = append(parts, gotos...)
			if len(st.DNATMaps)+len(st.VerdictMaps) > 0 {
				parts = append(parts, "unresolved")
			}
			got[tb.Family+" "+chain] = strings.Join(parts, " ")
		}
	}
	want := map[string]string{
		"ipv4 reject-chain":                                     "",
		"ipv4 service-AAAAAAAA-ns/web/tcp/http":                 "10.244.1.1:8080 10.244.1.2:8080",
		"ipv4 service-BBBBBBBB-ns/one/tcp/http":                 "10.244.1.3:8080",
		"ipv4 endpoint-CCCCCCCC-ns/s/tcp/http__10.244.1.4/8080": "10.244.1.4:8080",
		"ipv4 endpoint-DDDDDDDD-ns/s/tcp/http__10.244.1.5/8080": "10.244.1.5:8080",
		"ipv4 service-EEEEEEEE-ns/s/tcp/http":                   "endpoint-CCCCCCCC-ns/s/tcp/http__10.244.1.4/8080 endpoint-DDDDDDDD-ns/s/tcp/http__10.244.1.5/8080",
		"ipv4 external-EEEEEEEE-ns/s/tcp/http":                  "service-EEEEEEEE-ns/s/tcp/http service-EEEEEEEE-ns/s/tcp/http",
		"ipv6 service-FFFFFFFF-ns/web/tcp/http":                 "[fd00::1]:8080 [fd00::2]:8080",
		"ipv6 service-GGGGGGGG-ns/one/tcp/http":                 "[fd00::3]:8080",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %q, want %q", k, got[k], w)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected chain %s: %q", k, got[k])
		}
	}

	verdicts := map[string]string{}
	for _, s := range tables[0].Sets {
		for _, e := range s.Elements {
			verdicts[s.Name+" "+e.Comment] = e.Verdict + " " + e.Chain
		}
	}
	for k, w := range map[string]string{
		"service-ips ":                       "goto service-AAAAAAAA-ns/web/tcp/http",
		"no-endpoint-services ns/empty:http": "goto reject-chain",
		"no-endpoint-services ns/local:http": "drop ",
	} {
		if verdicts[k] != w {
			t.Errorf("element %s: verdict %q, want %q (all: %v)", k, verdicts[k], w, verdicts)
		}
	}

	// Without Targets the maps stay unresolved (and cost no request).
	plain, err := Reader{ProcFS: "/proc", Target: ns.Target()}.Read(context.Background(), "kube-proxy")
	if err != nil {
		t.Fatal(err)
	}
	if st := plain[0].ChainRules["service-AAAAAAAA-ns/web/tcp/http"]; len(st.DNAT) != 0 || len(st.DNATMaps) != 1 || st.Endpoints() != 2 {
		t.Errorf("without Targets: %+v", st)
	}
}

// TestReadTargetsCache: with a TargetCache a second Read reads no map
// again and gives the same targets; a rule kube-proxy rewrote (a new rule,
// its anonymous map maybe under the old name) and a table deleted and
// made again (the same rule handles and map names) are read anew, and the
// cache keeps only the maps in use.
func TestReadTargetsCache(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "nft")
	ns := netns.New(t, "nftcache")
	load := func(text string) {
		t.Helper()
		file := filepath.Join(t.TempDir(), "rules.nft")
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		ns.MustRun("nft", "-f", file)
	}
	load(targetsRuleset)
	cache := &TargetCache{}
	r := Reader{ProcFS: "/proc", Target: ns.Target(), Cache: cache, Targets: func(*Table) func(string) bool {
		return func(chain string) bool { return strings.Contains(chain, "/") }
	}}
	const web = "service-AAAAAAAA-ns/web/tcp/http"
	webTargets := func() string {
		t.Helper()
		tables, err := r.Read(context.Background(), "kube-proxy")
		if err != nil {
			t.Fatal(err)
		}
		for _, tb := range tables {
			if tb.Family == "ipv4" {
				eps := slices.Clone(tb.ChainRules[web].DNAT)
				slices.SortFunc(eps, netip.AddrPort.Compare)
				return fmt.Sprint(eps)
			}
		}
		t.Fatal("no ipv4 table")
		return ""
	}
	step := func(what, want string, wantHits, wantMisses int) {
		t.Helper()
		h0, m0 := cache.Stats()
		if got := webTargets(); got != want {
			t.Errorf("%s: %s DNATs to %s, want %s", what, web, got, want)
		}
		h, m := cache.Stats()
		if h-h0 != wantHits || m-m0 != wantMisses {
			t.Errorf("%s: %d maps from the cache, %d read; want %d and %d", what, h-h0, m-m0, wantHits, wantMisses)
		}
		if cache.Len() != 2 {
			t.Errorf("%s: %d maps cached, want the 2 in use", what, cache.Len())
		}
	}
	step("first read", "[10.244.1.1:8080 10.244.1.2:8080]", 0, 2)
	step("second read", "[10.244.1.1:8080 10.244.1.2:8080]", 2, 0)

	// kube-proxy rewrites a service chain: flush, then a new rule.
	load("flush chain ip kube-proxy " + web + "\nadd rule ip kube-proxy " + web +
		" meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.244.1.1 . 8080, 1 : 10.244.1.9 . 8080 }\n")
	step("rewritten rule", "[10.244.1.1:8080 10.244.1.9:8080]", 1, 1)

	// The table deleted and made again: same names, same rule handles.
	ns.MustRun("nft", "delete", "table", "ip", "kube-proxy")
	ipv4 := targetsRuleset[:strings.Index(targetsRuleset, "table ip6 ")]
	load(strings.Replace(ipv4, "10.244.1.2 . 8080", "10.244.1.7 . 8080", 1))
	step("table made again", "[10.244.1.1:8080 10.244.1.7:8080]", 1, 1)
}
