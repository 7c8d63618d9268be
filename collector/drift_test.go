package collector

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/proxyrules"
	"github.com/netinspect/netinspect/test/testenv"
)

// driftIndexOf is an index holding svcs as the API would, so that rules
// written for them by test/proxyrules are in sync.
func driftIndexOf(svcs []proxyrules.Service) *kube.Index {
	ix := kube.NewIndex("node-1")
	for _, s := range svcs {
		ix.SetService(kube.ServiceInfo{Namespace: s.Namespace, Name: s.Name, Type: "ClusterIP", ClusterIPs: []netip.Addr{s.ClusterIP},
			IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol}, Ports: []kube.ServicePortInfo{{Name: s.PortName, Port: uint16(s.Port), Protocol: s.Protocol}}})
		var eps []kube.EndpointInfo
		for _, ep := range s.Endpoints {
			eps = append(eps, kube.EndpointInfo{IP: ep.Addr(), Ready: true, Serving: true, Node: "node-2",
				Ports: []kube.EndpointPort{{Name: s.PortName, Port: ep.Port(), Protocol: s.Protocol}}})
		}
		ix.SetEndpointSlice(s.Namespace, s.Name+"-1", s.Name, eps)
	}
	return ix
}

// TestDriftNeedsASyncedIndex: without Kubernetes, and until the index has
// synced, drift is not judged and its series are absent; once judged, the
// rules test/proxyrules writes for the index's Services are in sync.
func TestDriftNeedsASyncedIndex(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "iptables-nft-restore")
	testenv.RequireCommand(t, "nsenter")
	svcs := proxyrules.Generate("ns1", 5, 2, 4)
	ns := netns.New(t, "driftix")
	rulesRestore(t, ns, "nft", 4, proxyrules.IPTablesRestore(svcs, 4))
	ix := driftIndexOf(svcs)
	synced := false
	ix.SetSynced(func() bool { return synced })

	for _, tc := range []struct {
		name   string
		index  *kube.Index
		synced bool
		judged bool
	}{{"without Kubernetes", nil, false, false}, {"index not synced", ix, false, false}, {"index synced", ix, true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			synced = tc.synced
			c := in(must(NewIPTables(IPTablesConfig{RefreshInterval: time.Hour, Drift: DefaultDriftConfig()},
				Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: tc.index}))(t), ns)
			t.Cleanup(c.Close)
			st := rulesWaitRefresh(t, c, time.Time{}, nil)
			v := driftGather(t, c)
			if judged := st.Drift != nil; judged != tc.judged || v.hasDriftSeries != tc.judged {
				t.Fatalf("judged %v, drift series %v; want %v (%s)", judged, v.hasDriftSeries, tc.judged, v)
			}
			if tc.judged && (v.ports["ipv4"]["in_sync"] != 5 || v.mismatches() != 0 || v.histCount != 0) {
				t.Errorf("%s", v)
			}
		})
	}
}

// TestDriftSeriesCap: beyond --kube-proxy.drift.max-series the mismatches
// count in drift_series_dropped, the oldest keep their series; a cap of 0
// exports none. The per-node counts are the same either way.
func TestDriftSeriesCap(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "iptables-nft-restore")
	testenv.RequireCommand(t, "nsenter")
	svcs := proxyrules.Generate("ns1", 10, 2, 4)
	ns := netns.New(t, "driftcap")
	// The node lacks the rules of the last four Services.
	rulesRestore(t, ns, "nft", 4, proxyrules.IPTablesRestore(svcs[:6], 4))
	ix := driftIndexOf(svcs)
	for _, tc := range []struct{ max, series, dropped int }{{50, 4, 0}, {3, 3, 1}, {0, 0, 4}} {
		t.Run(fmt.Sprintf("max %d", tc.max), func(t *testing.T) {
			c := in(must(NewIPTables(IPTablesConfig{RefreshInterval: time.Hour, Drift: DriftConfig{MaxSeries: tc.max}},
				Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ix}))(t), ns)
			t.Cleanup(c.Close)
			rulesWaitRefresh(t, c, time.Time{}, nil)
			v := driftGather(t, c)
			if len(v.series) != tc.series || int(v.dropped) != tc.dropped || v.ports["ipv4"]["missing"] != 4 || v.ports["ipv4"]["in_sync"] != 6 {
				t.Errorf("%s; want %d series, %d dropped, 4 missing, 6 in sync", v, tc.series, tc.dropped)
			}
			for k := range v.series {
				if k == "ipv4 ns1/svc-0:http missing" {
					t.Errorf("a service port in sync has a series: %s", k)
				}
			}
		})
	}
}

// TestDriftNFTablesDNATLayout: rules in kube-proxy 1.37's nftables layout
// (test/proxyrules NFTablesDNAT: a numgen DNAT map per service, a lone
// DNAT for one endpoint), written for the index's Services, are in sync,
// and a service whose map lost an endpoint is not.
func TestDriftNFTablesDNATLayout(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "nft")
	svcs := proxyrules.Generate("ns1", 6, 3, 4)
	svcs[5].Endpoints = svcs[5].Endpoints[:1]
	ns := netns.New(t, "driftnft")
	ix := driftIndexOf(svcs)
	programmed := append([]proxyrules.Service(nil), svcs...)
	programmed[2].Endpoints = programmed[2].Endpoints[:2]
	rulesNFTLoad(t, ns, proxyrules.NFTablesDNAT(programmed, 4))
	c := in(must(NewNFTables(NFTablesConfig{RefreshInterval: time.Hour, Drift: DriftConfig{MaxSeries: 50}},
		Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ix}))(t), ns)
	t.Cleanup(c.Close)
	rulesNFTWait(t, c, time.Time{})
	v := driftGather(t, c)
	if want := map[string]float64{"ipv4 ns1/svc-2:http endpoints": 0}; fmt.Sprint(v.series) != fmt.Sprint(want) || v.ports["ipv4"]["in_sync"] != 5 {
		t.Errorf("%s; want svc-2 alone with other endpoints, 5 in sync", v)
	}
}
