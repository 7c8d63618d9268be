package conntrack

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	ticonntrack "github.com/ti-mo/conntrack"

	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/netns"
)

func TestListenerReportsNewAndDestroy(t *testing.T) {
	ns := netns.New(t, "ctdump-ev")
	l, err := Listen(ns.Target(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	spec := ctfill.Spec{Count: 50, Src: netip.MustParseAddr("10.244.0.5"), Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 53,
		ReplySrc: netip.MustParseAddr("10.244.0.9")}
	fill(t, ns, spec)
	c, err := ticonntrack.Dial(&netlink.Config{NetNS: ns.FD()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, f := range ctfill.Flows(spec)[:10] {
		if err := c.Delete(f); err != nil {
			t.Fatalf("delete flow: %v", err)
		}
	}

	counts := map[EventType]int{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	deadline, _ := ctx.Deadline()
	for counts[EventNew] < 50 || counts[EventDestroy] < 10 {
		_, err := l.Receive(ctx, deadline, func(e *Entry) {
			counts[e.Event]++
			if e.Orig.Src != spec.Src || e.Reply.Src != spec.ReplySrc || e.Orig.DstPort != 53 {
				t.Errorf("event entry %+v does not match the flows created", e)
			}
		})
		if err != nil {
			t.Fatalf("receive after %v: %v", counts, err)
		}
	}
	if counts[EventNew] != 50 || counts[EventDestroy] != 10 || counts[EventNone] != 0 {
		t.Errorf("events = %v, want 50 new and 10 destroy", counts)
	}
	// Nothing more arrives: the next Receive times out.
	if _, err := l.Receive(ctx, time.Now().Add(100*time.Millisecond), func(e *Entry) { t.Errorf("unexpected event %+v", e) }); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("receive with nothing to read = %v, want a deadline error", err)
	}
}
