package kubeproxy_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	. "github.com/netinspect/netinspect/kubeproxy"
)

func newTracker(t *testing.T, mod func(*DriftConfig)) *DriftTracker {
	t.Helper()
	cfg := DefaultDriftConfig(30 * time.Second)
	if mod != nil {
		mod(&cfg)
	}
	tr, err := NewDriftTracker(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func key(svc string) DriftKey {
	return DriftKey{Family: IPv4, Namespace: "ns", Service: svc, Port: "http"}
}

func mismatches(state DriftState, svcs ...string) []Mismatch {
	var out []Mismatch
	for _, s := range svcs {
		out = append(out, Mismatch{Key: key(s), State: state})
	}
	return out
}

func v4(ports int, ms ...Mismatch) Comparison {
	return Comparison{Family: IPv4, ServicePorts: ports, Mismatches: ms}
}

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func family(r DriftReport, f IPFamily) FamilyDrift {
	for _, fd := range r.Families {
		if fd.Family == f {
			return fd
		}
	}
	return FamilyDrift{Family: f}
}

func TestDriftConfigRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*DriftConfig)
		want string
	}{
		{"negative grace", func(c *DriftConfig) { c.Grace = -time.Second }, "grace must not be negative, got -1s"},
		{"negative cap", func(c *DriftConfig) { c.MaxSeries = -1 }, "max series must not be negative, got -1"},
		{"no refresh interval", func(c *DriftConfig) { c.RefreshInterval = 0 }, "refresh interval must be positive"},
		{"fast re-list slower than refresh", func(c *DriftConfig) { c.FastRelistInterval = time.Minute }, "fast re-list interval must be positive and at most the refresh interval 30s, got 1m0s"},
		{"no fast re-list", func(c *DriftConfig) { c.FastRelistInterval = 0 }, "fast re-list interval must be positive"},
		{"buckets out of order", func(c *DriftConfig) { c.Buckets = []float64{10, 5} }, "buckets must be positive, finite and increasing"},
		{"no buckets", func(c *DriftConfig) { c.Buckets = nil }, "no histogram buckets"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultDriftConfig(30 * time.Second)
			tc.mod(&cfg)
			_, err := NewDriftTracker(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "kube-proxy drift: ") {
				t.Errorf("err = %v, want one saying %q", err, tc.want)
			}
		})
	}
	for name, mod := range map[string]func(*DriftConfig){
		"defaults": nil,
		"grace 0":  func(c *DriftConfig) { c.Grace = 0 },
		"cap 0":    func(c *DriftConfig) { c.MaxSeries = 0 },
	} {
		cfg := DefaultDriftConfig(30 * time.Second)
		if mod != nil {
			mod(&cfg)
		}
		if _, err := NewDriftTracker(cfg); err != nil {
			t.Errorf("%s rejected: %v", name, err)
		}
	}
}

// TestDriftHealthyNodeReportsZero: comparisons without mismatches give
// every port in sync, no oldest age, no series, an empty histogram.
func TestDriftHealthyNodeReportsZero(t *testing.T) {
	tr := newTracker(t, nil)
	var r DriftReport
	for i := range 5 {
		r = tr.Observe(at(time.Duration(i)*30*time.Second), time.Second, v4(120), Comparison{Family: IPv6, ServicePorts: 40})
	}
	if got := family(r, IPv4); got.ServicePorts != [4]int{120, 0, 0, 0} || got.Oldest != 0 {
		t.Errorf("ipv4 %+v", got)
	}
	if got := family(r, IPv6); got.ServicePorts != [4]int{40, 0, 0, 0} {
		t.Errorf("ipv6 %+v", got)
	}
	if len(r.Series) != 0 || r.SeriesDropped != 0 || r.Pending != 0 || r.Durations.Count != 0 {
		t.Errorf("healthy report %+v", r)
	}
	if r.NextRelist != 30*time.Second {
		t.Errorf("next re-list %v, want the refresh interval", r.NextRelist)
	}
}

