package iptables

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/netinspect/netinspect/source/nftables"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/proxyrules"
	"github.com/netinspect/netinspect/test/testenv"
)

// handRules are the shapes the netlink reader must translate besides
// kube-proxy's own: a "has no endpoints" REJECT, ipset matches, rules
// without comments, udp and sctp ports, port ranges and negations, both
// ports at once, a goto, empty chains, non-KUBE chains and every
// iptables table.
const handRules = `*mangle
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*security
:INPUT ACCEPT [0:0]
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:KUBE-X - [0:0]
:OTHER - [0:0]
-A KUBE-X -p tcp --dport 80:90 -j ACCEPT
-A KUBE-X -p tcp ! --dport 80 -j ACCEPT
-A KUBE-X -p tcp --sport 5 --dport 6 -j ACCEPT
-A KUBE-X -p udp --dport 7:65535 -j ACCEPT
-A KUBE-X -p tcp --syn --dport 8 -j ACCEPT
-A KUBE-X ! -p tcp -j DROP
-A KUBE-X -p tcp -m tcp --tcp-flags SYN SYN --dport 9 -j RETURN
-A KUBE-X -p tcp -m multiport --dports 1,2 -j ACCEPT
-A KUBE-X -m comment --comment "" -j ACCEPT
-A KUBE-X -m comment --comment "quote \" and \\ backslash" -j ACCEPT
-A OTHER -p gre -m comment --comment "ns/x:y cluster IP" -j LOG
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EMPTY - [0:0]
-A INPUT -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.5/32 -p tcp -m comment --comment "ns/a:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-SERVICES -d 10.96.0.6/32 -p udp -m comment --comment "ns/a:dns has no endpoints" -m udp --dport 53 -j REJECT
-A KUBE-SERVICES -d 10.96.0.7/32 -p sctp -m comment --comment "ns/a:sctp has no endpoints" -m sctp --dport 99 -j REJECT
-A KUBE-SERVICES -p sctp -m sctp --dport 100:110 -j ACCEPT
-A KUBE-SERVICES -p sctp -m sctp --sport 5 -j ACCEPT
-A KUBE-SERVICES -m set --match-set kube-set dst -j ACCEPT
-A KUBE-SERVICES -m set --match-set kube-set dst -m set ! --match-set kube-set src -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SVL-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-EXT-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SEP-BBBBBBBBBBBBBBBB - [0:0]
:KUBE-SEP-CCCCCCCCCCCCCCCC - [0:0]
:KUBE-SVC-DDDDDDDDDDDDDDDD - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "ns/b:http cluster IP" -m tcp --dport 443 -j KUBE-SVC-AAAAAAAAAAAAAAAA
-A KUBE-SERVICES -d 10.96.0.2/32 -p udp -m comment --comment "ns/d:dns cluster IP" -m udp --dport 53 -g KUBE-SVC-DDDDDDDDDDDDDDDD
-A KUBE-NODEPORTS -p tcp -m comment --comment ns/b:http -m tcp --dport 30080 -j KUBE-EXT-AAAAAAAAAAAAAAAA
-A KUBE-EXT-AAAAAAAAAAAAAAAA -j KUBE-SVL-AAAAAAAAAAAAAAAA
-A KUBE-SVC-AAAAAAAAAAAAAAAA -m comment --comment "ns/b:http -> 10.0.0.1:80" -m statistic --mode random --probability 0.5 -j KUBE-SEP-BBBBBBBBBBBBBBBB
-A KUBE-SVC-AAAAAAAAAAAAAAAA -j KUBE-SEP-CCCCCCCCCCCCCCCC
-A KUBE-SVL-AAAAAAAAAAAAAAAA -j KUBE-SEP-CCCCCCCCCCCCCCCC
-A KUBE-SEP-BBBBBBBBBBBBBBBB -p tcp -m tcp -j DNAT --to-destination 10.0.0.1:80
-A KUBE-SEP-CCCCCCCCCCCCCCCC -p tcp -m recent --set --name KUBE-SEP-CCCCCCCCCCCCCCCC --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.0.0.2:80
-A KUBE-SEP-CCCCCCCCCCCCCCCC -s 10.0.0.2/32 -j MARK --set-xmark 0x4000/0x4000
COMMIT
`

// foreignTable is an nft-native table in family ip, as kube-proxy's
// nftables mode writes one, which is no iptables table.
const foreignTable = `table ip kube-proxy {
  chain services {
    tcp dport 80 counter accept comment "ns/x:y cluster IP"
  }
}
`

// loadNFT loads rules into ns with iptables-nft-restore (family 4 or 6).
func loadNFT(t *testing.T, ns *netns.NS, family int, rules string) {
	t.Helper()
	bin := map[int]string{4: "iptables-nft-restore", 6: "ip6tables-nft-restore"}[family]
	cmd := ns.Command(context.Background(), bin)
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", bin, err, out)
	}
}

