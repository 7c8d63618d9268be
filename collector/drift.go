package collector

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/kubeproxy"
)

// kube-proxy drift: the collector of the mode kube-proxy runs in (iptables,
// nftables or ipvs) compares, on every listing, what kube-proxy programmed
// on this node with what it should have programmed for the Services and
// EndpointSlices of the Kubernetes index (kubeproxy.Expect, mirrored from
// kube-proxy v1.37.2), and a kubeproxy.DriftTracker turns the comparisons
// into the kube_proxy_* series below. The other two collectors see no
// kube-proxy rules of theirs and judge nothing. Without Kubernetes (no
// index), or until the index has synced, nothing is judged and the series
// are absent.

// Service-series modes of the rule collectors (--collector.<name>.service-series).
const (
	// ServiceSeriesDrift, the default: no series per Service port; what a
	// node programmed is reported as drift against the API.
	ServiceSeriesDrift = "drift"
	// ServiceSeriesAll adds the series per Service port (and in IPVS mode
	// per virtual server and backend) that every node has alike.
	ServiceSeriesAll = "all"
)

// ServiceSeriesModes are the values of the service-series flags.
var ServiceSeriesModes = []string{ServiceSeriesDrift, ServiceSeriesAll}

// DriftConfig is how kube-proxy drift is judged: the --kube-proxy.drift.*
// flags, shared by the iptables, nftables and ipvs collectors.
type DriftConfig struct {
	// MaxSeries caps the kube_proxy_drift_service_port_seconds series, the
	// oldest mismatches first; the others count in
	// kube_proxy_drift_series_dropped. 0 exports no series per service
	// port (every counted mismatch is then dropped, the per-node counts
	// stay).
	MaxSeries int
	// Grace is how long a mismatch must last before it counts.
	Grace DriftGrace
}

// DefaultDriftConfig is the drift configuration when no flag says
// otherwise: 50 series, a grace of two refresh intervals.
func DefaultDriftConfig() DriftConfig {
	return DriftConfig{MaxSeries: 50, Grace: DriftGrace{Intervals: 2}}
}

// DriftGrace is a grace period: a duration, or a multiple of the refresh
// interval of the collector that judges ("2x").
type DriftGrace struct {
	Duration time.Duration
	// Intervals, when above 0, makes the grace that many refresh
	// intervals (Duration is then ignored).
	Intervals float64
}

// ParseDriftGrace parses "2x" (refresh intervals) or a duration ("90s");
// a negative value is an error.
func ParseDriftGrace(s string) (DriftGrace, error) {
	if n, ok := strings.CutSuffix(s, "x"); ok {
		v, err := strconv.ParseFloat(n, 64)
		if err != nil || v < 0 || v != v {
			return DriftGrace{}, fmt.Errorf("kube-proxy drift grace %q: want a duration (90s) or a non-negative multiple of the refresh interval (2x)", s)
		}
		if v == 0 {
			return DriftGrace{}, nil
		}
		return DriftGrace{Intervals: v}, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return DriftGrace{}, fmt.Errorf("kube-proxy drift grace %q: want a duration (90s) or a multiple of the refresh interval (2x): %w", s, err)
	}
	if d < 0 {
		return DriftGrace{}, fmt.Errorf("kube-proxy drift grace %q must not be negative (0 counts a mismatch at once)", s)
	}
	return DriftGrace{Duration: d}, nil
}

// String is the grace as ParseDriftGrace reads it.
func (g DriftGrace) String() string {
	if g.Intervals > 0 {
		return strconv.FormatFloat(g.Intervals, 'f', -1, 64) + "x"
	}
	return g.Duration.String()
}

// of is the grace for a collector refreshing every refresh.
func (g DriftGrace) of(refresh time.Duration) time.Duration {
	if g.Intervals > 0 {
		return time.Duration(g.Intervals * float64(refresh))
	}
	return g.Duration
}

var (
	driftServicePortsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "kube_proxy", "service_ports"),
		"Service ports of the family by kube-proxy drift state on this node: in_sync (programmed as the API asks), missing (the API has it, the node has no rule for it), stale (the node has rules for a service port the API no longer has), endpoints (programmed with other endpoints or another verdict); a mismatch counts once it has lasted the grace.",
		[]string{"family", "state"}, nil)
	driftOldestDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "kube_proxy", "drift_oldest_seconds"),
		"How long the oldest counted kube-proxy mismatch of the family has lasted (0 when in sync).",
		[]string{"family"}, nil)
	driftDurationDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "kube_proxy", "drift_duration_seconds"),
		"How long each kube-proxy mismatch lasted until it cleared (counted or not), from the first listing that showed it to the first that did not: an outside view of kube-proxy's network programming latency, with the time between listings as its resolution.",
		nil, nil)
	driftSeriesDesc = identityDesc("kube_proxy", "drift_service_port_seconds",
		"How long a service port has been mismatched past the grace, by state (missing, stale, endpoints); at most --kube-proxy.drift.max-series series, the oldest first.",
		servicePortIdentity, "family", "state")
	driftDroppedDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "kube_proxy", "drift_series_dropped"),
		"Counted kube-proxy mismatches without a kube_proxy_drift_service_port_seconds series (beyond --kube-proxy.drift.max-series).",
		nil, nil)
)

