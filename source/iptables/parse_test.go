package iptables

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/netinspect/netinspect/kubeproxy"
	"github.com/netinspect/netinspect/test/proxyrules"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type svcSummary struct {
	PortName, Protocol string
	Port               int
	Endpoints          int
	HasSVC             bool
}

func summarize(tb *Table) map[string]svcSummary {
	out := map[string]svcSummary{}
	for h, sc := range tb.Services {
		out[h] = svcSummary{sc.PortName, sc.Protocol, sc.Port, len(sc.Endpoints), sc.HasSVC}
	}
	return out
}

// The testdata files are iptables-save output of the fixture's rules
// (ns1/svc-0:http with session affinity, ns1/svc-1:http with a NodePort, an
// external IP and a load-balancer IP, ns1/svc-2 unnamed without endpoints)
// loaded into a network namespace, from the nft and the legacy backend.
func TestParseIPTablesSave(t *testing.T) {
	for _, file := range []string{"iptables-nft-ipv4.save", "iptables-legacy-ipv4.save", "ip6tables-nft-counters-ipv6.save"} {
		t.Run(file, func(t *testing.T) {
			rs, err := ParseSave(readTestdata(t, file))
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, tb := range rs.Tables {
				names = append(names, tb.Name)
			}
			sort.Strings(names)
			if want := []string{"filter", "mangle", "nat"}; !equal(names, want) {
				t.Fatalf("tables %v, want %v", names, want)
			}
			nat := rs.Table("nat")
			wantChains := map[string]int{
				"PREROUTING": 0, "INPUT": 0, "OUTPUT": 0, "POSTROUTING": 0,
				"KUBE-SERVICES": 5, "KUBE-NODEPORTS": 1, "KUBE-POSTROUTING": 3, "KUBE-MARK-MASQ": 1, "KUBE-PROXY-CANARY": 0,
				"KUBE-EXT-SXVPWG5UMBOYFPLF": 2, "KUBE-SVC-S5AXN5OWCVCDKJQQ": 5, "KUBE-SVC-SXVPWG5UMBOYFPLF": 3,
				"KUBE-SEP-2YY3CUQVHQHQHCVU": 2, "KUBE-SEP-ARMBCBF3RDW22QDL": 2, "KUBE-SEP-JV7YURZ2NUTVWNM5": 2, "KUBE-SEP-YW3BFKHENDW3ZR6I": 2,
			}
			if file == "ip6tables-nft-counters-ipv6.save" {
				// Same services, IPv6 hashes differ only through the endpoints.
				wantChains = nil
			}
			if wantChains != nil && !equalMap(nat.Chains, wantChains) {
				t.Errorf("nat chains:\n got %v\nwant %v", nat.Chains, wantChains)
			}
			got := summarize(nat)
			want := map[string]svcSummary{
				kubeproxy.PortProtoHash("ns1/svc-0:http", "tcp"): {"ns1/svc-0:http", "tcp", 80, 2, true},
				kubeproxy.PortProtoHash("ns1/svc-1:http", "tcp"): {"ns1/svc-1:http", "tcp", 80, 2, true},
			}
			if !equalMap(got, want) {
				t.Errorf("services:\n got %v\nwant %v", got, want)
			}
			filter := rs.Table("filter")
			if filter.NoEndpoints["ns1/svc-2"] != 80 || len(filter.NoEndpoints) != 1 {
				t.Errorf("filter NoEndpoints = %v, want [ns1/svc-2]", filter.NoEndpoints)
			}
			if n := filter.Chains["KUBE-SERVICES"]; n != 1 {
				t.Errorf("filter KUBE-SERVICES has %d rules, want 1", n)
			}
		})
	}
}

// Above 1,000 endpoints kube-proxy drops the comments of the service and
// endpoint chains; the jumps from KUBE-SERVICES keep theirs, so services
// are still attributed, and the endpoint count still comes from the jumps.
func TestParseIPTablesSaveLargeCluster(t *testing.T) {
	svcs := proxyrules.Generate("big", 501, 2, 4)
	text := proxyrules.IPTablesRestore(svcs, 4)
	if bytes.Contains(text, []byte(" -> ")) {
		t.Fatal("fixture kept per-endpoint comments above 1,000 endpoints")
	}
	rs, err := ParseSave(text)
	if err != nil {
		t.Fatal(err)
	}
	nat := rs.Table("nat")
	if len(nat.Services) != 501 {
		t.Fatalf("%d services, want 501", len(nat.Services))
	}
	for _, s := range svcs {
		sc := nat.Services[kubeproxy.PortProtoHash(kubeproxy.ServicePortName(s.Namespace, s.Name, s.PortName), s.Protocol)]
		if sc == nil || sc.PortName != kubeproxy.ServicePortName(s.Namespace, s.Name, s.PortName) || len(sc.Endpoints) != 2 {
			t.Fatalf("service %s: %+v", s.Name, sc)
		}
	}
}

