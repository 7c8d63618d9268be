package collector

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/netinspect/netinspect/collector/rules"
)

// ruleSource is what the iptables and nftables collectors share: a
// background rules.Refresher whose latest snapshot scrapes serve, with the
// snapshot's age and cost as metrics. T is the collector's immutable state,
// holding the const metrics each listing built.
type ruleSource[T interface{ constMetrics() []prometheus.Metric }] struct {
	name      string
	refresher *rules.Refresher[T]
	startOnce sync.Once
	stop      context.CancelFunc

	lastRefresh, refreshDuration *prometheus.Desc
}

// newRuleSource lists every interval (default 30s), each listing bounded by
// timeout (default 1m).
func newRuleSource[T interface{ constMetrics() []prometheus.Metric }](name string, interval, timeout time.Duration, list func(context.Context) (T, error)) *ruleSource[T] {
	if interval <= 0 {
		interval = 30 * time.Second
	}
	if timeout <= 0 {
		timeout = time.Minute
	}
	return &ruleSource[T]{
		name:      name,
		refresher: rules.NewRefresher(interval, timeout, list),
		lastRefresh: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "rules", "last_refresh_timestamp_seconds"),
			"When the rules of the source were last listed successfully (Unix time).",
			[]string{"source"}, nil),
		refreshDuration: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "rules", "refresh_duration_seconds"),
			"How long the last successful listing of the source's rules took.",
			[]string{"source"}, nil),
	}
}

// Start implements Starter: it starts the background listing, which stops
// when ctx is done. Later calls do nothing.
func (r *ruleSource[T]) Start(ctx context.Context) error {
	r.startOnce.Do(func() {
		ctx, r.stop = context.WithCancel(ctx)
		r.refresher.Start(ctx)
	})
	return nil
}

// Close stops the background listing and waits for it to end.
func (r *ruleSource[T]) Close() {
	r.startOnce.Do(func() {})
	if r.stop != nil {
		r.stop()
		<-r.refresher.Done()
	}
}

// serve sends the latest snapshot's metrics and returns its state (the zero
// T before any success) with the error a scrape reports: ErrNotReady before
// the first listing, the latest listing's error when it failed (the last
// good state is still served).
func (r *ruleSource[T]) serve(ch chan<- prometheus.Metric) (T, error) {
	var zero T
	// Without a Start hook from the caller, the first scrape starts the
	// refresher; it then runs until Close.
	_ = r.Start(context.Background())
	r.refresher.Kick()
	s := r.refresher.Snapshot()
	if s == nil {
		return zero, fmt.Errorf("%s: %w: %w", r.name, ErrNotReady, ErrNoData)
	}
	if !s.Time.IsZero() {
		ch <- prometheus.MustNewConstMetric(r.lastRefresh, prometheus.GaugeValue, float64(s.Time.UnixNano())/1e9, r.name)
		ch <- prometheus.MustNewConstMetric(r.refreshDuration, prometheus.GaugeValue, s.Duration.Seconds(), r.name)
		for _, m := range s.Value.constMetrics() {
			ch <- m
		}
	}
	if s.Err != nil {
		if errors.Is(s.Err, ErrNoData) {
			return s.Value, s.Err
		}
		return s.Value, fmt.Errorf("latest %s listing failed (serving the one of %s): %w", r.name, s.Time.Format(time.RFC3339), s.Err)
	}
	return s.Value, nil
}
