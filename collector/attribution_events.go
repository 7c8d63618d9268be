package collector

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/netinspect/netinspect/collector/ctdump"
)

// defaultEventsReadBuffer is the receive buffer of the events socket: room for
// about 30,000 events (a datagram per event, ~300 bytes each plus overhead)
// while a pass runs or the reader is descheduled.
const defaultEventsReadBuffer = 16 << 20

// eventCounters are the counts of events mode: those of the last full pass,
// kept current by the events since.
type eventCounters struct {
	mu       sync.Mutex
	pods     map[attrKey]int64 // nil until the first pass
	services map[attrKey]int64
	states   []stateCount // of the last pass: events do not report state changes
	scanned  int
	dumps    int
	duration time.Duration
	finished time.Time

	lost atomic.Uint64
}

// current returns what Update serves: the last pass's snapshot in pass
// mode, the counters kept by events in events mode; nil before the first
// pass.
func (a *Attribution) current() *attributionSnapshot {
	if a.cfg.Mode != AttributionModeEvents {
		return a.snap.Load()
	}
	ev := &a.events
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if ev.pods == nil {
		return nil
	}
	return &attributionSnapshot{
		pods:     a.counts(ev.pods),
		services: a.topK(a.counts(ev.services)),
		states:   ev.states,
		scanned:  ev.scanned,
		dumps:    ev.dumps,
		duration: ev.duration,
		finished: ev.finished,
	}
}

// eventsLoop subscribes to conntrack events, counts a full pass, then
// applies events to the counts until the next pass is due (every
// Interval) or events were lost. Events still queued when a pass starts
// are applied after it, so an entry created just before or during the pass
// may be counted twice and one destroyed then may be subtracted although
// the pass did not see it (counts never go below 0); the next pass
// corrects both.
func (a *Attribution) eventsLoop(ctx context.Context) {
	for ctx.Err() == nil {
		err := a.followEvents(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, ctdump.ErrEventsLost):
			a.events.lost.Add(1)
			a.logger.Info("conntrack events lost, subscribing again and counting the table", zap.Error(err))
			continue
		case errors.Is(err, ErrNoData):
			if prev := a.absent.Swap(&err); prev == nil || (*prev).Error() != err.Error() {
				a.logger.Debug("conntrack table absent, attribution has no data", zap.Error(err))
			}
		default:
			a.errs.Add(1)
			a.logger.Warn("conntrack attribution events failed; serving the last counts until a pass succeeds", zap.Error(err))
		}
		t := time.NewTimer(a.cfg.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// followEvents subscribes, counts a pass, and applies events until ctx is
// done or an error. When events were lost it returns ErrEventsLost, and the
// caller subscribes again on a new socket: after an overrun the kernel
// reports ENOBUFS once and then, until the queue drains, drops further
// events silently (netlink_overrun in net/netlink/af_netlink.c sets the
// error only when the socket was not already marked congested), so the
// old socket cannot be trusted through the pass that follows.
func (a *Attribution) followEvents(ctx context.Context) error {
	if err := a.tableAbsent(); err != nil {
		return err
	}
	// Subscribe before the pass so no event between the two is missed.
	l, err := ctdump.Listen(a.cfg.NetNS, a.eventsReadBuffer)
	if err != nil {
		return err
	}
	defer l.Close()
	for {
		if err := a.resync(ctx); err != nil {
			return err
		}
		next := time.Now().Add(a.cfg.Interval)
		for {
			_, err := l.Receive(ctx, next, a.applyEvent)
			if err == nil {
				continue
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break // a pass is due
			}
			return err
		}
	}
}

// resync replaces the counts with those of a full pass.
func (a *Attribution) resync(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, a.cfg.Interval)
	defer cancel()
	start := time.Now()
	t, err := a.scan(pctx)
	if err != nil {
		return err
	}
	stateCounts := t.states.counts(&a.protoNames)
	ev := &a.events
	ev.mu.Lock()
	ev.pods, ev.services, ev.states = t.pods, t.services, stateCounts
	ev.scanned, ev.duration, ev.finished = t.scanned, time.Since(start), time.Now()
	ev.dumps = dumpsOf(a.lastSplitBit)
	ev.mu.Unlock()
	a.absent.Store(nil)
	a.passes.Add(1)
	return nil
}

func (a *Attribution) applyEvent(e *ctdump.Entry) {
	var delta int64
	switch e.Event {
	case ctdump.EventNew:
		delta = 1
	case ctdump.EventDestroy:
		delta = -1
	default:
		return
	}
	ev := &a.events
	ev.mu.Lock()
	if ev.pods != nil {
		a.count(e, ev.pods, ev.services, delta)
	}
	ev.mu.Unlock()
}