func TestParseIPTablesSaveErrors(t *testing.T) {
	for _, tc := range []struct{ name, text string }{
		{"no COMMIT", "*nat\n:KUBE-SERVICES - [0:0]\n"},
		{"rule outside table", "-A KUBE-SERVICES -j ACCEPT\n"},
		{"chain outside table", ":KUBE-SERVICES - [0:0]\n"},
		{"undeclared chain", "*nat\n-A KUBE-SERVICES -j ACCEPT\nCOMMIT\n"},
		{"unterminated quote", "*nat\n:KUBE-X - [0:0]\n-A KUBE-X -m comment --comment \"abc\nCOMMIT\n"},
		{"not a rule", "*nat\n-X FOO\nCOMMIT\n"},
		{"garbage", "*nat\nhello\nCOMMIT\n"},
		{"nested table", "*nat\n*filter\nCOMMIT\n"},
		{"stray COMMIT", "COMMIT\n"},
		{"counters without rule", "*nat\n[1:2]\nCOMMIT\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSave([]byte(tc.text))
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestCommentServicePortName(t *testing.T) {
	for _, tc := range []struct{ comment, want string }{
		{"ns/svc:p80 cluster IP", "ns/svc:p80"},
		{"ns/svc -> 10.0.0.1:80", "ns/svc"},
		{"ns/svc:dns-tcp", "ns/svc:dns-tcp"},
		{"kubernetes service nodeports; NOTE: this must be the last rule in this chain", ""},
		{"masquerade traffic for ns/svc:p external destinations", ""},
		{"/x", ""},
		{"", ""},
	} {
		if got := commentServicePortName([]byte(tc.comment)); got != tc.want {
			t.Errorf("commentServicePortName(%q) = %q, want %q", tc.comment, got, tc.want)
		}
	}
}

func TestTokenizer(t *testing.T) {
	var tk tokenizer
	tk.rest = []byte(`-A X -m comment --comment "a \"quoted\" \\ word"  -j  Y`)
	var got []string
	for {
		tok, ok := tk.next()
		if !ok {
			break
		}
		got = append(got, string(tok))
	}
	want := []string{"-A", "X", "-m", "comment", "--comment", `a "quoted" \ word`, "-j", "Y"}
	if !equal(got, want) || tk.err != nil {
		t.Fatalf("tokens %q (err %v), want %q", got, tk.err, want)
	}
}

func FuzzParseIPTablesSave(f *testing.F) {
	for _, file := range []string{"iptables-nft-ipv4.save", "iptables-legacy-ipv4.save", "ip6tables-nft-counters-ipv6.save"} {
		f.Add(readTestdata(f, file))
	}
	f.Add(proxyrules.IPTablesRestore(proxyrules.Generate("f", 3, 2, 6), 6))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ParseSave(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		// Every rule line is counted in exactly one chain.
		rules := 0
		for _, line := range bytes.Split(data, []byte("\n")) {
			line = bytes.TrimRight(line, "\r")
			if len(line) > 0 && (line[0] == '-' || line[0] == '[') {
				rules++
			}
		}
		counted := 0
		for _, tb := range rs.Tables {
			for _, n := range tb.Chains {
				counted += n
			}
			for _, sc := range tb.Services {
				if sc.PortName != "" {
					if _, _, _, ok := kubeproxy.SplitServicePortName(sc.PortName); !ok {
						t.Fatalf("service port name %q does not split", sc.PortName)
					}
				}
			}
		}
		if counted != rules {
			t.Fatalf("counted %d rules, text has %d rule lines", counted, rules)
		}
	})
}

func BenchmarkParseIPTablesSave(b *testing.B) {
	// 5,000 services x 2 endpoints, the size of the benchmark.
	text := proxyrules.IPTablesRestore(proxyrules.Generate("bench", 5000, 2, 4), 4)
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseSave(text); err != nil {
			b.Fatal(err)
		}
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func equalMap[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
