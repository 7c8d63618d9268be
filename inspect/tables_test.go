package inspect

import (
	"bytes"
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/netinspect/netinspect/collector"
	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/source/conntrack"
	"github.com/netinspect/netinspect/source/neighbour"
)

// tablesSources are testSources with the node tables' results filled in.
func tablesSources() []Source {
	var stats conntrack.CPUStats
	finished := time.Unix(1_767_225_600, 0)
	ct := &collector.ConntrackResult{
		Reading: conntrack.Reading{Source: "netlink", Entries: 1000, Limit: 262144, CPUs: []conntrack.CPUStats{stats}},
		Settings: conntrack.Settings{
			Buckets:  conntrack.SettingsUint{Value: 16384, OK: true},
			Max:      conntrack.SettingsUint{Value: 262144, OK: true},
			TCPLoose: conntrack.SettingsBool{Value: true, OK: true}, TCPBeLiberal: conntrack.SettingsBool{OK: true},
			Timeouts: []conntrack.SettingsTimeout{
				{Protocol: "tcp", State: "established", Timeout: 86400 * time.Second},
				{Protocol: "udp", State: "unreplied", Timeout: 30 * time.Second},
				{Protocol: "icmp", Timeout: 30 * time.Second},
			},
		},
	}
	frontend, old := netip.MustParseAddrPort("10.96.0.10:53"), netip.MustParseAddrPort("10.244.0.3:5353")
	attr := &collector.AttributionResult{
		Finished: finished,
		Stale: collector.StaleResult{
			Entries: 6, Blackhole: 6, MaxTimeout: 119 * time.Second, OldestStart: finished.Add(-90 * time.Second),
			Services: []collector.StaleCount{{Namespace: "kube-system", Name: "kube-dns", Protocol: "udp", Entries: 6, Blackhole: 6}},
			Pairs:    []collector.StalePair{{Namespace: "kube-system", Name: "kube-dns", Protocol: "udp", Frontend: frontend, ReplySource: old, Entries: 6}},
		},
		SNAT: collector.SNATResult{Entries: 10, Tuples: 1, Worst: 10.0 / 64512, Top: []conntrack.SNATUsage{{
			SNATCount: conntrack.SNATCount{SNATTuple: conntrack.SNATTuple{Protocol: 6, Translated: netip.MustParseAddr("192.168.1.10"),
				Destination: netip.MustParseAddrPort("93.184.216.34:443")}, Entries: 10, MinPort: 40000, MaxPort: 40009},
			Ports: 64512, Ratio: 10.0 / 64512,
		}}},
	}
	nb := &collector.NeighbourResult{Tables: []neighbour.Table{
		{Family: "ipv4", Name: "arp_cache", Entries: 42, GCThresh1: 128, GCThresh2: 512, GCThresh3: 1024,
			Stats: neighbour.Stats{TableFulls: 0, HasTableFulls: true}, Source: "netlink"},
	}}
	veth := &collector.VethResult{Conntrack: []collector.PodConntrack{
		{Pod: kube.PodRef{Namespace: "shop", Name: "cart-0"}, Entries: 25, Limit: 262144},
	}}
	return []Source{
		{Name: "conntrack", Collector: fake[*collector.ConntrackResult]{v: ct}},
		{Name: "conntrack-attribution", Collector: fake[*collector.AttributionResult]{v: attr}},
		{Name: "neighbour", Collector: fake[*collector.NeighbourResult]{v: nb}},
		{Name: "veth", Collector: fake[*collector.VethResult]{v: veth}},
	}
}

func TestTablesSection(t *testing.T) {
	res, problems := Gather(context.Background(), tablesSources())
	r := Build("node-a", "synced", testIndex(), res, problems, Filter{})
	tb := r.Tables
	if tb == nil || tb.Conntrack == nil || *tb.Conntrack.Buckets != 16384 || tb.Conntrack.TimeoutsSeconds["tcp/established"] != 86400 ||
		tb.Conntrack.TimeoutsSeconds["icmp"] != 30 || !*tb.Conntrack.TCPLoose || *tb.Conntrack.TCPBeLiberal || tb.Conntrack.Timestamp != nil {
		t.Fatalf("conntrack sizing %+v", tb.Conntrack)
	}
	if s := tb.Stale; s == nil || s.Entries != 6 || s.Blackhole != 6 || *s.OldestAgeSeconds != 90 || len(s.Pairs) != 1 ||
		s.Pairs[0].Command != "conntrack -L -p udp -d 10.96.0.10 --reply-src 10.244.0.3" {
		t.Errorf("stale %+v", tb.Stale)
	}
	if s := tb.SNAT; s == nil || len(s.Top) != 1 || s.Top[0].Destination != "93.184.216.34:443" || s.Top[0].Protocol != "tcp" {
		t.Errorf("snat %+v", tb.SNAT)
	}
	if len(tb.Neighbour) != 1 || tb.Neighbour[0].GCThresh3 != 1024 || *tb.Neighbour[0].TableFulls != 0 {
		t.Errorf("neighbour %+v", tb.Neighbour)
	}
	if len(tb.PodConntrack) != 1 || tb.PodConntrack[0].Entries != 25 {
		t.Errorf("pod conntrack %+v", tb.PodConntrack)
	}

	// Filters: another namespace drops the stale service and the pod table.
	other := Build("node-a", "", testIndex(), res, problems, Filter{Namespace: "web"}).Tables
	if len(other.Stale.Services) != 0 || len(other.Stale.Pairs) != 0 || len(other.PodConntrack) != 0 {
		t.Errorf("filtered by namespace web: %+v %+v", other.Stale, other.PodConntrack)
	}

	var out bytes.Buffer
	if err := r.WriteTable(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"TABLES",
		"conntrack limit 262144, 16384 hash buckets (limit/4 = 65536)",
		"tcp/established 86400s",
		"stale (kube-proxy's sense): 6 entries, 6 black-holing, up to 119s left",
		"10.96.0.10:53 -> 10.244.0.3:5353: 6",
		"conntrack -L -p udp -d 10.96.0.10 --reply-src 10.244.0.3",
		"tcp 192.168.1.10 -> 93.184.216.34:443: 10 of 64512",
		"neighbour ipv4: 42 entries, gc_thresh1/2/3 128/512/1024, table_fulls 0",
		"pods' own conntrack tables: shop/cart-0 25",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	for i, line := range strings.Split(out.String(), "\n") {
		if len(line) > Width {
			t.Errorf("line %d is %d columns: %q", i+1, len(line), line)
		}
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	ValidateJSON(t, js.Bytes())
}
