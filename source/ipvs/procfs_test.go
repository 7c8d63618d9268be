package ipvs

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/netinspect/netinspect/source/netlinkattr"
)

func TestParseProcIPVS(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []ProcService
		wantErr bool
	}{
		{
			name: "empty table",
			in: `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
`,
		},
		{
			name: "tcp, fwmark, ipv6, no backends",
			in: `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A60000A:0050 rr
  -> 0A00020B:1F90      Masq    1      2          3
  -> 0A00020C:1F90      Masq    0      0          1
FWM  00000064 wrr
  -> 0A00020D:1F90      Route   5      0          0
UDP  [fd00:0000:0000:0000:0000:0000:0000:000a]:0035 rr persistent 360
`,
			want: []ProcService{
				{Protocol: "TCP", Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Scheduler: "rr", Backends: []ProcBackend{
					{Addr: netip.MustParseAddr("10.0.2.11"), Port: 8080, Forward: "Masq", Weight: 1, Active: 2, Inactive: 3},
					{Addr: netip.MustParseAddr("10.0.2.12"), Port: 8080, Forward: "Masq", Weight: 0, Active: 0, Inactive: 1},
				}},
				{Protocol: "FWM", FWMark: 100, Scheduler: "wrr", Backends: []ProcBackend{
					{Addr: netip.MustParseAddr("10.0.2.13"), Port: 8080, Forward: "Route", Weight: 5},
				}},
				{Protocol: "UDP", Addr: netip.MustParseAddr("fd00::a"), Port: 53, Scheduler: "rr"},
			},
		},
		{name: "backend before service", in: "h\nh\nh\n  -> 0A00020B:1F90 Masq 1 0 0\n", wantErr: true},
		{name: "bad address", in: "h\nh\nh\nTCP  0A6000:0050 rr\n", wantErr: true},
		{name: "bad count", in: "h\nh\nh\nTCP  0A60000A:0050 rr\n  -> 0A00020B:1F90 Masq 1 x 0\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseProc(strings.NewReader(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseProcIPVSStats(t *testing.T) {
	in := `   Total Incoming Outgoing         Incoming         Outgoing
   Conns  Packets  Packets            Bytes            Bytes
       A       3C       32             1F40             2EE0

 Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s
       0        0        0                0                0
`
	got, err := ParseProcStats(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := ProcStats{Conns: 10, InPkts: 60, OutPkts: 50, InBytes: 8000, OutBytes: 12000}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if _, err := ParseProcStats(strings.NewReader("a\nb\n")); err == nil {
		t.Error("want an error for a file without totals")
	}
}

// FuzzParseProcIPVS checks the parser never panics on arbitrary input.
func FuzzParseProcIPVS(f *testing.F) {
	f.Add("h\nh\nh\nTCP  0A60000A:0050 rr\n  -> 0A00020B:1F90      Masq    1      2          3\n")
	f.Add("h\nh\nh\nUDP  [fd00::a]:0035 rr\n")
	f.Fuzz(func(t *testing.T, in string) {
		_, _ = ParseProc(strings.NewReader(in))
	})
}

func TestIPVSAttrRoundTrip(t *testing.T) {
	for _, s := range []Service{
		{Family: 2, Protocol: 6, Addr: netip.MustParseAddr("10.96.0.10"), Port: 80},
		{Family: 10, Protocol: 17, Addr: netip.MustParseAddr("fd00::a"), Port: 53},
		{Family: 2, FWMark: 100},
	} {
		var got Service
		err := netlinkattr.Walk(s.identity(), func(typ uint16, b []byte) error {
			if typ != ipvsCmdAttrService {
				t.Fatalf("outer attribute %d", typ)
			}
			return netlinkattr.Walk(b, got.decodeAttr)
		})
		if err != nil {
			t.Fatal(err)
		}
		if got != s {
			t.Errorf("round trip %+v -> %+v", s, got)
		}
	}
}

// A service and a backend as the kernel answers them
// (ip_vs_genl_fill_service, ip_vs_genl_fill_dest) decode to what was sent.
func TestParseServiceAndDest(t *testing.T) {
	want := Service{Family: FamilyIPv4, Protocol: 6, Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Sched: "rr", Flags: FlagPersistent, Timeout: 10800,
		Stats: Stats{Conns: 5, InPkts: 50, OutPkts: 40, InBytes: 5000, OutBytes: 4000}}
	inner := want.identity()
	stats := netlinkattr.AppendUint64(nil, 1, want.Stats.Conns)
	for i, v := range []uint64{want.Stats.InPkts, want.Stats.OutPkts, want.Stats.InBytes, want.Stats.OutBytes} {
		stats = netlinkattr.AppendUint64(stats, uint16(2+i), v)
	}
	var svc []byte
	a := netlinkattr.NewAttrs(inner)
	a.Next()
	svc = append(svc, a.Value()...)
	svc = netlinkattr.AppendString(svc, ipvsSvcAttrSchedName, want.Sched)
	svc = netlinkattr.Append(svc, ipvsSvcAttrFlags, append(netlinkattr.AppendUint32(nil, 0, want.Flags)[4:], 0xff, 0xff, 0xff, 0xff))
	svc = netlinkattr.AppendUint32(svc, ipvsSvcAttrTimeout, want.Timeout)
	svc = netlinkattr.Append(svc, ipvsSvcAttrStats64, stats)
	got, err := ParseService(netlinkattr.Append(nil, ipvsCmdAttrService, svc))
	if err != nil || got != want {
		t.Errorf("ParseService = %+v, %v\nwant %+v", got, err, want)
	}

	var dest []byte
	dest = netlinkattr.Append(dest, ipvsDestAttrAddr, netlinkattr.AppendInetAddr(nil, netip.MustParseAddr("fd00::5")))
	dest = netlinkattr.AppendBE16(dest, ipvsDestAttrPort, 8080)
	dest = netlinkattr.AppendUint32(dest, ipvsDestAttrWeight, 2)
	dest = netlinkattr.AppendUint32(dest, ipvsDestAttrActiveConns, 3)
	dest = netlinkattr.AppendUint16(dest, ipvsDestAttrAddrFamily, FamilyIPv6)
	d, err := ParseDest(netlinkattr.Append(nil, ipvsCmdAttrDest, dest), FamilyIPv4)
	if err != nil || d.Addr != netip.MustParseAddr("fd00::5") || d.Port != 8080 || d.Weight != 2 || d.Active != 3 {
		t.Errorf("ParseDest = %+v, %v: want the IPv6 backend its family attribute names", d, err)
	}
}

func FuzzParseService(f *testing.F) {
	s := Service{Family: FamilyIPv4, Protocol: 6, Addr: netip.MustParseAddr("10.96.0.10"), Port: 80}
	f.Add(s.identity())
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseService(b) // must not panic
		_, _ = ParseDest(b, FamilyIPv6)
	})
}
