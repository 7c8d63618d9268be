package collector

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/ti-mo/conntrack"
	"go.uber.org/zap/zaptest"

	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/netns"
)

func newEventsAttribution(t *testing.T, ns *netns.NS) *Attribution {
	t.Helper()
	// An hour between passes: within the test, counts change only by events
	// (or by the pass a lost event triggers).
	a := in(must(NewAttribution(AttributionConfig{Interval: time.Hour, Mode: AttributionModeEvents},
		Deps{Logger: zaptest.NewLogger(t), Paths: Paths{ProcFS: "/proc"}, Index: attributionIndex()}))(t), ns)
	return a
}

// waitSeries polls Update until the pod and service series equal want.
func waitSeries(t *testing.T, a *Attribution, want map[string]float64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	var got map[string]float64
	for {
		if a.current() != nil {
			got, _ = attributionSeries(t, a)
			if fmt.Sprint(got) == fmt.Sprint(want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("series after a minute:\n%v\nwant\n%v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAttributionEventsFollowTheTable(t *testing.T) {
	ns := netns.New(t, "attr-ev")
	fillFlows(t, ns, attributionFlows[:1]) // client-a -> kube-dns, udp, 300
	a := newEventsAttribution(t, ns)
	ctx, cancel := context.WithCancel(context.Background())
	defer stopAttribution(a, cancel)
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitSeries(t, a, map[string]float64{
		"pod default/client-a/udp":         300,
		"service kube-system/kube-dns/udp": 300,
	})

	// New entries arrive as NEW events: client-b -> frontend, DNATed to backend-1.
	dnat := attributionFlows[1]
	fillFlows(t, ns, []ctfill.Spec{dnat})
	waitSeries(t, a, map[string]float64{
		"pod default/client-a/udp":         300,
		"service kube-system/kube-dns/udp": 300,
		"pod default/client-b/tcp":         200,
		"pod web/backend-1/tcp":            200,
		"service web/frontend/tcp":         200,
	})

	// Removed entries arrive as DESTROY events.
	c, err := conntrack.Dial(&netlink.Config{NetNS: ns.FD()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, f := range ctfill.Flows(dnat)[:50] {
		if err := c.Delete(f); err != nil {
			t.Fatalf("delete flow: %v", err)
		}
	}
	waitSeries(t, a, map[string]float64{
		"pod default/client-a/udp":         300,
		"service kube-system/kube-dns/udp": 300,
		"pod default/client-b/tcp":         150,
		"pod web/backend-1/tcp":            150,
		"service web/frontend/tcp":         150,
	})
	if p := a.passes.Load(); p != 1 {
		t.Errorf("%d passes, want the one at start", p)
	}
	if n := a.events.lost.Load(); n != 0 {
		t.Errorf("%d event losses", n)
	}
}

func TestAttributionEventsLostTriggerAPass(t *testing.T) {
	ns := netns.New(t, "attr-evlost")
	a := newEventsAttribution(t, ns)
	a.eventsReadBuffer = 4096 // the kernel's minimum is about 2 KiB
	ctx, cancel := context.WithCancel(context.Background())
	defer stopAttribution(a, cancel)
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for a.passes.Load() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no pass within a minute")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Stall the reader (it waits for the lock to apply an event) while
	// 2,000 entries are created: the small buffer overflows.
	a.events.mu.Lock()
	_, err := ctfill.Create(ns.FD(), attributionFlows[0])
	if err == nil {
		_, err = ctfill.Create(ns.FD(), ctfill.Spec{Count: 1700, Src: ip("10.244.0.11"), Dst: ip("10.96.0.10"), DstPort: 53})
	}
	a.events.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	waitSeries(t, a, map[string]float64{
		"pod default/client-a/udp":         300,
		"pod default/client-b/udp":         1700,
		"service kube-system/kube-dns/udp": 2000,
	})
	if a.events.lost.Load() == 0 {
		t.Error("no event loss was recorded")
	}
	if a.passes.Load() < 2 {
		t.Errorf("%d passes, want a second after the loss", a.passes.Load())
	}
}

func TestAttributionEventsWithoutConntrackIsNoData(t *testing.T) {
	a := must(NewAttribution(AttributionConfig{Mode: AttributionModeEvents, Interval: time.Hour},
		Deps{Logger: zaptest.NewLogger(t), Paths: Paths{ProcFS: t.TempDir()}}))(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer stopAttribution(a, cancel)
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	absent := func() bool { s := a.r.Snapshot(); return s != nil && errors.Is(s.Err, ErrNoData) }
	for !absent() {
		if time.Now().After(deadline) {
			t.Fatal("the absent table was not noticed within a minute")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.Update(ctx, make(chan prometheus.Metric, 10)); !errors.Is(err, ErrNoData) {
		t.Errorf("Update without a table = %v, want ErrNoData", err)
	}
	if a.errs.Load() != 0 {
		t.Errorf("an absent table counted %d errors", a.errs.Load())
	}
}

// A bad mode is refused by the constructor, so the binary exits 2 with
// usage at start-up instead of failing in Start.
func TestAttributionUnknownModeFailsConstruction(t *testing.T) {
	if _, err := NewAttribution(AttributionConfig{Mode: "magic"}, Deps{Logger: zaptest.NewLogger(t)}); err == nil || !strings.Contains(err.Error(), "magic") {
		t.Errorf("NewAttribution with mode magic: %v, want an error naming it", err)
	}
}
