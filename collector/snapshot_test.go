package collector

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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
