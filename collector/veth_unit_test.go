package collector

import (
	"net/netip"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/source/links"
)

func TestNewVethMethods(t *testing.T) {
	for _, tc := range []struct {
		methods []string
		wantErr bool
	}{
		{nil, false},
		{[]string{"netns"}, false},
		{[]string{"route", "fdb"}, false},
		{[]string{"arp"}, true},
		{[]string{"netns", ""}, true},
	} {
		_, err := NewVeth(VethConfig{Methods: tc.methods}, Deps{})
		if (err != nil) != tc.wantErr {
			t.Errorf("NewVeth(methods %q): err = %v, want error %v", tc.methods, err, tc.wantErr)
		}
	}
}

// TestVethResolve checks the precedence of the methods and that a
// disagreement is logged once per veth and pair of answers.
func TestVethResolve(t *testing.T) {
	ix := kube.NewIndex("n")
	ip := netip.MustParseAddr
	ix.SetPod(kube.PodInfo{Namespace: "a", Name: "p1", Node: "n", IPs: []netip.Addr{ip("10.0.0.1")}})
	ix.SetPod(kube.PodInfo{Namespace: "a", Name: "p2", Node: "n", IPs: []netip.Addr{ip("10.0.0.2")}})
	ix.SetPod(kube.PodInfo{Namespace: "a", Name: "host", Node: "n", HostNetwork: true, IPs: []netip.Addr{ip("10.0.0.9")}})
	core, logs := observer.New(zap.WarnLevel)
	c, err := NewVeth(VethConfig{}, Deps{Logger: zap.New(core), Index: ix})
	if err != nil {
		t.Fatal(err)
	}
	end := func(iface string, ips ...string) podEnd {
		e := podEnd{iface: iface}
		for _, s := range ips {
			e.ips = append(e.ips, ip(s))
		}
		return e
	}
	for _, tc := range []struct {
		name       string
		found      map[string]podEnd
		wantPod    string
		wantMethod string
		wantIface  string
		wantLogs   int
	}{
		{"nothing", nil, "", "", "", 0},
		{"netns only", map[string]podEnd{"netns": end("eth0", "10.0.0.1")}, "p1", "netns", "eth0", 0},
		{"route only", map[string]podEnd{"route": end("", "10.0.0.2")}, "p2", "route", "", 0},
		{"agree", map[string]podEnd{"netns": end("eth0", "10.0.0.1"), "route": end("", "10.0.0.1"), "fdb": end("", "10.0.0.1")}, "p1", "netns", "eth0", 0},
		{"netns wins", map[string]podEnd{"netns": end("eth0", "10.0.0.1"), "route": end("", "10.0.0.2")}, "p1", "netns", "eth0", 1},
		{"netns wins again, logged before", map[string]podEnd{"netns": end("eth0", "10.0.0.1"), "route": end("", "10.0.0.2")}, "p1", "netns", "eth0", 1},
		{"unknown netns address, route knows", map[string]podEnd{"netns": end("eth0", "10.9.9.9"), "route": end("", "10.0.0.2")}, "p2", "route", "", 1},
		{"hostNetwork address is no pod", map[string]podEnd{"route": end("", "10.0.0.9")}, "", "", "", 1},
		{"namespace addresses (Multus)", map[string]podEnd{"netns": {iface: "net1", ips: []netip.Addr{ip("192.168.5.5")}, nsIPs: []netip.Addr{ip("192.168.5.5"), ip("10.0.0.2")}}}, "p2", "netns", "net1", 1},
	} {
		seen := map[string]struct{}{}
		r, ok := c.resolve(links.Veth{Name: "veth0"}, tc.found, seen)
		if ok != (tc.wantPod != "") || r.pod.Name != tc.wantPod || r.method != tc.wantMethod || r.iface != tc.wantIface {
			t.Errorf("%s: resolve = %+v, %v; want pod %q method %q iface %q", tc.name, r, ok, tc.wantPod, tc.wantMethod, tc.wantIface)
		}
		if n := logs.Len(); n != tc.wantLogs {
			t.Errorf("%s: %d disagreements logged so far, want %d", tc.name, n, tc.wantLogs)
		}
	}
}
