package kubeproxy

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// DriftState is the state of one service port of one family on this node.
type DriftState uint8

// The states, in label order.
const (
	// InSync: what the node programmed is what the API asks for.
	InSync DriftState = iota
	// Missing: the API has the service port, the node has no rule for it.
	Missing
	// Stale: the node has rules for a service port the API no longer has.
	Stale
	// EndpointsDiffer: the node programmed the service port with other
	// endpoints (or another verdict) than the API asks for.
	EndpointsDiffer
)

var driftStateNames = [...]string{InSync: "in_sync", Missing: "missing", Stale: "stale", EndpointsDiffer: "endpoints"}

// DriftStates lists every state, in label order.
var DriftStates = []DriftState{InSync, Missing, Stale, EndpointsDiffer}

// String is the state's label value: in_sync, missing, stale, endpoints.
func (s DriftState) String() string {
	if int(s) < len(driftStateNames) {
		return driftStateNames[s]
	}
	return "unknown"
}

// DriftKey identifies a service port of one family by the labels of its
// series. Port is the port's name, or its number when unnamed; values not
// known (a stale rule without a comment) are empty.
type DriftKey struct {
	Family                   IPFamily
	Namespace, Service, Port string
}

func compareKeys(a, b DriftKey) int {
	return cmp.Or(cmp.Compare(a.Family, b.Family), cmp.Compare(a.Namespace, b.Namespace),
		cmp.Compare(a.Service, b.Service), cmp.Compare(a.Port, b.Port))
}

// Mismatch is a service port whose programmed state is not in sync.
type Mismatch struct {
	Key   DriftKey
	State DriftState
}

// Comparison is one family's listing compared with the expectation.
type Comparison struct {
	Family IPFamily
	// ServicePorts counts the service ports compared: every expected one
	// and every stale one found.
	ServicePorts int
	// Mismatches are the service ports not in sync (state not InSync).
	Mismatches []Mismatch
}

// DefaultDriftBuckets are the upper bounds (seconds) of the drift duration
// histogram.
var DefaultDriftBuckets = []float64{5, 10, 30, 60, 120, 300, 600, 1800, 3600}

// DriftConfig configures a DriftTracker. Start from DefaultDriftConfig.
type DriftConfig struct {
	// RefreshInterval is how often the rules are listed and compared when
	// nothing is pending.
	RefreshInterval time.Duration
	// Grace is how long a mismatch must last before it counts (normal
	// propagation: kube-proxy syncs within about a second of a change, the
	// listing may run in between). 0 counts a mismatch at once.
	Grace time.Duration
	// MaxSeries caps the per-service-port series (the oldest mismatches
	// first); the rest are counted in DriftReport.SeriesDropped. 0 turns
	// the per-service-port series off.
	MaxSeries int
	// FastRelistInterval is the shortest time between two listings while a
	// mismatch is pending (seen but within its grace), so that it clears or
	// counts soon. It is also never shorter than four times the last
	// listing's duration, so a slow listing takes at most a quarter of the
	// time.
	FastRelistInterval time.Duration
	// Buckets are the histogram's upper bounds in seconds, increasing.
	Buckets []float64
}

// DefaultDriftConfig is the configuration the flags default to: a grace of
// two refresh intervals, 50 series, re-listing every 5 s (or every refresh
// interval, if shorter) while a mismatch is pending.
func DefaultDriftConfig(refresh time.Duration) DriftConfig {
	return DriftConfig{
		RefreshInterval:    refresh,
		Grace:              2 * refresh,
		MaxSeries:          50,
		FastRelistInterval: min(refresh, 5*time.Second),
		Buckets:            DefaultDriftBuckets,
	}
}