// requireSameListing reads ns over netlink and with iptables-nft-save and
// requires equal Rulesets per family.
func requireSameListing(t *testing.T, ns *netns.NS) *Listing {
	t.Helper()
	ctx := context.Background()
	nl := &Reader{Backend: BackendNFT, ProcFS: "/proc", Target: ns.Target()}
	got, err := nl.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got.Fallback != nil {
		t.Fatalf("netlink reader fell back: %v", got.Fallback)
	}
	ex := &Reader{Backend: BackendNFT, ProcFS: "/proc", Target: ns.Target(), ExecOnly: true}
	want, err := ex.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	RequireEqualListings(t, got, want)
	return got
}

// RequireEqualListings fails t unless the two listings hold equal
// Rulesets per family.
func RequireEqualListings(t testing.TB, got, want *Listing) {
	t.Helper()
	if len(got.Families) != len(want.Families) {
		t.Fatalf("%d families, iptables-nft-save %d", len(got.Families), len(want.Families))
	}
	for i, w := range want.Families {
		g := got.Families[i]
		if g.Name != w.Name {
			t.Fatalf("family %d: %s, iptables-nft-save %s", i, g.Name, w.Name)
		}
		if diff := Diff(g.Rules, w.Rules); diff != "" {
			t.Errorf("%s: netlink and iptables-nft-save differ: %s", w.Name, diff)
		}
	}
}

func TestNetlinkEqualsSave(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "iptables-nft-restore")
	testenv.RequireCommand(t, "ip6tables-nft-restore")
	testenv.RequireCommand(t, "ipset")
	testenv.RequireCommand(t, "nft")
	testenv.RequireCommand(t, "nsenter")

	t.Run("hand-written", func(t *testing.T) {
		ns := netns.New(t, "iptnl")
		ns.MustRun("ipset", "create", "kube-set", "hash:ip")
		ns.MustRun("ipset", "create", "kube-set6", "hash:ip", "family", "inet6")
		loadNFT(t, ns, 4, handRules)
		loadNFT(t, ns, 6, strings.NewReplacer("10.96.0.", "fd00::", "/32", "/128", "10.0.0.", "fd01::", "255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "-p gre", "-p 47",
			"--reject-with icmp-port-unreachable", "", "-j LOG", "-j ACCEPT", "kube-set", "kube-set6").Replace(handRules))
		cmd := ns.Command(context.Background(), "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(foreignTable)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft -f: %v: %s", err, out)
		}
		// A comment in the rule's userdata, where newer iptables-nft
		// keeps it (and nft itself), instead of an xt comment match.
		ns.MustRun("nft", "add", "rule", "ip", "filter", "KUBE-SERVICES", "ip", "daddr", "10.96.0.9", "tcp", "dport", "81",
			"counter", "accept", "comment", `"ns/u:d has no endpoints"`)
		l := requireSameListing(t, ns)
		// The listing is what the rules say, not merely the same
		// nothing twice.
		nat := l.Family("ipv4").Table("nat")
		if nat == nil || nat.Chains["KUBE-SVC-AAAAAAAAAAAAAAAA"] != 2 || len(nat.Services["AAAAAAAAAAAAAAAA"].Endpoints) != 2 || nat.Services["DDDDDDDDDDDDDDDD"].Protocol != "udp" {
			t.Errorf("nat table: %+v", nat)
		}
		if f := l.Family("ipv4").Table("filter"); f == nil || f.SetMatches != 3 || f.NoEndpoints["ns/a:sctp"] != 99 || f.NoEndpoints["ns/u:d"] != 81 {
			t.Errorf("filter table: %+v", f)
		}
		if l.Family("ipv4").Table("kube-proxy") != nil {
			t.Error("the nft-native table kube-proxy was listed as an iptables table")
		}
	})
	for _, family := range []int{4, 6} {
		t.Run("kube-proxy-shaped/ipv"+string(rune('0'+family)), func(t *testing.T) {
			ns := netns.New(t, "iptnl")
			svcs := proxyrules.Generate("eq", 400, 3, family) // > 1,000 endpoints: no per-endpoint comments
			for i := range svcs {
				if i%7 == 0 {
					svcs[i].Endpoints = nil
				}
			}
			loadNFT(t, ns, family, string(proxyrules.IPTablesRestore(svcs, family)))
			l := requireSameListing(t, ns)
			name := map[int]string{4: "ipv4", 6: "ipv6"}[family]
			if n := len(l.Family(name).Table("nat").Services); n < 250 {
				t.Errorf("%d services in the nat table", n)
			}
		})
	}
}

