package ipvs

import "testing"

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
		if got := FlagNames(tc.flags, tc.sched); got != tc.want {
			t.Errorf("FlagNames(%#x, %q) = %q, want %q", tc.flags, tc.sched, got, tc.want)
		}
	}
}

func TestIPVSForwardingMethodNames(t *testing.T) {
	for fwd, want := range map[uint32]string{0: "masq", 1: "local", 2: "tunnel", 3: "route", 4: "bypass", 7: "7", 0x100 | 3: "route"} {
		if got := ForwardingMethodName(fwd); got != want {
			t.Errorf("ForwardingMethodName(%#x) = %q, want %q", fwd, got, want)
		}
	}
}
