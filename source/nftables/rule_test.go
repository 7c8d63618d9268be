package nftables

import (
	"encoding/binary"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// rulesNFTRuleMsg builds the attributes of an NFT_MSG_NEWRULE message as
// the kernel sends them: chain name and expressions (numgen, nat).
func rulesNFTRuleMsg(t testing.TB, chain string, modulus uint32, nat bool) []byte {
	t.Helper()
	expr := func(name string, data []byte) netlink.Attribute {
		b, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: unix.NFTA_EXPR_NAME, Data: []byte(name + "\x00")},
			{Type: unix.NFTA_EXPR_DATA | unix.NLA_F_NESTED, Data: data},
		})
		if err != nil {
			t.Fatal(err)
		}
		return netlink.Attribute{Type: unix.NFTA_LIST_ELEM | unix.NLA_F_NESTED, Data: b}
	}
	var exprs []netlink.Attribute
	if modulus > 0 {
		ng, _ := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: unix.NFTA_NG_DREG, Data: binary.BigEndian.AppendUint32(nil, 1)},
			{Type: unix.NFTA_NG_MODULUS, Data: binary.BigEndian.AppendUint32(nil, modulus)},
		})
		exprs = append(exprs, expr("numgen", ng))
	}
	if nat {
		exprs = append(exprs, expr("nat", nil))
	}
	list, err := netlink.MarshalAttributes(exprs)
	if err != nil {
		t.Fatal(err)
	}
	b, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte("kube-proxy\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
		{Type: unix.NFTA_RULE_EXPRESSIONS | unix.NLA_F_NESTED, Data: list},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeNFTRule(t *testing.T) {
	for _, tc := range []struct {
		modulus   uint32
		nat       bool
		endpoints int
	}{{3, true, 3}, {0, true, 1}, {0, false, 0}, {2, false, 2}} {
		chain, st, err := DecodeRule(rulesNFTRuleMsg(t, "service-X-a/b/tcp/p", tc.modulus, tc.nat))
		if err != nil || chain != "service-X-a/b/tcp/p" || st.Endpoints() != tc.endpoints {
			t.Errorf("modulus %d nat %v: chain %q endpoints %d err %v, want %d", tc.modulus, tc.nat, chain, st.Endpoints(), err, tc.endpoints)
		}
	}
}

func FuzzDecodeNFTRule(f *testing.F) {
	f.Add(rulesNFTRuleMsg(f, "service-X-a/b/tcp/p", 2, true))
	f.Add(rulesNFTRuleMsg(f, "endpoint-X-a/b/tcp/p__10.0.0.1/80", 0, true))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = DecodeRule(b) // must not panic
	})
}
