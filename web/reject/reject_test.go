package reject

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCounterExportsItsReasonsAtZero(t *testing.T) {
	c := NewCounter(Unauthenticated, Forbidden)
	c.Inc(Forbidden)
	want := `
# HELP netinspect_http_requests_rejected_total Requests to the telemetry path refused before any metric was gathered, by reason: unauthenticated (401), forbidden (403), auth_unavailable (API server not reachable for an uncached decision), auth_overloaded and max_requests (503).
# TYPE netinspect_http_requests_rejected_total counter
netinspect_http_requests_rejected_total{reason="forbidden"} 1
netinspect_http_requests_rejected_total{reason="unauthenticated"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// TestMaxInFlightRefusesBeyondTheBoundAtOnce holds n requests inside the
// handler: the next one is answered 503 without waiting for them, and once
// they finish requests pass again.
func TestMaxInFlightRefusesBeyondTheBoundAtOnce(t *testing.T) {
	const n = 3
	c := NewCounter()
	entered := make(chan struct{})
	release := make(chan struct{})
	h := MaxInFlight(n, c, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		entered <- struct{}{}
		<-release
		w.WriteHeader(http.StatusOK)
	}))

	var wg sync.WaitGroup
	codes := make(chan int, n)
	for range n {
		wg.Go(func() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			codes <- rec.Code
		})
		<-entered
	}
	if got := testutil.ToFloat64(c.vec.WithLabelValues(string(MaxRequests))); got != 0 {
		t.Errorf("rejected before the bound: %v", got)
	}
	for i := range 2 {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "--web.max-requests") {
			t.Errorf("request %d beyond the bound: %d %q, want 503 naming --web.max-requests", i, rec.Code, rec.Body.String())
		}
	}
	if got := testutil.ToFloat64(c.vec.WithLabelValues(string(MaxRequests))); got != 2 {
		t.Errorf("netinspect_http_requests_rejected_total{reason=max_requests} = %v, want 2", got)
	}
	close(release)
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != http.StatusOK {
			t.Errorf("admitted request answered %d", code)
		}
	}

	// The slots are free again.
	done := make(chan int, 1)
	go func() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		done <- rec.Code
	}()
	<-entered
	if code := <-done; code != http.StatusOK {
		t.Errorf("after the burst: %d, want 200", code)
	}
}

func TestMaxInFlightZeroIsUnbounded(t *testing.T) {
	next := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	c := NewCounter()
	if h := MaxInFlight(0, c, next); h == nil {
		t.Fatal("nil handler")
	}
	if n := testutil.CollectAndCount(c); n != 0 {
		t.Errorf("unbounded limiter exports %d series, want none", n)
	}
}
