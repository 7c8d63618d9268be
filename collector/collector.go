// Package collector holds netinspect's collectors and the adapter that runs
// them for Prometheus.
//
// Each collector implements Collector. The adapter (Set) runs the enabled
// collectors in parallel on every scrape, bounded by the scrape's deadline, and
// reports netinspect_scrape_collector_success and _duration_seconds for each.
//
// A collector only joins what the kernel readers under source/ return to the
// Kubernetes index and emits it: it makes no syscalls and imports no netlink
// library (layout_test.go at the top of the module keeps it so). Collectors
// that read a slow source serve it from a snapshot that one background
// goroutine refreshes (snapshot.go).
package collector

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/source"
)

// Namespace is the prefix of every metric netinspect exports.
const Namespace = "netinspect"

// ErrNoData is returned by a collector whose source is absent on this node
// (kernel feature not present, module not loaded). The scrape succeeds, the
// collector reports success 0, and the reason is logged once at debug level.
var ErrNoData = errors.New("collector returned no data")

// ErrNotReady is wrapped, together with ErrNoData, by a collector that works
// in the background (a Starter) before its first snapshot exists. To a scrape
// it is ErrNoData; a one-shot reader (netinspect inspect) waits it out,
// whereas plain ErrNoData means the source is absent.
var ErrNotReady = errors.New("first background pass not finished")

// noData turns an error of a reader whose kernel feature is absent
// (source.ErrAbsent) into one that also wraps ErrNoData, so the reason is
// reported as no data rather than as a failure.
func noData(err error) error {
	if err != nil && errors.Is(err, source.ErrAbsent) && !errors.Is(err, ErrNoData) {
		return fmt.Errorf("%w: %w", err, ErrNoData)
	}
	return err
}

// Collector reads one source of node state and emits metrics for it.
type Collector interface {
	// Update sends the collector's metrics to ch. It must return promptly
	// once ctx is done.
	Update(ctx context.Context, ch chan<- prometheus.Metric) error
}

// Starter is implemented by collectors that work in the background between
// scrapes (refreshers of slow sources, passes over the conntrack table). The
// binary calls Start once before serving; the background work stops when ctx
// is done. Update then serves the latest snapshot.
type Starter interface {
	Start(ctx context.Context) error
}

// Set runs a fixed set of named collectors. It is built once at start-up and
// bound to a scrape's deadline with Scrape.
type Set struct {
	logger     *zap.Logger
	collectors map[string]*entry
	names      []string

	success  *prometheus.Desc
	duration *prometheus.Desc
}

type entry struct {
	c Collector

	mu sync.Mutex
	// inflight is the Update under way, if any. A scrape that finds one
	// waits for its result instead of starting a second Update: concurrent
	// scrapes (two Prometheus replicas, a storm) share one reading of the
	// source, and a collector that outlives its scrape's deadline is not
	// started again on top of itself.
	inflight   *call
	lastNoData string
}

// call is one Update, shared by every scrape that arrives while it runs.
type call struct {
	done chan struct{}
	r    result
}

// NewSet returns a Set running the given collectors, keyed by name.
func NewSet(logger *zap.Logger, collectors map[string]Collector) *Set {
	s := &Set{
		logger:     Deps{Logger: logger}.logger(),
		collectors: make(map[string]*entry, len(collectors)),
		success: prometheus.NewDesc(
			prometheus.BuildFQName(Namespace, "scrape", "collector_success"),
			"Whether the collector succeeded in this scrape (1) or failed, timed out or found its source absent (0).",
			[]string{"collector"}, nil),
		duration: prometheus.NewDesc(
			prometheus.BuildFQName(Namespace, "scrape", "collector_duration_seconds"),
			"How long the collector took in this scrape.",
			[]string{"collector"}, nil),
	}
	for name, c := range collectors {
		s.collectors[name] = &entry{c: c}
		s.names = append(s.names, name)
	}
	sort.Strings(s.names)
	return s
}

