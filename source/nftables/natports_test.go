package nftables

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source"
	"github.com/netinspect/netinspect/source/netlinkattr"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// TestReadNATPortRangesOfRealRules writes source-NAT rules with and
// without port ranges in a namespace, with nft and with iptables-nft (whose
// targets nf_tables keeps as x_tables structs), and reads their ranges back
// from the kernel.
func TestReadNATPortRangesOfRealRules(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "nft")
	ns := netns.New(t, "natports")
	script := `
table inet t {
	chain post {
		type nat hook postrouting priority 100;
		meta l4proto { tcp, udp } masquerade to :40000-40009 fully-random
		ip saddr 10.0.0.0/8 meta l4proto tcp snat ip to 10.78.0.1:2000-3000
		meta l4proto udp snat ip6 to [fd00::1]:5000
		masquerade
	}
	chain pre {
		type nat hook prerouting priority -100;
		ip daddr 10.96.0.1 meta l4proto tcp dnat ip to 10.244.0.5:8443
	}
}
table ip6 n {
	chain post {
		type nat hook postrouting priority 100;
		meta l4proto tcp masquerade to :1024-2047
	}
}
`
	p := filepath.Join(t.TempDir(), "rules.nft")
	if err := os.WriteFile(p, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	ns.MustRun("nft", "-f", p)
	want := []NATPortRange{
		{"ipv4", 40000, 40009, "t", "post"}, {"ipv6", 40000, 40009, "t", "post"},
		{"ipv4", 2000, 3000, "t", "post"},
		{"ipv6", 5000, 5000, "t", "post"},
		{"ipv6", 1024, 2047, "n", "post"},
	}
	{
		testenv.RequireCommand(t, "iptables-nft")
		testenv.RequireCommand(t, "ip6tables-nft")
		ns.MustRun("iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-p", "tcp", "-j", "MASQUERADE", "--to-ports", "30000-30099", "--random-fully")
		ns.MustRun("iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-p", "udp", "-j", "SNAT", "--to-source", "10.78.0.1:7000-7001")
		ns.MustRun("iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE", "--random-fully")
		ns.MustRun("ip6tables-nft", "-t", "nat", "-A", "POSTROUTING", "-p", "udp", "-j", "MASQUERADE", "--to-ports", "31000-31010")
		ns.MustRun("ip6tables-nft", "-t", "nat", "-A", "POSTROUTING", "-p", "tcp", "-j", "SNAT", "--to-source", "[fd00::1]:9000-9100")
		want = append(want,
			NATPortRange{"ipv4", 30000, 30099, "nat", "POSTROUTING"}, NATPortRange{"ipv4", 7000, 7001, "nat", "POSTROUTING"},
			NATPortRange{"ipv6", 31000, 31010, "nat", "POSTROUTING"}, NATPortRange{"ipv6", 9000, 9100, "nat", "POSTROUTING"})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := Reader{ProcFS: "/proc", Target: ns.Target()}.ReadNATPortRanges(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cmp := func(a, b NATPortRange) int {
		if c := cmpStrings(a.Table+a.Family, b.Table+b.Family); c != 0 {
			return c
		}
		return int(a.Lo) - int(b.Lo)
	}
	slices.SortFunc(got, cmp)
	slices.SortFunc(want, cmp)
	if !slices.Equal(got, want) {
		t.Errorf("ranges:\n got %v\nwant %v", got, want)
	}
}

func cmpStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestReadNATPortRangesWithoutNFTables(t *testing.T) {
	// A procfs whose modules file lists no nf_tables: nothing is asked.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "modules"), []byte("nf_conntrack 1 0 - Live 0x0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Reader{ProcFS: dir}.ReadNATPortRanges(context.Background())
	if !errors.Is(err, source.ErrAbsent) {
		t.Fatalf("err = %v, want one matching source.ErrAbsent", err)
	}
}

// masqRuleMsg is an NFT_MSG_NEWRULE payload (after the nfgenmsg) as the
// kernel sends "masquerade to :lo-hi": two immediates loading the ports
// into registers 1 and 2, then masq reading them.
func masqRuleMsg(lo, hi uint16) []byte {
	nest := func(typ uint16, parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return netlinkattr.Append(nil, typ|unix.NLA_F_NESTED, b)
	}
	be16 := func(v uint16) []byte { return []byte{byte(v >> 8), byte(v), 0, 0} }
	imm := func(reg uint32, port uint16) []byte {
		return nest(unix.NFTA_LIST_ELEM,
			netlinkattr.AppendString(nil, unix.NFTA_EXPR_NAME, "immediate"),
			nest(unix.NFTA_EXPR_DATA,
				netlinkattr.AppendBE32(nil, unix.NFTA_IMMEDIATE_DREG, reg),
				nest(unix.NFTA_IMMEDIATE_DATA, netlinkattr.Append(nil, unix.NFTA_DATA_VALUE, be16(port)))))
	}
	masq := nest(unix.NFTA_LIST_ELEM,
		netlinkattr.AppendString(nil, unix.NFTA_EXPR_NAME, "masq"),
		nest(unix.NFTA_EXPR_DATA,
			netlinkattr.AppendBE32(nil, unix.NFTA_MASQ_FLAGS, 0x12),
			netlinkattr.AppendBE32(nil, unix.NFTA_MASQ_REG_PROTO_MIN, 1),
			netlinkattr.AppendBE32(nil, unix.NFTA_MASQ_REG_PROTO_MAX, 2)))
	b := netlinkattr.AppendString(nil, unix.NFTA_RULE_TABLE, "t")
	b = netlinkattr.AppendString(b, unix.NFTA_RULE_CHAIN, "post")
	return append(b, nest(unix.NFTA_RULE_EXPRESSIONS, imm(1, lo), imm(2, hi), masq)...)
}

func TestDecodeNATPortRanges(t *testing.T) {
	got, err := DecodeNATPortRanges(nfprotoInet, masqRuleMsg(40000, 40009))
	want := []NATPortRange{{"ipv4", 40000, 40009, "t", "post"}, {"ipv6", 40000, 40009, "t", "post"}}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("got %v, %v; want %v", got, err, want)
	}
	if got, err := DecodeNATPortRanges(nfprotoIPv4, masqRuleMsg(40000, 40009)[:20]); err != nil || len(got) != 0 {
		t.Errorf("a rule cut short: %v, %v; want nothing", got, err)
	}
}

func FuzzDecodeNATPortRanges(f *testing.F) {
	f.Add(uint8(nfprotoIPv4), []byte{8, 0, 1, 0, 't', 0, 0, 0})
	f.Add(uint8(nfprotoInet), masqRuleMsg(1024, 2047))
	f.Fuzz(func(t *testing.T, family uint8, b []byte) {
		ranges, err := DecodeNATPortRanges(family, b)
		if err != nil {
			return
		}
		for _, r := range ranges {
			if r.Hi < r.Lo || (r.Family != "ipv4" && r.Family != "ipv6") {
				t.Fatalf("range %+v", r)
			}
		}
	})
}