// DriftResult is one listing's drift judgment.
type DriftResult struct {
	kubeproxy.DriftReport
	// Mode is the kube-proxy mode judged (kubeproxy.Mode*).
	Mode string
}

// driftJudge judges drift for one rule collector. judge runs on the
// collector's refresher goroutine only.
type driftJudge struct {
	index   *kube.Index
	tracker *kubeproxy.DriftTracker
	exp     kubeproxy.Expectation // reused by every judgment
}

// newDriftJudge returns the judge of a collector refreshing every refresh,
// or an error for a configuration the tracker rejects (also without an
// index, so that a bad flag fails at start-up either way).
func newDriftJudge(cfg DriftConfig, refresh time.Duration, index *kube.Index) (*driftJudge, error) {
	dc := kubeproxy.DefaultDriftConfig(refresh)
	dc.Grace, dc.MaxSeries = cfg.Grace.of(refresh), cfg.MaxSeries
	if cfg.Grace.Intervals < 0 || cfg.Grace.Intervals != cfg.Grace.Intervals {
		return nil, errors.New("kube-proxy drift: grace must not be negative")
	}
	tr, err := kubeproxy.NewDriftTracker(dc)
	if err != nil {
		return nil, err
	}
	return &driftJudge{index: index, tracker: tr}, nil
}

// judge compares one listing made at start, which took cost, through
// compare, and returns the result with its metrics; nil when drift cannot
// be judged (no index, or not synced yet).
func (j *driftJudge) judge(mode string, start time.Time, cost time.Duration, compare func(e *kubeproxy.Expectation) []kubeproxy.Comparison) (*DriftResult, []prometheus.Metric) {
	if j == nil || !j.index.Synced() {
		return nil, nil
	}
	kubeproxy.ExpectInto(&j.exp, j.index)
	cmps := compare(&j.exp)
	r := &DriftResult{DriftReport: j.tracker.Observe(start, cost, cmps...), Mode: mode}
	return r, r.metrics()
}

// metrics are the kube_proxy_* drift series of r.
func (r *DriftResult) metrics() []prometheus.Metric {
	var out []prometheus.Metric
	for _, fd := range r.Families {
		fam := fd.Family.String()
		for _, s := range kubeproxy.DriftStates {
			out = append(out, prometheus.MustNewConstMetric(driftServicePortsDesc, prometheus.GaugeValue, float64(fd.ServicePorts[s]), fam, s.String()))
		}
		out = append(out, prometheus.MustNewConstMetric(driftOldestDesc, prometheus.GaugeValue, fd.Oldest.Seconds(), fam))
	}
	h := r.Durations
	buckets := make(map[float64]uint64, len(h.UpperBounds))
	for i, ub := range h.UpperBounds {
		buckets[ub] = h.Cumulative[i]
	}
	out = append(out, prometheus.MustNewConstHistogram(driftDurationDesc, h.Count, h.Sum, buckets))
	for _, s := range r.Series {
		out = append(out, prometheus.MustNewConstMetric(driftSeriesDesc, prometheus.GaugeValue, s.Age.Seconds(),
			servicePortValues(kube.ServicePortRef{Namespace: s.Key.Namespace, Service: s.Key.Service, Port: s.Key.Port}, s.Key.Family.String(), s.State.String())...))
	}
	out = append(out, prometheus.MustNewConstMetric(driftDroppedDesc, prometheus.GaugeValue, float64(r.SeriesDropped)))
	return out
}

// nextRelist is when a collector whose latest listing gave r should list
// again (0: at its interval).
func (r *DriftResult) nextRelist() time.Duration {
	if r == nil {
		return 0
	}
	return r.NextRelist
}

// familyOf is the kubeproxy family of a family label value.
func familyOf(name string) (kubeproxy.IPFamily, bool) {
	switch name {
	case "ipv4":
		return kubeproxy.IPv4, true
	case "ipv6":
		return kubeproxy.IPv6, true
	}
	return 0, false
}