// Names returns the names of the collectors in the set, sorted.
func (s *Set) Names() []string { return append([]string(nil), s.names...) }

// Scrape returns a prometheus.Collector that runs every collector of the set
// once per Collect, each bounded by ctx.
func (s *Set) Scrape(ctx context.Context) prometheus.Collector {
	return scrape{set: s, ctx: ctx}
}

type scrape struct {
	set *Set
	ctx context.Context
}

// Describe sends nothing: the metrics depend on the node, so the collector is
// unchecked.
func (scrape) Describe(chan<- *prometheus.Desc) {}

func (sc scrape) Collect(ch chan<- prometheus.Metric) {
	var wg sync.WaitGroup
	for _, name := range sc.set.names {
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			sc.set.run(sc.ctx, name, ch)
		}(name)
	}
	wg.Wait()
}

// result is what one Update produced, handed over once it finishes.
type result struct {
	metrics []prometheus.Metric
	err     error
}

func (s *Set) run(ctx context.Context, name string, ch chan<- prometheus.Metric) {
	e := s.collectors[name]
	start := time.Now()
	metrics, err := s.update(ctx, e)
	elapsed := time.Since(start).Seconds()

	success := 1.0
	switch {
	case err == nil:
		e.clearNoData()
	case errors.Is(err, ErrNoData):
		success = 0
		if e.noteNoData(err.Error()) {
			s.logger.Debug("collector found no data", zap.String("collector", name), zap.Error(err))
		}
	default:
		success = 0
		s.logger.Error("collector failed", zap.String("collector", name),
			zap.Float64("duration_seconds", elapsed), zap.Error(err))
	}
	for _, m := range metrics {
		ch <- m
	}
	ch <- prometheus.MustNewConstMetric(s.duration, prometheus.GaugeValue, elapsed, name)
	ch <- prometheus.MustNewConstMetric(s.success, prometheus.GaugeValue, success, name)
}

// update returns the metrics of the collector's Update under way, or of a
// new one started for this scrape. The Update runs in its own goroutine,
// buffering its metrics, so that a collector that ignores its deadline cannot
// hold the scrape or write to a channel the registry has already closed. The
// metrics are const metrics, so every scrape sharing a call may send them.
func (s *Set) update(ctx context.Context, e *entry) ([]prometheus.Metric, error) {
	e.mu.Lock()
	c := e.inflight
	if c == nil {
		c = &call{done: make(chan struct{})}
		e.inflight = c
		go e.do(ctx, c)
	}
	e.mu.Unlock()
	select {
	case <-c.done:
		return c.r.metrics, c.r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("deadline of the scrape reached: %w", ctx.Err())
	}
}

// do runs one Update under the deadline of the scrape that started it.
func (e *entry) do(ctx context.Context, c *call) {
	buf := make(chan prometheus.Metric, 64)
	collected := make(chan []prometheus.Metric, 1)
	go func() {
		var ms []prometheus.Metric
		for m := range buf {
			ms = append(ms, m)
		}
		collected <- ms
	}()
	err := safeUpdate(ctx, e.c, buf)
	close(buf)
	c.r = result{metrics: <-collected, err: err}
	// Forget the call before waking its waiters, so the next scrape, which
	// may start as soon as this one returns, starts a fresh Update.
	e.mu.Lock()
	e.inflight = nil
	e.mu.Unlock()
	close(c.done)
}

// safeUpdate turns a panic in a collector into an error, so one broken
// collector cannot take the exporter down.
func safeUpdate(ctx context.Context, c Collector, ch chan<- prometheus.Metric) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("collector panicked: %v", r)
		}
	}()
	return c.Update(ctx, ch)
}

// noteNoData records the reason a source is absent and reports whether it
// changed since the last scrape, so the reason is logged once, not per scrape.
func (e *entry) noteNoData(reason string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.lastNoData == reason {
		return false
	}
	e.lastNoData = reason
	return true
}

func (e *entry) clearNoData() {
	e.mu.Lock()
	e.lastNoData = ""
	e.mu.Unlock()
}
