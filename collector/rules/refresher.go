package rules

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Snapshot is one listing of a slow source. It is never modified after the
// refresher publishes it.
type Snapshot[T any] struct {
	// Value is the result of the last successful listing.
	Value T
	// Time is when that listing finished, Duration how long it took.
	Time     time.Time
	Duration time.Duration
	// Err is the error of the latest listing when it failed; Value, Time
	// and Duration then still describe the last success (Time is zero when
	// there was none).
	Err error
	// Started and Attempt are when the latest listing, failed or not,
	// started and finished.
	Started, Attempt time.Time
}

// Refresher lists a slow source in one background goroutine, at start and
// then every Interval, and publishes each result as an immutable Snapshot.
// Readers never wait on a listing, and listings never overlap, however many
// readers there are.
type Refresher[T any] struct {
	interval time.Duration
	list     func(context.Context) (T, error)
	timeout  time.Duration
	now      func() time.Time

	snap    atomic.Pointer[Snapshot[T]]
	kick    chan struct{}
	once    sync.Once
	stopped chan struct{}
}

// NewRefresher returns a refresher that calls list every interval, each call
// bounded by timeout. It does nothing until Start.
func NewRefresher[T any](interval, timeout time.Duration, list func(context.Context) (T, error)) *Refresher[T] {
	return &Refresher[T]{
		interval: interval,
		timeout:  timeout,
		list:     list,
		now:      time.Now,
		kick:     make(chan struct{}, 1),
		stopped:  make(chan struct{}),
	}
}

// Start starts the listing goroutine, which stops when ctx is done. Calls
// after the first do nothing.
func (r *Refresher[T]) Start(ctx context.Context) {
	r.once.Do(func() { go r.loop(ctx) })
}

// Done is closed when the listing goroutine has stopped.
func (r *Refresher[T]) Done() <-chan struct{} { return r.stopped }

// Snapshot returns the latest snapshot, or nil before the first listing
// finished. It never blocks.
func (r *Refresher[T]) Snapshot() *Snapshot[T] { return r.snap.Load() }

// Kick asks for a listing now if the latest one is older than the interval
// (a reader found the snapshot stale). It never blocks, and kicks that
// arrive while a listing runs collapse into at most one more.
func (r *Refresher[T]) Kick() {
	s := r.snap.Load()
	if s != nil && r.now().Sub(s.Attempt) < r.interval {
		return
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *Refresher[T]) loop(ctx context.Context) {
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
		timer.Reset(r.interval)
	}
}

func (r *Refresher[T]) refresh(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	start := r.now()
	v, err := r.list(lctx)
	end := r.now()
	next := &Snapshot[T]{Started: start, Attempt: end}
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
