package collector

import (
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

func TestIPVSServiceFlagsNamedAsIpvsadm(t *testing.T) {
	for _, tc := range []struct {
		flags uint32
		sched string
		want  string
	}{
		{0, "rr", ""},
		{0x2, "rr", ""}, // hashed: internal, every service has it
		{0x1 | 0x2, "rr", "persistent"},
		{0x4, "rr", "ops"},
		{0x8 | 0x10, "sh", "sh-fallback,sh-port"},
		{0x8, "mh", "mh-fallback"},
		{0x1 | 0x8 | 0x20, "wrr", "persistent,flag-1,flag-3"},
	} {
		if got := ipvsServiceFlags(tc.flags, tc.sched); got != tc.want {
			t.Errorf("ipvsServiceFlags(%#x, %q) = %q, want %q", tc.flags, tc.sched, got, tc.want)
		}
	}
}

func TestIPVSForwardingMethodNames(t *testing.T) {
	for fwd, want := range map[uint32]string{0: "masq", 1: "local", 2: "tunnel", 3: "route", 4: "bypass", 7: "7", 0x100 | 3: "route"} {
		if got := ipvsForwardingMethod(fwd); got != want {
			t.Errorf("ipvsForwardingMethod(%#x) = %q, want %q", fwd, got, want)
		}
	}
}

func TestWithLabelPairKeepsNamesSorted(t *testing.T) {
	pairs := labelPairCache{}
	lp := []*dto.LabelPair{pairs.get("address", "a"), pairs.get("namespace", "n"), pairs.get("port", "p")}
	for _, tc := range []struct{ name, want string }{
		{"aaa", "aaa,address,namespace,port"},
		{"flags", "address,flags,namespace,port"},
		{"zone", "address,namespace,port,zone"},
	} {
		var names []string
		for _, p := range withLabelPair(lp, pairs.get(tc.name, "v")) {
			names = append(names, p.GetName())
		}
		if got := strings.Join(names, ","); got != tc.want {
			t.Errorf("adding %s: %s, want %s", tc.name, got, tc.want)
		}
	}
	if len(lp) != 3 {
		t.Errorf("the input was changed: %d pairs", len(lp))
	}
	if pairs.get("flags", "v") != pairs.get("flags", "v") {
		t.Error("the same name and value gave two pairs")
	}
}
