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