func (c DriftConfig) validate() error {
	var errs []error
	if c.RefreshInterval <= 0 {
		errs = append(errs, fmt.Errorf("refresh interval must be positive, got %v", c.RefreshInterval))
	}
	if c.Grace < 0 {
		errs = append(errs, fmt.Errorf("grace must not be negative, got %v (0 counts a mismatch at once)", c.Grace))
	}
	if c.MaxSeries < 0 {
		errs = append(errs, fmt.Errorf("max series must not be negative, got %d (0 turns the per-service-port series off)", c.MaxSeries))
	}
	if c.FastRelistInterval <= 0 || (c.RefreshInterval > 0 && c.FastRelistInterval > c.RefreshInterval) {
		errs = append(errs, fmt.Errorf("fast re-list interval must be positive and at most the refresh interval %v, got %v", c.RefreshInterval, c.FastRelistInterval))
	}
	if len(c.Buckets) == 0 {
		errs = append(errs, errors.New("no histogram buckets"))
	}
	for i, b := range c.Buckets {
		if b <= 0 || math.IsNaN(b) || math.IsInf(b, 0) || (i > 0 && b <= c.Buckets[i-1]) {
			errs = append(errs, fmt.Errorf("histogram buckets must be positive, finite and increasing, got %v", c.Buckets))
			break
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kube-proxy drift: %w", err)
	}
	return nil
}

// DriftTracker turns successive comparisons into drift states: a mismatch
// counts once it has lasted the grace, the tracker remembers when each
// started and records how long each lasted when it clears. It is safe for
// concurrent use, but Observe is meant to be called by one refresher.
//
// Its memory is one entry per service port currently mismatched.
type DriftTracker struct {
	cfg DriftConfig

	mu       sync.Mutex
	open     map[DriftKey]*openMismatch
	families map[IPFamily]int // service ports compared, by family
	hist     DriftHistogram
}

type openMismatch struct {
	state DriftState
	since time.Time
}

// NewDriftTracker validates cfg and returns a tracker.
func NewDriftTracker(cfg DriftConfig) (*DriftTracker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.Buckets = slices.Clone(cfg.Buckets)
	return &DriftTracker{
		cfg:      cfg,
		open:     map[DriftKey]*openMismatch{},
		families: map[IPFamily]int{},
		hist:     DriftHistogram{UpperBounds: cfg.Buckets, Cumulative: make([]uint64, len(cfg.Buckets))},
	}, nil
}

// DriftReport is the tracker's state after an Observe.
type DriftReport struct {
	// Families holds, for every family compared so far, the number of
	// service ports per state (indexed by DriftState) and the age of its
	// oldest counted mismatch. A mismatch within its grace counts as
	// InSync.
	Families []FamilyDrift
	// Series are the counted mismatches, oldest first (then by key), at
	// most MaxSeries of them; SeriesDropped counts the rest. Counted holds
	// them all (Series is its start), for a one-shot report.
	Series        []DriftSeries
	SeriesDropped int
	Counted       []DriftSeries
	// Pending counts the mismatches still within their grace.
	Pending int
	// Durations is how long each mismatch that cleared had lasted (counted
	// or not), measured from the first listing that showed it to the first
	// that did not: its resolution is the time between listings.
	Durations DriftHistogram
	// NextRelist is when to list the rules again: sooner than the refresh
	// interval while a mismatch is pending.
	NextRelist time.Duration
}

// FamilyDrift is one family's summary.
type FamilyDrift struct {
	Family       IPFamily
	ServicePorts [4]int // by DriftState
	// Oldest is how long the oldest counted mismatch has lasted (0 when
	// none).
	Oldest time.Duration
}

// DriftSeries is one counted mismatch.
type DriftSeries struct {
	Key   DriftKey
	State DriftState
	Since time.Time
	Age   time.Duration
}

// DriftHistogram is a cumulative histogram: Cumulative[i] counts the
// observations <= UpperBounds[i] (seconds); Count and Sum cover all,
// including those above the last bound.
type DriftHistogram struct {
	UpperBounds []float64
	Cumulative  []uint64
	Count       uint64
	Sum         float64
}

func (h *DriftHistogram) observe(d time.Duration) {
	v := max(d.Seconds(), 0)
	for i, ub := range h.UpperBounds {
		if v <= ub {
			h.Cumulative[i]++
		}
	}
	h.Count++
	h.Sum += v
}

// Observe records the comparisons of one listing made at time at, whose
// listing took cost, and returns the resulting state. A family absent from
// cmps keeps its state (its listing failed: nothing is known to have
// cleared).
func (t *DriftTracker) Observe(at time.Time, cost time.Duration, cmps ...Comparison) DriftReport {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range cmps {
		t.families[c.Family] = c.ServicePorts
		seen := make(map[DriftKey]struct{}, len(c.Mismatches))
		for _, m := range c.Mismatches {
			m.Key.Family = c.Family
			seen[m.Key] = struct{}{}
			if o := t.open[m.Key]; o != nil {
				o.state = m.State // the same mismatch, maybe in another state
				continue
			}
			t.open[m.Key] = &openMismatch{state: m.State, since: at}
		}
		for k, o := range t.open {
			if k.Family != c.Family {
				continue
			}
			if _, still := seen[k]; !still {
				t.hist.observe(at.Sub(o.since))
				delete(t.open, k)
			}
		}
	}
	return t.reportLocked(at, cost)
}

// Report returns the state as of time at without a new comparison.
func (t *DriftTracker) Report(at time.Time) DriftReport {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.reportLocked(at, 0)
}

func (t *DriftTracker) reportLocked(at time.Time, cost time.Duration) DriftReport {
	r := DriftReport{
		Durations: DriftHistogram{
			UpperBounds: t.hist.UpperBounds,
			Cumulative:  slices.Clone(t.hist.Cumulative),
			Count:       t.hist.Count,
			Sum:         t.hist.Sum,
		},
	}
	fams := make(map[IPFamily]*FamilyDrift, len(t.families))
	for f := range t.families {
		r.Families = append(r.Families, FamilyDrift{Family: f})
	}
	slices.SortFunc(r.Families, func(a, b FamilyDrift) int { return cmp.Compare(a.Family, b.Family) })
	for i := range r.Families {
		fams[r.Families[i].Family] = &r.Families[i]
	}
	var counted []DriftSeries
	for k, o := range t.open {
		age := max(at.Sub(o.since), 0)
		if age < t.cfg.Grace {
			r.Pending++
			continue
		}
		counted = append(counted, DriftSeries{Key: k, State: o.state, Since: o.since, Age: age})
		if fd := fams[k.Family]; fd != nil {
			fd.ServicePorts[o.state]++
			fd.Oldest = max(fd.Oldest, age)
		}
	}
	for i := range r.Families {
		fd := &r.Families[i]
		mismatched := fd.ServicePorts[Missing] + fd.ServicePorts[Stale] + fd.ServicePorts[EndpointsDiffer]
		fd.ServicePorts[InSync] = max(t.families[fd.Family]-mismatched, 0)
	}
	slices.SortFunc(counted, func(a, b DriftSeries) int {
		return cmp.Or(a.Since.Compare(b.Since), compareKeys(a.Key, b.Key))
	})
	n := min(len(counted), t.cfg.MaxSeries)
	r.Series, r.SeriesDropped, r.Counted = counted[:n:n], len(counted)-n, counted
	r.NextRelist = t.cfg.RefreshInterval
	if r.Pending > 0 {
		r.NextRelist = min(max(t.cfg.FastRelistInterval, 4*cost), t.cfg.RefreshInterval)
	}
	return r
}

// staleSet adds stale service ports to a comparison once each: a key that
// is already a mismatch is left as it is, and one that is an expected
// service port's (a leftover of a port that changed, such as an old node
// port) does not count as another service port.
type staleSet struct {
	c          *Comparison
	expected   map[DriftKey]bool
	mismatched map[DriftKey]bool
}

func newStaleSet(c *Comparison, ports []ExpectedPort) *staleSet {
	s := &staleSet{c: c, expected: make(map[DriftKey]bool, len(ports)), mismatched: map[DriftKey]bool{}}
	for i := range ports {
		s.expected[ports[i].driftKey()] = true
	}
	for _, m := range c.Mismatches {
		s.mismatched[m.Key] = true
	}
	return s
}

func (s *staleSet) add(k DriftKey) {
	if s.mismatched[k] {
		return
	}
	s.mismatched[k] = true
	if !s.expected[k] {
		s.c.ServicePorts++
	}
	s.c.Mismatches = append(s.c.Mismatches, Mismatch{Key: k, State: Stale})
}
