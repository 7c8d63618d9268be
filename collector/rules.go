package collector

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/netinspect/netinspect/kubeproxy"
	"github.com/netinspect/netinspect/source/iptables"
)

// What the iptables and nftables collectors share: their listing runs in a
// refresher whose latest snapshot scrapes serve, with the snapshot's age
// and cost under the rules_* names of the contract as well as the uniform
// snapshot_* ones; and kube_proxy_mode_info, which the iptables collector
// reports, or the nftables collector when the iptables one is off.

// The refresh defaults of both rule collectors.
const (
	defaultRulesRefreshInterval = 30 * time.Second
	defaultRulesTimeout         = time.Minute
)

// withRuleRefreshDefaults fills an unset refresh interval and listing
// timeout of a rule collector's config.
func withRuleRefreshDefaults(interval, timeout *time.Duration) {
	if *interval <= 0 {
		*interval = defaultRulesRefreshInterval
	}
	if *timeout <= 0 {
		*timeout = defaultRulesTimeout
	}
}

var (
	rulesLastRefreshDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "rules", "last_refresh_timestamp_seconds"),
		"When the rules of the source were last listed successfully (Unix time).",
		[]string{"source"}, nil)
	rulesRefreshDurationDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "rules", "refresh_duration_seconds"),
		"How long the last successful listing of the source's rules took.",
		[]string{"source"}, nil)
	kubeProxyModeDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "kube_proxy", "mode_info"),
		"The mode kube-proxy runs in on this node, detected from the rules present: iptables, nftables, ipvs, or none.",
		[]string{"mode"}, nil)
)

// ruleState is the immutable result of one listing, holding the const
// metrics it built so a scrape only sends them.
type ruleState interface{ constMetrics() []prometheus.Metric }

// ruleSource serves a rule collector's listings from a refresher.
type ruleSource[T ruleState] struct {
	*refresher[T]
}

func newRuleSource[T ruleState](name string, interval, timeout time.Duration, list func(context.Context) (T, error)) ruleSource[T] {
	return ruleSource[T]{newRefresher(name, interval, timeout, list)}
}

// serve sends the latest snapshot's metrics and returns its state (the zero
// T before any success) with the error a scrape reports: ErrNotReady before
// the first listing, the latest listing's error when it failed (the last
// good state is still served).
func (r ruleSource[T]) serve(ch chan<- prometheus.Metric) (T, error) {
	var zero T
	// Without a Start hook from the caller, the first scrape starts the
	// refresher; it then runs until Close.
	_ = r.Start(context.Background())
	r.Kick()
	s := r.Snapshot()
	if s == nil {
		return zero, fmt.Errorf("%s: %w: %w", r.source, ErrNotReady, ErrNoData)
	}
	if !s.Time.IsZero() {
		ch <- prometheus.MustNewConstMetric(rulesLastRefreshDesc, prometheus.GaugeValue, unixSeconds(s.Time), r.source)
		ch <- prometheus.MustNewConstMetric(rulesRefreshDurationDesc, prometheus.GaugeValue, s.Duration.Seconds(), r.source)
		r.emitAge(ch, s)
		for _, m := range s.Value.constMetrics() {
			ch <- m
		}
	}
	if s.Err != nil {
		if err := noData(s.Err); errors.Is(err, ErrNoData) {
			return s.Value, err
		}
		return s.Value, fmt.Errorf("latest %s listing failed (serving the one of %s): %w", r.source, s.Time.Format(time.RFC3339), s.Err)
	}
	return s.Value, nil
}

// latest is the state of the latest successful listing for a one-shot
// reader, with the error a scrape would report.
func (r ruleSource[T]) latest() (T, error) {
	var zero T
	_ = r.Start(context.Background())
	s := r.Snapshot()
	if s == nil {
		return zero, fmt.Errorf("%s: %w: %w", r.source, ErrNotReady, ErrNoData)
	}
	if s.Err != nil {
		return s.Value, noData(s.Err)
	}
	return s.Value, nil
}

// modeEvidence is what an iptables listing and the presence of kube-proxy's
// nftables table say about kube-proxy's mode.
func modeEvidence(l *iptables.Listing, nftTable bool) kubeproxy.ModeEvidence {
	e := kubeproxy.ModeEvidence{NFTablesTable: nftTable}
	if l == nil {
		return e
	}
	for _, f := range l.Families {
		if t := f.Rules.Table("filter"); t != nil {
			if _, ok := t.Chains[kubeproxy.ChainIPVSFilter]; ok {
				e.IPVSFilterChain = true
			}
		}
	}
	if rs := l.Family("ipv4"); rs != nil {
		if nat := rs.Table("nat"); nat != nil {
			e.IPSetMatches = nat.SetMatches > 0
			_, e.NATServices = nat.Chains[kubeproxy.ChainServices]
		}
	}
	return e
}
