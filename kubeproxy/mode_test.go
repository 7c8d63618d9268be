package kubeproxy

import "testing"

func TestDetectMode(t *testing.T) {
	for _, tc := range []struct {
		name string
		e    ModeEvidence
		want string
	}{
		{"nothing", ModeEvidence{}, ModeNone},
		{"iptables", ModeEvidence{NATServices: true}, ModeIPTables},
		{"ipvs by its filter chain", ModeEvidence{NATServices: true, IPVSFilterChain: true}, ModeIPVS},
		{"ipvs by ipset matches", ModeEvidence{NATServices: true, IPSetMatches: true}, ModeIPVS},
		{"nftables over leftovers", ModeEvidence{NFTablesTable: true, NATServices: true}, ModeNFTables},
	} {
		if got := DetectMode(tc.e); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
