package kubeproxy

import "testing"

func TestPortProtoHashMatchesKubeProxy(t *testing.T) {
	// Chain names from kube-proxy 1.37's own expectations
	// (pkg/proxy/iptables/proxier_test.go, TestOverallIPTablesRules).
	for _, tc := range []struct{ name, proto, want string }{
		{"ns1/svc1:p80", "tcp", "XPGD46QRK7WJZT7O"},
		{"ns2/svc2:p80", "tcp", "GNZBNJ2PO5MGZ6GT"},
		{"ns5/svc5:p80", "tcp", "NUKIZ6OKUXPJNT4C"},
	} {
		if got := PortProtoHash(tc.name, tc.proto); got != tc.want {
			t.Errorf("PortProtoHash(%q, %q) = %q, want %q", tc.name, tc.proto, got, tc.want)
		}
	}
}
