package nftables

import (
	"os"
	"path/filepath"
	"testing"
)

func TestNFTablesLoaded(t *testing.T) {
	for _, tc := range []struct {
		name    string
		modules *string // nil: no modules file (kernel without modules)
		want    bool
	}{
		{"no module support", nil, true},
		{"loaded first", strPtr("nf_tables 360448 500 nft_chain_nat, Live 0x0\nx_tables 1 2 - Live 0x0\n"), true},
		{"loaded later", strPtr("x_tables 1 2 - Live 0x0\nnf_tables 360448 500 - Live 0x0\n"), true},
		{"not loaded", strPtr("ip_tables 1 2 - Live 0x0\nnf_tables_set_x 1 0 - Live 0x0\n"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.modules != nil {
				if err := os.WriteFile(filepath.Join(dir, "modules"), []byte(*tc.modules), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := Loaded(dir); got != tc.want {
				t.Errorf("Loaded = %v, want %v", got, tc.want)
			}
		})
	}
}

func strPtr(s string) *string { return &s }

func TestConcatPort(t *testing.T) {
	v4 := []byte{10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0} // 10.96.0.10 . tcp . 80
	if p, ok := ConcatPort(v4, "ipv4"); !ok || p != 80 {
		t.Errorf("ipv4 key: %d, %v", p, ok)
	}
	v6 := append(make([]byte, 16), 17, 0, 0, 0, 0, 53, 0, 0) // :: . udp . 53
	if p, ok := ConcatPort(v6, "ipv6"); !ok || p != 53 {
		t.Errorf("ipv6 key: %d, %v", p, ok)
	}
	if _, ok := ConcatPort(v4, "ipv6"); ok {
		t.Error("an IPv4 key read as IPv6")
	}
}
