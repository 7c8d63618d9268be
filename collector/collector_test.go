package collector

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// fakeCollector is a Collector whose behaviour a test chooses.
type fakeCollector func(ctx context.Context, ch chan<- prometheus.Metric) error

func (f fakeCollector) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	return f(ctx, ch)
}

var fakeDesc = prometheus.NewDesc("netinspect_fake_value", "A value from a fake collector.", nil, nil)

func emits(v float64) fakeCollector {
	return func(_ context.Context, ch chan<- prometheus.Metric) error {
		ch <- prometheus.MustNewConstMetric(fakeDesc, prometheus.GaugeValue, v)
		return nil
	}
}

func TestSetReportsSuccessPerCollector(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	set := NewSet(zap.New(core), map[string]Collector{
		"good": emits(42),
		"absent": fakeCollector(func(context.Context, chan<- prometheus.Metric) error {
			return errors.Join(errors.New("module not loaded"), ErrNoData)
		}),
		"broken": fakeCollector(func(context.Context, chan<- prometheus.Metric) error {
			return errors.New("netlink said no")
		}),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	want := `
# HELP netinspect_fake_value A value from a fake collector.
# TYPE netinspect_fake_value gauge
netinspect_fake_value 42
# HELP netinspect_scrape_collector_success Whether the collector succeeded in this scrape (1) or failed, timed out or found its source absent (0).
# TYPE netinspect_scrape_collector_success gauge
netinspect_scrape_collector_success{collector="absent"} 0
netinspect_scrape_collector_success{collector="broken"} 0
netinspect_scrape_collector_success{collector="good"} 1
`
	for range 2 { // twice: the absent source is logged once, not per scrape
		if err := testutil.CollectAndCompare(set.Scrape(ctx), strings.NewReader(want),
			"netinspect_fake_value", "netinspect_scrape_collector_success"); err != nil {
			t.Fatal(err)
		}
	}
	if n := logs.FilterMessage("collector found no data").Len(); n != 1 {
		t.Errorf("absent source logged %d times, want once", n)
	}
	if n := logs.FilterMessage("collector failed").FilterField(zap.String("collector", "broken")).Len(); n != 2 {
		t.Errorf("failure logged %d times, want once per scrape (2)", n)
	}
	if got := testutil.CollectAndCount(set.Scrape(ctx), "netinspect_scrape_collector_duration_seconds"); got != 3 {
		t.Errorf("got %d duration series, want 3", got)
	}
}

func TestSetAbandonsCollectorPastDeadline(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 4)
	set := NewSet(zap.NewNop(), map[string]Collector{
		"fast": emits(1),
		"stuck": fakeCollector(func(_ context.Context, ch chan<- prometheus.Metric) error {
			started <- struct{}{}
			<-release // ignores its context, as a buggy collector might
			ch <- prometheus.MustNewConstMetric(fakeDesc, prometheus.GaugeValue, 99)
			return nil
		}),
	})
	defer close(release)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	want := `
# HELP netinspect_scrape_collector_success Whether the collector succeeded in this scrape (1) or failed, timed out or found its source absent (0).
# TYPE netinspect_scrape_collector_success gauge
netinspect_scrape_collector_success{collector="fast"} 1
netinspect_scrape_collector_success{collector="stuck"} 0
`
	if err := testutil.CollectAndCompare(set.Scrape(ctx), strings.NewReader(want), "netinspect_scrape_collector_success"); err != nil {
		t.Fatal(err)
	}
	// The stuck update is still running: the next scrape must not start a
	// second one on top of it.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if err := testutil.CollectAndCompare(set.Scrape(ctx2), strings.NewReader(want), "netinspect_scrape_collector_success"); err != nil {
		t.Fatal(err)
	}
	if n := len(started); n != 1 {
		t.Fatalf("stuck collector started %d times, want 1", n)
	}
}

func TestSetSurvivesPanickingCollector(t *testing.T) {
	set := NewSet(zap.NewNop(), map[string]Collector{
		"panics": fakeCollector(func(context.Context, chan<- prometheus.Metric) error { panic("boom") }),
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	want := `
# HELP netinspect_scrape_collector_success Whether the collector succeeded in this scrape (1) or failed, timed out or found its source absent (0).
# TYPE netinspect_scrape_collector_success gauge
netinspect_scrape_collector_success{collector="panics"} 0
`
	if err := testutil.CollectAndCompare(set.Scrape(ctx), strings.NewReader(want), "netinspect_scrape_collector_success"); err != nil {
		t.Fatal(err)
	}
}

func TestSetSharesUpdateAmongConcurrentScrapes(t *testing.T) {
	release := make(chan struct{})
	var started atomic.Int32
	set := NewSet(zap.NewNop(), map[string]Collector{
		"slow": fakeCollector(func(_ context.Context, ch chan<- prometheus.Metric) error {
			started.Add(1)
			<-release
			ch <- prometheus.MustNewConstMetric(fakeDesc, prometheus.GaugeValue, 7)
			return nil
		}),
	})
	want := `
# HELP netinspect_scrape_collector_success Whether the collector succeeded in this scrape (1) or failed, timed out or found its source absent (0).
# TYPE netinspect_scrape_collector_success gauge
netinspect_scrape_collector_success{collector="slow"} 1
`
	const scrapes = 5
	errs := make(chan error, scrapes)
	for range scrapes {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			errs <- testutil.CollectAndCompare(set.Scrape(ctx), strings.NewReader(want), "netinspect_scrape_collector_success")
		}()
	}
	// Let every scrape arrive while the first Update is still running.
	deadline := time.Now().Add(5 * time.Second)
	for started.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	close(release)
	for range scrapes {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n := started.Load(); n != 1 {
		t.Errorf("%d concurrent scrapes started %d Updates, want 1 shared", scrapes, n)
	}
	// Once it returned, the next scrape reads the source afresh.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := testutil.CollectAndCompare(set.Scrape(ctx), strings.NewReader(want), "netinspect_scrape_collector_success"); err != nil {
		t.Fatal(err)
	}
	if n := started.Load(); n != 2 {
		t.Errorf("Updates after a later scrape: %d, want 2", n)
	}
}
