package conntrack

import (
	"context"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

func fill(t testing.TB, ns *netns.NS, specs ...ctfill.Spec) {
	t.Helper()
	for _, s := range specs {
		n, err := ctfill.Create(ns.FD(), s)
		if err != nil || n != s.Count {
			t.Fatalf("created %d of %d flows of %+v: %v", n, s.Count, s, err)
		}
	}
}

func TestDumpDecodesEveryEntryOfTheNamespace(t *testing.T) {
	testenv.RequireCommand(t, "conntrack")
	ns := netns.New(t, "ctdump")
	specs := []ctfill.Spec{
		{Count: 300, Src: netip.MustParseAddr("10.244.0.5"), Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 53},
		{Count: 200, Proto: 6, Src: netip.MustParseAddr("10.244.0.6"), Dst: netip.MustParseAddr("10.96.0.1"), DstPort: 443,
			ReplySrc: netip.MustParseAddr("10.244.0.7"), ReplySrcPort: 8443},
		{Count: 100, Src: netip.MustParseAddr("fd00:10:244::5"), Dst: netip.MustParseAddr("fd00:10:96::a"), DstPort: 53,
			ReplySrc: netip.MustParseAddr("fd00:10:244::9")},
	}
	fill(t, ns, specs...)

	want := map[[2]Tuple]int{}
	total := 0
	for _, s := range specs {
		for _, f := range ctfill.Flows(s) {
			k := [2]Tuple{
				{Src: f.TupleOrig.IP.SourceAddress, Dst: f.TupleOrig.IP.DestinationAddress, SrcPort: f.TupleOrig.Proto.SourcePort, DstPort: f.TupleOrig.Proto.DestinationPort, Proto: f.TupleOrig.Proto.Protocol},
				{Src: f.TupleReply.IP.SourceAddress, Dst: f.TupleReply.IP.DestinationAddress, SrcPort: f.TupleReply.Proto.SourcePort, DstPort: f.TupleReply.Proto.DestinationPort, Proto: f.TupleReply.Proto.Protocol},
			}
			want[k]++
			total++
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got := map[[2]Tuple]int{}
	families := map[uint8]int{}
	st, err := NewDumper().Dump(ctx, ns.Target(), FamilyAll, func(e *Entry) {
		got[[2]Tuple{e.Orig, e.Reply}]++
		families[e.Family]++
	})
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	t.Logf("%d entries in %d datagrams", st.Entries, st.Datagrams)
	if st.Entries != total {
		t.Errorf("dumped %d entries, created %d", st.Entries, total)
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("entry %+v dumped %d times, want %d", k, got[k], n)
			break
		}
	}
	if len(got) != len(want) {
		t.Errorf("dumped %d distinct entries, want %d", len(got), len(want))
	}
	if families[2] != 500 || families[10] != 100 {
		t.Errorf("families = %v, want 500 AF_INET and 100 AF_INET6", families)
	}

	v6 := 0
	st6, err := NewDumper().Dump(ctx, ns.Target(), FamilyIPv6, func(e *Entry) { v6++ })
	if err != nil || st6.Entries != 100 || v6 != 100 {
		t.Errorf("IPv6 dump: %d entries (%d calls), err %v; want 100", st6.Entries, v6, err)
	}

	// Read-only: the table still holds what was created.
	if c := strings.TrimSpace(ns.MustRun("conntrack", "-C")); c != strconv.Itoa(total) {
		t.Errorf("conntrack -C after dumps = %s, want %d", c, total)
	}
}

func TestDumpOfAnEmptyTable(t *testing.T) {
	ns := netns.New(t, "ctdump-empty")
	calls := 0
	st, err := NewDumper().Dump(context.Background(), ns.Target(), FamilyAll, func(*Entry) { calls++ })
	if err != nil || st.Entries != 0 || calls != 0 {
		t.Fatalf("dump of an empty table: %+v, %d calls, %v", st, calls, err)
	}
}

func TestDumpStopsWhenCancelled(t *testing.T) {
	ns := netns.New(t, "ctdump-cancel")
	fill(t, ns, ctfill.Spec{Count: 2000, Src: netip.MustParseAddr("10.244.0.5"), Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 53})
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	_, err := NewDumper().Dump(ctx, ns.Target(), FamilyAll, func(*Entry) {
		n++
		if n == 10 {
			cancel()
		}
	})
	if err == nil || ctx.Err() == nil {
		t.Fatalf("dump cancelled after 10 entries returned %v after %d entries", err, n)
	}
	if n >= 2000 {
		t.Errorf("dump went on to %d entries after cancel", n)
	}
}

// The socket is read on a goroutine of its own; every way a dump ends
// (done, cancelled) must stop it and give back every buffer, so the same
// Dumper dumps the whole table again afterwards.
func TestDumpStopsItsReaderAndReusesItsBuffers(t *testing.T) {
	ns := netns.New(t, "ctdump-reuse")
	const flows = 3000
	fill(t, ns, ctfill.Spec{Count: flows, Src: netip.MustParseAddr("10.244.0.5"), Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 53})
	before := runtime.NumGoroutine()
	d := NewDumper()
	for i := 0; i < 20; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		n := 0
		_, err := d.Dump(ctx, ns.Target(), FamilyAll, func(*Entry) {
			n++
			if i%2 == 1 && n == 100*i {
				cancel()
			}
		})
		cancel()
		switch {
		case i%2 == 0 && (err != nil || n != flows):
			t.Fatalf("dump %d after cancelled ones: %d entries, %v; want %d", i, n, err, flows)
		case i%2 == 1 && err == nil:
			t.Fatalf("dump %d cancelled after %d entries returned no error", i, 100*i)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := runtime.NumGoroutine(); got > before {
		t.Errorf("%d goroutines after 20 dumps, %d before", got, before)
	}
}

// A status filter makes the kernel return only the entries whose status
// matches; the two values of one bit split the table into disjoint parts
// that add up to it.
func TestDumpFilteredByStatusSplitsTheTable(t *testing.T) {
	ns := netns.New(t, "ctdump-filter")
	fill(t, ns,
		ctfill.Spec{Count: 700, Assured: true, Src: netip.MustParseAddr("10.244.0.5"), Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 53},
		ctfill.Spec{Count: 300, Src: netip.MustParseAddr("10.244.0.6"), Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 53},
	)
	const assured = 1 << 2 // IPS_ASSURED
	d := NewDumper()
	for _, tc := range []struct {
		filter StatusFilter
		want   int
	}{
		{StatusFilter{}, 1000},
		{StatusFilter{Mask: assured, Value: assured}, 700},
		{StatusFilter{Mask: assured}, 300},
	} {
		n := 0
		st, err := d.DumpFiltered(context.Background(), ns.Target(), FamilyAll, tc.filter, func(e *Entry) {
			n++
			if e.Status&tc.filter.Mask != tc.filter.Value {
				t.Errorf("filter %+v: entry with status %#x", tc.filter, e.Status)
			}
		})
		if err != nil || n != tc.want || st.Entries != tc.want {
			t.Errorf("filter %+v: %d entries (stats %+v), %v; want %d", tc.filter, n, st, err, tc.want)
		}
	}
	if _, err := d.DumpFiltered(context.Background(), ns.Target(), FamilyAll, StatusFilter{Mask: 1, Value: 2}, func(*Entry) {}); err == nil {
		t.Error("a filter value outside its mask was accepted")
	}
}