// TestDriftGrace: a mismatch counts only once it has lasted the grace;
// while it is pending the rules are re-listed sooner.
func TestDriftGrace(t *testing.T) {
	tr := newTracker(t, nil) // grace 60 s, fast re-list 5 s
	r := tr.Observe(at(0), 100*time.Millisecond, v4(10, mismatches(Missing, "web")...))
	if got := family(r, IPv4).ServicePorts; got != [4]int{10, 0, 0, 0} || r.Pending != 1 || len(r.Series) != 0 {
		t.Errorf("at once: ports %v, pending %d, series %v", got, r.Pending, r.Series)
	}
	if r.NextRelist != 5*time.Second {
		t.Errorf("next re-list while pending %v, want 5s", r.NextRelist)
	}
	// A slow listing bounds the rate: at most a quarter of the time listing.
	if r := tr.Observe(at(5*time.Second), 3*time.Second, v4(10, mismatches(Missing, "web")...)); r.NextRelist != 12*time.Second {
		t.Errorf("next re-list after a 3 s listing %v, want 12s", r.NextRelist)
	}
	if r := tr.Observe(at(10*time.Second), 10*time.Second, v4(10, mismatches(Missing, "web")...)); r.NextRelist != 30*time.Second {
		t.Errorf("next re-list after a 10 s listing %v, want the refresh interval", r.NextRelist)
	}
	r = tr.Observe(at(59*time.Second), 0, v4(10, mismatches(Missing, "web")...))
	if r.Pending != 1 || family(r, IPv4).ServicePorts[Missing] != 0 {
		t.Errorf("within the grace: %+v", r)
	}
	r = tr.Observe(at(60*time.Second), 0, v4(10, mismatches(EndpointsDiffer, "web")...))
	want := DriftSeries{Key: key("web"), State: EndpointsDiffer, Since: at(0), Age: 60 * time.Second}
	if len(r.Series) != 1 || r.Series[0] != want {
		t.Errorf("series %+v, want %+v (a state change keeps its start)", r.Series, want)
	}
	if got := family(r, IPv4); got.ServicePorts != [4]int{9, 0, 0, 1} || got.Oldest != 60*time.Second {
		t.Errorf("counted: %+v", got)
	}
	if r.Pending != 0 || r.NextRelist != 30*time.Second {
		t.Errorf("counted mismatches re-list at the normal pace: pending %d, next %v", r.Pending, r.NextRelist)
	}
}

// TestDriftDurations: each mismatch that clears is recorded, counted or
// not, from the first listing that showed it to the first that did not.
func TestDriftDurations(t *testing.T) {
	tr := newTracker(t, nil)
	tr.Observe(at(0), 0, v4(10, mismatches(Missing, "a", "b")...))
	tr.Observe(at(5*time.Second), 0, v4(10, mismatches(Missing, "b")...)) // a cleared after 5 s
	tr.Observe(at(90*time.Second), 0, v4(10, mismatches(Missing, "b")...))
	r := tr.Observe(at(400*time.Second), 0, v4(10)) // b cleared after 400 s
	h := r.Durations
	if h.Count != 2 || h.Sum != 405 {
		t.Errorf("count %d sum %v, want 2 and 405", h.Count, h.Sum)
	}
	// Buckets 5 10 30 60 120 300 600 1800 3600, cumulative.
	want := []uint64{1, 1, 1, 1, 1, 1, 2, 2, 2}
	if fmt.Sprint(h.Cumulative) != fmt.Sprint(want) {
		t.Errorf("cumulative %v, want %v", h.Cumulative, want)
	}
	if got := family(r, IPv4); got.ServicePorts != [4]int{10, 0, 0, 0} || got.Oldest != 0 {
		t.Errorf("after clearing: %+v", got)
	}
	// The report is a copy: later observations do not change it.
	tr.Observe(at(401*time.Second), 0, v4(10, mismatches(Stale, "c")...))
	tr.Observe(at(402*time.Second), 0, v4(10))
	if h.Count != 2 || h.Cumulative[0] != 1 {
		t.Errorf("an earlier report changed: %+v", h)
	}
}

