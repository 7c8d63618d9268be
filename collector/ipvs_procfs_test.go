package collector

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"go.uber.org/zap"
)

func TestParseProcIPVS(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []IPVSProcService
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
			want: []IPVSProcService{
				{Protocol: "TCP", Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Scheduler: "rr", Backends: []IPVSProcBackend{
					{Addr: netip.MustParseAddr("10.0.2.11"), Port: 8080, Forward: "Masq", Weight: 1, Active: 2, Inactive: 3},
					{Addr: netip.MustParseAddr("10.0.2.12"), Port: 8080, Forward: "Masq", Weight: 0, Active: 0, Inactive: 1},
				}},
				{Protocol: "FWM", FWMark: 100, Scheduler: "wrr", Backends: []IPVSProcBackend{
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
			got, err := ParseProcIPVS(strings.NewReader(tt.in))
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
	got, err := ParseProcIPVSStats(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := IPVSProcStats{Conns: 10, InPkts: 60, OutPkts: 50, InBytes: 8000, OutBytes: 12000}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if _, err := ParseProcIPVSStats(strings.NewReader("a\nb\n")); err == nil {
		t.Error("want an error for a file without totals")
	}
}

func TestNewIPVSBackendLabels(t *testing.T) {
	tests := []struct {
		labels  []string
		wantErr bool
	}{
		{labels: nil},
		{labels: []string{}},
		{labels: []string{"namespace", "service", "pod"}},
		{labels: []string{"pod", "nope"}, wantErr: true},
		{labels: []string{"pod", "pod"}, wantErr: true},
	}
	for _, tt := range tests {
		_, err := NewIPVS(IPVSConfig{Backends: true, BackendLabels: tt.labels}, Deps{Logger: zap.NewNop()})
		if (err != nil) != tt.wantErr {
			t.Errorf("labels %q: err = %v, wantErr %v", tt.labels, err, tt.wantErr)
		}
	}
}

// FuzzParseProcIPVS checks the parser never panics on arbitrary input.
func FuzzParseProcIPVS(f *testing.F) {
	f.Add("h\nh\nh\nTCP  0A60000A:0050 rr\n  -> 0A00020B:1F90      Masq    1      2          3\n")
	f.Add("h\nh\nh\nUDP  [fd00::a]:0035 rr\n")
	f.Fuzz(func(t *testing.T, in string) {
		_, _ = ParseProcIPVS(strings.NewReader(in))
	})
}

func TestIPVSAttrRoundTrip(t *testing.T) {
	for _, s := range []ipvsService{
		{Family: 2, Protocol: 6, Addr: netip.MustParseAddr("10.96.0.10"), Port: 80},
		{Family: 10, Protocol: 17, Addr: netip.MustParseAddr("fd00::a"), Port: 53},
		{Family: 2, FWMark: 100},
	} {
		var got ipvsService
		err := walkAttrs(s.identity(), func(typ uint16, b []byte) error {
			if typ != ipvsCmdAttrService {
				t.Fatalf("outer attribute %d", typ)
			}
			return walkAttrs(b, got.decodeAttr)
		})
		if err != nil {
			t.Fatal(err)
		}
		if got != s {
			t.Errorf("round trip %+v -> %+v", s, got)
		}
	}
}