func TestNetlinkFallsBack(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "iptables-nft-restore")
	testenv.RequireCommand(t, "nft")
	testenv.RequireCommand(t, "nsenter")
	for _, tc := range []struct {
		name, iptables, nft string
	}{
		{name: "xt match the reader does not know", iptables: "*filter\n:KUBE-X - [0:0]\n-A KUBE-X -p tcp -m tcp --dport 5 -m length --length 10:20 -j ACCEPT\nCOMMIT\n"},
		{name: "protocol named by /etc/protocols", iptables: "*filter\n:KUBE-X - [0:0]\n-A KUBE-X -p gre -j ACCEPT\nCOMMIT\n"},
		{name: "xt target the reader does not know", iptables: "*mangle\n:KUBE-X - [0:0]\n-A KUBE-X -j CLASSIFY --set-class 1:1\nCOMMIT\n"},
		{name: "native meta set (TRACE)", iptables: "*raw\n:KUBE-X - [0:0]\n-A KUBE-X -j TRACE\nCOMMIT\n"},
		{name: "nft-native rule in an iptables table", iptables: "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", nft: "add rule ip filter INPUT ct state established accept\n"},
		{name: "base chain iptables did not make", iptables: "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", nft: "add chain ip filter other { type filter hook input priority 10; }\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := netns.New(t, "iptfb")
			loadNFT(t, ns, 4, tc.iptables)
			if tc.nft != "" {
				cmd := ns.Command(context.Background(), "nft", "-f", "-")
				cmd.Stdin = strings.NewReader(tc.nft)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("nft -f: %v: %s", err, out)
				}
			}
			r := &Reader{Backend: BackendNFT, ProcFS: "/proc", Target: ns.Target()}
			got, err := r.Read(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("fallback: %v", got.Fallback)
			if !errors.Is(got.Fallback, ErrUntranslatable) {
				t.Fatalf("fallback %v, want one wrapping ErrUntranslatable", got.Fallback)
			}
			want, err := (&Reader{Backend: BackendNFT, ProcFS: "/proc", Target: ns.Target(), ExecOnly: true}).Read(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			RequireEqualListings(t, got, want)
		})
	}
}

// TestNetlinkFallsBackWhenRulesChange: a change committed between the
// chain listing and the rule dumps (kube-proxy syncing) makes the listing
// fall back to iptables-nft-save, which reads one generation.
func TestNetlinkFallsBackWhenRulesChange(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "iptables-nft-restore")
	testenv.RequireCommand(t, "nsenter")
	ns := netns.New(t, "iptgen")
	loadNFT(t, ns, 4, "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n")
	r := &Reader{Backend: BackendNFT, ProcFS: "/proc", Target: ns.Target()}
	changed := false
	r.listed = func() {
		if !changed {
			changed = true
			loadNFT(t, ns, 4, "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n-A KUBE-SERVICES -j KUBE-SVC-AAAAAAAAAAAAAAAA\nCOMMIT\n")
		}
	}
	got, err := r.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got.Fallback == nil || !strings.Contains(got.Fallback.Error(), "ruleset changed") {
		t.Fatalf("fallback %v, want one for the changed ruleset", got.Fallback)
	}
	if nat := got.Family("ipv4").Table("nat"); nat == nil || nat.Chains["KUBE-SVC-AAAAAAAAAAAAAAAA"] != 0 || nat.Services["AAAAAAAAAAAAAAAA"] == nil {
		t.Fatalf("nat table after the change: %+v", nat)
	}
}

// TestLegacyExecs: the legacy backend has no netlink dump, so it is still
// listed with iptables-legacy-save.
func TestLegacyExecs(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "iptables-legacy-restore")
	testenv.RequireCommand(t, "nsenter")
	ns := netns.New(t, "iptleg")
	cmd := ns.Command(context.Background(), "iptables-legacy-restore")
	cmd.Stdin = strings.NewReader("*filter\n:KUBE-X - [0:0]\n-A KUBE-X -p tcp --dport 5 -j ACCEPT\nCOMMIT\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("iptables-legacy-restore: %v: %s", err, out)
	}
	path, _ := exec.LookPath("iptables-legacy-save")
	r := &Reader{Backend: BackendLegacy, ProcFS: "/proc", Target: ns.Target()}
	l, err := r.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if f := l.Family("ipv4").Table("filter"); f == nil || f.Chains["KUBE-X"] != 1 {
		t.Fatalf("%s listing: %+v", path, l.Family("ipv4"))
	}
	// nf_tables has no such rule: the listing came from x_tables.
	if rs, err := r.readNFT(context.Background(), nftables.FamilyIPv4); err == nil && rs.Table("filter") != nil {
		t.Fatalf("the legacy rule is in nf_tables: %+v", rs.Table("filter"))
	}
}