// TestDriftSeriesCap: at most MaxSeries series, the oldest first; the rest
// are counted as dropped. Cap 0 gives no series.
func TestDriftSeriesCap(t *testing.T) {
	for _, tc := range []struct {
		cap       int
		want      []string
		dropped   int
		wantStale int
	}{
		{2, []string{"old", "new-a"}, 3, 2},
		{50, []string{"old", "new-a", "new-b", "older-b", "older-c"}, 0, 2},
		{0, nil, 5, 2},
	} {
		t.Run(fmt.Sprint("cap ", tc.cap), func(t *testing.T) {
			tr := newTracker(t, func(c *DriftConfig) { c.MaxSeries, c.Grace = tc.cap, 0 })
			tr.Observe(at(0), 0, v4(100, mismatches(Missing, "old")...))
			tr.Observe(at(time.Second), 0, v4(100, append(mismatches(Missing, "old", "older-c", "older-b"), mismatches(Stale, "new-b", "new-a")...)...))
			r := tr.Observe(at(2*time.Second), 0, v4(100, append(mismatches(Missing, "old", "older-c", "older-b"), mismatches(Stale, "new-b", "new-a")...)...))
			var got []string
			for _, s := range r.Series {
				got = append(got, s.Key.Service)
			}
			// "old" started first; the others together, so by key.
			if fmt.Sprint(got) != fmt.Sprint(tc.want) || r.SeriesDropped != tc.dropped {
				t.Errorf("series %v dropped %d, want %v and %d", got, r.SeriesDropped, tc.want, tc.dropped)
			}
			// The per-family counts do not depend on the cap.
			if fd := family(r, IPv4); fd.ServicePorts != [4]int{95, 3, tc.wantStale, 0} {
				t.Errorf("ports %v", fd.ServicePorts)
			}
		})
	}
}

// TestDriftFamilyWithoutListing: a family missing from an observation (its
// listing failed) keeps its mismatches; the other family clears.
func TestDriftFamilyWithoutListing(t *testing.T) {
	tr := newTracker(t, func(c *DriftConfig) { c.Grace = 0 })
	v6 := Comparison{Family: IPv6, ServicePorts: 5, Mismatches: []Mismatch{{Key: DriftKey{Service: "web"}, State: Missing}}}
	tr.Observe(at(0), 0, v4(10, mismatches(Missing, "web")...), v6)
	r := tr.Observe(at(time.Minute), 0, v4(10))
	if fd := family(r, IPv6); fd.ServicePorts != [4]int{4, 1, 0, 0} || fd.Oldest != time.Minute {
		t.Errorf("ipv6 without a listing: %+v", fd)
	}
	if fd := family(r, IPv4); fd.ServicePorts != [4]int{10, 0, 0, 0} {
		t.Errorf("ipv4: %+v", fd)
	}
	if r.Durations.Count != 1 {
		t.Errorf("%d durations, want the ipv4 one", r.Durations.Count)
	}
}

// TestDriftClockStepsBack: a listing dated before the mismatch began gives
// age 0, never a negative age or duration.
func TestDriftClockStepsBack(t *testing.T) {
	tr := newTracker(t, func(c *DriftConfig) { c.Grace = 0 })
	tr.Observe(at(time.Minute), 0, v4(1, mismatches(Missing, "web")...))
	r := tr.Observe(at(0), 0, v4(1, mismatches(Missing, "web")...))
	if len(r.Series) != 1 || r.Series[0].Age != 0 || family(r, IPv4).Oldest != 0 {
		t.Errorf("series %+v", r.Series)
	}
	r = tr.Observe(at(0), 0, v4(1))
	if r.Durations.Sum != 0 || r.Durations.Cumulative[0] != 1 {
		t.Errorf("durations %+v", r.Durations)
	}
}

// TestDriftManyMismatches: 10,000 mismatched ports (every Service of a
// cluster whose kube-proxy is down) keep the output at the cap.
func TestDriftManyMismatches(t *testing.T) {
	tr := newTracker(t, func(c *DriftConfig) { c.Grace = 0 })
	var ms []Mismatch
	for i := range 10000 {
		ms = append(ms, Mismatch{Key: key(fmt.Sprintf("svc-%05d", i)), State: Missing})
	}
	r := tr.Observe(at(0), 0, v4(10000, ms...))
	if len(r.Series) != 50 || r.SeriesDropped != 9950 || family(r, IPv4).ServicePorts != [4]int{0, 10000, 0, 0} {
		t.Errorf("%d series, %d dropped, ports %v", len(r.Series), r.SeriesDropped, family(r, IPv4).ServicePorts)
	}
	r = tr.Observe(at(time.Second), 0, v4(10000))
	if r.Durations.Count != 10000 || len(r.Series) != 0 {
		t.Errorf("after recovery: %d durations, %d series", r.Durations.Count, len(r.Series))
	}
}
