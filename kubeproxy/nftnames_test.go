package kubeproxy

import "testing"

func TestParseNFTChainName(t *testing.T) {
	// Chain names as kube-proxy 1.37 writes them
	// (pkg/proxy/nftables/proxier_test.go).
	for _, tc := range []struct {
		name string
		want NFTChain
	}{
		{"service-ULMVA6XW-ns1/svc1/tcp/p80", NFTChain{NFTKindService, "ns1/svc1/tcp/p80"}},
		{"local-HVFWP5L3-ns2/svc2/tcp/p80", NFTChain{NFTKindLocal, "ns2/svc2/tcp/p80"}},
		{"external-HVFWP5L3-ns2/svc2/tcp/p80", NFTChain{NFTKindExternal, "ns2/svc2/tcp/p80"}},
		{"endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80", NFTChain{NFTKindEndpoint, "ns1/svc1/tcp/p80"}},
		{"endpoint-BX6YGLTQ-ns1/svc-0/tcp/http__fd00.b4../8080", NFTChain{NFTKindEndpoint, "ns1/svc-0/tcp/http"}},
		{"firewall-HVFWP5L3-ns5/svc5/tcp/p80", NFTChain{NFTKindFirewall, "ns5/svc5/tcp/p80"}},
		{"service-42NFTM6N-ns2/svc2/udp/", NFTChain{NFTKindService, "ns2/svc2/udp/"}},
		{"services", NFTChain{NFTKindOther, ""}},
		{"service-endpoints-check", NFTChain{NFTKindOther, ""}},
		{"nat-prerouting", NFTChain{NFTKindOther, ""}},
		{"service-ABCDEFGH-truncated/na...", NFTChain{NFTKindService, ""}},
	} {
		if got := ParseNFTChainName(tc.name); got != tc.want {
			t.Errorf("ParseNFTChainName(%q) = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestSplitNFTServicePort(t *testing.T) {
	ns, name, proto, port, ok := SplitNFTServicePort("ns2/svc2/udp/")
	if !ok || ns != "ns2" || name != "svc2" || proto != "udp" || port != "" {
		t.Fatalf("got %q %q %q %q %v", ns, name, proto, port, ok)
	}
	if _, _, _, _, ok := SplitNFTServicePort("a/b"); ok {
		t.Fatal("a/b split")
	}
}

func FuzzParseNFTChainName(f *testing.F) {
	f.Add("endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80")
	f.Add("service-ULMVA6XW-ns1/svc1/tcp/p80")
	f.Fuzz(func(t *testing.T, name string) {
		c := ParseNFTChainName(name)
		if c.ServicePort != "" {
			if _, _, _, _, ok := SplitNFTServicePort(c.ServicePort); !ok && c.Kind != NFTKindOther {
				// A name like "service-X-/a/b/c" has an empty namespace:
				// attribution then yields empty labels, which is allowed.
				return
			}
		}
	})
}

func TestNFTServiceGotosByName(t *testing.T) {
	const svc = "service-ULMVA6XW-ns/web/tcp/http"
	ep := func(addr string) string { return "endpoint-5TPGNJF2-ns/web/tcp/http__" + addr }
	chains := []string{svc, "local-4ZSEQMFJ-ns/web/tcp/http", ep("10.0.0.1/80"), ep("10.0.0.2/80"), ep("10.0.0.3/80"),
		"endpoint-AAAAAAAA-ns/other/tcp/http__10.0.1.1/80", "services", "service-ZZZZZZZZ-ns/lone/udp/dns"}
	eps := NFTEndpointChains(chains)
	if got := len(eps["ns/web/tcp/http"]); got != 3 {
		t.Fatalf("endpoint chains of ns/web/tcp/http: %d, want 3 (%v)", got, eps)
	}
	for _, tc := range []struct {
		name        string
		chain       string
		modulus     uint32
		verdictMaps int
		ok          bool
	}{
		{"one map over every endpoint chain of the port", svc, 3, 1, true},
		{"a stale endpoint chain kube-proxy has not deleted yet", svc, 2, 1, false},
		{"no map (one endpoint: a literal goto)", svc, 0, 0, false},
		{"two maps", svc, 3, 2, false},
		{"a local- chain balances over a subset", "local-4ZSEQMFJ-ns/web/tcp/http", 3, 1, false},
		{"a port without endpoint chains", "service-ZZZZZZZZ-ns/lone/udp/dns", 1, 1, false},
		{"not a per-service chain", "services", 3, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gotos, ok := NFTServiceGotosByName(tc.chain, tc.modulus, tc.verdictMaps, eps)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v (gotos %v)", ok, tc.ok, gotos)
			}
			if ok && len(gotos) != 3 {
				t.Errorf("gotos %v, want the three endpoint chains", gotos)
			}
		})
	}
}
