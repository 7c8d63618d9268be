package topology_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/netinspect/netinspect/test/topology"
)

// TestStandard builds the standard layout and checks that pods reach each
// other across the bridge and through the node's routes.
func TestStandard(t *testing.T) {
	tp := topology.New(t)
	tp.AddStandard()
	a, ptp := tp.Pod(topology.PodBridgeA), tp.Pod(topology.PodPTP)
	for _, c := range []struct {
		from *topology.Pod
		to   string
	}{
		{a, "10.244.0.3"}, {a, "10.244.1.5"}, {ptp, "10.244.1.6"}, {ptp, "10.244.2.5"}, {a, "10.244.1.7"},
		{tp.Pod(topology.PodDual), "fd00:10:244::1"},
	} {
		// A UDP datagram to a closed port comes back as "connection refused"
		// on the second write once the ICMP error arrived: proof of a round trip.
		out, _ := tp.RunIn(c.from, "exec 3<>/dev/udp/"+c.to+"/9; printf x >&3; sleep 0.2; { printf x >&3; } 2>&1 || true")
		if !strings.Contains(out, "refused") {
			t.Errorf("%s -> %s: no ICMP port unreachable came back: %q", c.from.Name, c.to, out)
		}
	}
	if got := tp.Pod(topology.PodProc).IPs(); len(got) != 1 || got[0] != netip.MustParseAddr("10.244.1.7") {
		t.Errorf("proc pod IPs = %v", got)
	}
}
