package collector

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRefresherSnapshots(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	r := newRefresher("test", time.Hour, time.Minute, func(ctx context.Context) (int, error) {
		n := calls.Add(1)
		<-release
		if n == 2 {
			return 0, errors.New("listing failed")
		}
		return int(n), nil
	})
	if r.Snapshot() != nil {
		t.Fatal("snapshot before the first listing")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.Start(ctx)
	r.Start(ctx) // second Start does nothing

	release <- struct{}{}
	s := waitSnapshot(t, r, func(s *snapshot[int]) bool { return s.Value == 1 })
	if s.Err != nil || s.Time.IsZero() {
		t.Fatalf("first snapshot %+v", s)
	}
	// Within the interval a kick is ignored; force staleness through now.
	r.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	r.Kick()
	release <- struct{}{}
	s2 := waitSnapshot(t, r, func(s *snapshot[int]) bool { return s.Err != nil })
	if s2.Value != 1 || !s2.Time.Equal(s.Time) {
		t.Fatalf("failed listing lost the previous value: %+v", s2)
	}
	cancel()
	select {
	case <-r.Done():
	case <-time.After(time.Minute):
		t.Fatal("refresher did not stop with its context")
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d listings, want 2", n)
	}
}

// Many readers kicking at once never start overlapping listings.
func TestRefresherNoConcurrentListings(t *testing.T) {
	var running, maxRunning, calls atomic.Int32
	r := newRefresher("test", time.Nanosecond, time.Minute, func(ctx context.Context) (int, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := maxRunning.Load()
			if n <= m || maxRunning.CompareAndSwap(m, n) {
				break
			}
		}
		calls.Add(1)
		time.Sleep(time.Millisecond)
		return 0, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	r.Start(ctx)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				r.Kick()
				_ = r.Snapshot()
			}
		}()
	}
	wg.Wait()
	waitSnapshot(t, r, func(*snapshot[int]) bool { return calls.Load() >= 3 })
	cancel()
	<-r.Done()
	if m := maxRunning.Load(); m != 1 {
		t.Fatalf("%d listings ran at once", m)
	}
}

func TestRefresherTimeout(t *testing.T) {
	r := newRefresher("test", time.Hour, 10*time.Millisecond, func(ctx context.Context) (int, error) {
		<-ctx.Done()
		return 0, ctx.Err()
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.Start(ctx)
	s := waitSnapshot(t, r, func(*snapshot[int]) bool { return true })
	if !errors.Is(s.Err, context.DeadlineExceeded) || !s.Time.IsZero() {
		t.Fatalf("snapshot %+v, want a deadline error and no success time", s)
	}
}

func waitSnapshot[T any](t *testing.T, r *refresher[T], ok func(*snapshot[T]) bool) *snapshot[T] {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if s := r.Snapshot(); s != nil && ok(s) {
			return s
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no matching snapshot within a minute")
	return nil
}

// The snapshot metrics are two series per background source, present once
// the source was read successfully, and still describe that read after a
// failed one.
func TestRefresherEmitsItsAge(t *testing.T) {
	fail := false
	r := newRefresher("unit", time.Hour, time.Minute, func(context.Context) (int, error) {
		if fail {
			return 0, errors.New("read failed")
		}
		return 1, nil
	})
	collect := func() []prometheus.Metric {
		ch := make(chan prometheus.Metric, 10)
		r.emitAge(ch, r.Snapshot())
		close(ch)
		var out []prometheus.Metric
		for m := range ch {
			out = append(out, m)
		}
		return out
	}
	if n := len(collect()); n != 0 {
		t.Fatalf("%d series before any read, want 0", n)
	}
	r.refresh(context.Background())
	first := r.Snapshot()
	want := fmt.Sprintf(`
# HELP netinspect_snapshot_duration_seconds How long the latest successful background read of the source took.
# TYPE netinspect_snapshot_duration_seconds gauge
netinspect_snapshot_duration_seconds{source="unit"} %v
# HELP netinspect_snapshot_last_success_timestamp_seconds When the latest successful background read of the source finished (Unix time); its age is the age of the source's series.
# TYPE netinspect_snapshot_last_success_timestamp_seconds gauge
netinspect_snapshot_last_success_timestamp_seconds{source="unit"} %v
`, first.Duration.Seconds(), unixSeconds(first.Time))
	c := metricsCollector{collect}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	fail = true
	r.refresh(context.Background())
	if r.Snapshot().Err == nil {
		t.Fatal("the failed read left no error")
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Errorf("after a failed read: %v", err)
	}
}

// metricsCollector collects what fn returns.
type metricsCollector struct{ fn func() []prometheus.Metric }

func (metricsCollector) Describe(chan<- *prometheus.Desc) {}

func (c metricsCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.fn() {
		ch <- m
	}
}

// A result that asks for an early second look gets it, sooner than the
// interval; once it stops asking, the interval applies again.
func TestRefresherNextAfter(t *testing.T) {
	var calls atomic.Int32
	r := newRefresher("test", time.Hour, time.Minute, func(ctx context.Context) (int, error) {
		return int(calls.Add(1)), nil
	})
	r.nextAfter(func(n int) time.Duration {
		if n < 3 {
			return 10 * time.Millisecond
		}
		return 0 // nothing pending: the interval
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.Start(ctx)
	waitSnapshot(t, r, func(s *snapshot[int]) bool { return s.Value == 3 })
	time.Sleep(200 * time.Millisecond) // 20 early intervals: none may start a fourth read
	if n := calls.Load(); n != 3 {
		t.Fatalf("%d reads, want 3 (two early ones, then the hour's interval)", n)
	}
}
