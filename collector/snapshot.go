package collector

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// One snapshot mechanism serves every slow source (rule listings, passes
// over the conntrack table, DNS probe rounds): a refresher reads the source
// in one background goroutine and publishes each result as an immutable
// snapshot; Update sends the latest one and never waits on a read, so a
// scrape costs O(series). Every such source reports its age and cost under
// one naming scheme, netinspect_snapshot_*{source="<collector>"}; the older
// per-collector names (rules_last_refresh_timestamp_seconds, ...) are kept
// for the dashboards and alerts that use them.

var (
	snapshotLastSuccessDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "snapshot", "last_success_timestamp_seconds"),
		"When the latest successful background read of the source finished (Unix time); its age is the age of the source's series.",
		[]string{"source"}, nil)
	snapshotDurationDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "snapshot", "duration_seconds"),
		"How long the latest successful background read of the source took.",
		[]string{"source"}, nil)
)

// snapshot is one read of a slow source. It is never modified after the
// refresher publishes it.
type snapshot[T any] struct {
	// Value is the result of the last successful read.
	Value T
	// Time is when that read finished, Duration how long it took.
	Time     time.Time
	Duration time.Duration
	// Err is the error of the latest read when it failed; Value, Time and
	// Duration then still describe the last success (Time is zero when
	// there was none).
	Err error
	// Started and Attempt are when the latest read, failed or not,
	// started and finished.
	Started, Attempt time.Time
}

// refresher reads a slow source in one background goroutine, at start and
// then every interval (from the start of one read to the start of the
// next; a read that takes longer is followed at once by the next), and
// publishes each result as an immutable snapshot. Readers never wait on a
// read, and reads never overlap, however many readers there are.
type refresher[T any] struct {
	source   string
	interval time.Duration
	read     func(context.Context) (T, error)
	// timeout bounds one read; 0 leaves it to the read.
	timeout time.Duration
	now     func() time.Time
	// next, when set, says after a successful read how soon the next one
	// is due, from the start of that read: a result that wants a second
	// look soon (kube-proxy drift pending its grace) shortens the wait.
	// The interval stays the longest wait; next cannot lengthen it.
	next func(T) time.Duration

	snap    atomic.Pointer[snapshot[T]]
	kick    chan struct{}
	once    sync.Once
	stop    context.CancelFunc
	stopped chan struct{}
}

// newRefresher returns a refresher of the source named source (the label of
// its snapshot metrics) that calls read every interval, each call bounded by
// timeout. It does nothing until Start.
func newRefresher[T any](source string, interval, timeout time.Duration, read func(context.Context) (T, error)) *refresher[T] {
	return &refresher[T]{
		source:   source,
		interval: interval,
		timeout:  timeout,
		read:     read,
		now:      time.Now,
		kick:     make(chan struct{}, 1),
		stopped:  make(chan struct{}),
	}
}

// nextAfter makes the refresher ask next, after each successful read, when
// the next read is due (see refresher.next). Call it before Start.
func (r *refresher[T]) nextAfter(next func(T) time.Duration) { r.next = next }

// Start starts the reading goroutine, which stops when ctx is done or at
// Close. Calls after the first do nothing.
func (r *refresher[T]) Start(ctx context.Context) error {
	r.once.Do(func() {
		ctx, r.stop = context.WithCancel(ctx)
		go r.loop(ctx)
	})
	return nil
}

// Run starts, in place of the periodic loop, a goroutine running run, which
// publishes its own snapshots (see publish) until ctx is done. Calls after
// the first Start or Run do nothing.
func (r *refresher[T]) Run(ctx context.Context, run func(context.Context)) {
	r.once.Do(func() {
		ctx, r.stop = context.WithCancel(ctx)
		go func() {
			defer close(r.stopped)
			run(ctx)
		}()
	})
}

// Close stops the background goroutine, if it runs, and waits for it.
func (r *refresher[T]) Close() {
	r.once.Do(func() { close(r.stopped) })
	if r.stop != nil {
		r.stop()
	}
	<-r.stopped
}

// Done is closed when the background goroutine has stopped.
func (r *refresher[T]) Done() <-chan struct{} { return r.stopped }

// Snapshot returns the latest snapshot, or nil before the first read
// finished. It never blocks.
func (r *refresher[T]) Snapshot() *snapshot[T] { return r.snap.Load() }

// Kick asks for a read now if the latest one is older than the interval (a
// reader found the snapshot stale). It never blocks, and kicks that arrive
// while a read runs collapse into at most one more.
func (r *refresher[T]) Kick() {
	s := r.snap.Load()
	if s != nil && r.now().Sub(s.Attempt) < r.interval {
		return
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *refresher[T]) loop(ctx context.Context) {
	defer close(r.stopped)
	timer := time.NewTimer(0)
	defer timer.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-r.kick:
			if !last.IsZero() && r.now().Sub(last) < r.interval {
				continue
			}
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
		last = r.now()
		r.refresh(ctx)
		timer.Reset(max(r.wait()-r.now().Sub(last), 0))
	}
}

// wait is how long after the start of the latest read the next one is due.
func (r *refresher[T]) wait() time.Duration {
	s := r.snap.Load()
	if r.next == nil || s == nil || s.Err != nil {
		return r.interval
	}
	if d := r.next(s.Value); d > 0 && d < r.interval {
		return d
	}
	return r.interval
}

func (r *refresher[T]) refresh(ctx context.Context) {
	if r.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.timeout)
		defer cancel()
	}
	start := r.now()
	v, err := r.read(ctx)
	r.publish(v, start, r.now(), err)
}

// publish makes the outcome of a read that ran from start to end the latest
// snapshot: on success v, otherwise err with the previous success kept.
func (r *refresher[T]) publish(v T, start, end time.Time, err error) {
	next := &snapshot[T]{Started: start, Attempt: end}
	if err != nil {
		if prev := r.snap.Load(); prev != nil {
			next.Value, next.Time, next.Duration = prev.Value, prev.Time, prev.Duration
		}
		next.Err = err
	} else {
		next.Value, next.Time, next.Duration = v, end, end.Sub(start)
	}
	r.snap.Store(next)
}

// emitAge sends the snapshot metrics of s, once the source was read
// successfully.
func (r *refresher[T]) emitAge(ch chan<- prometheus.Metric, s *snapshot[T]) {
	if s == nil || s.Time.IsZero() {
		return
	}
	ch <- prometheus.MustNewConstMetric(snapshotLastSuccessDesc, prometheus.GaugeValue, unixSeconds(s.Time), r.source)
	ch <- prometheus.MustNewConstMetric(snapshotDurationDesc, prometheus.GaugeValue, s.Duration.Seconds(), r.source)
}

// unixSeconds is t as a Unix timestamp in seconds, as Prometheus gauges of
// times are.
func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
