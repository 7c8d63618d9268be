// Package reject counts the requests the exporter turns away, by reason, and
// bounds how many scrapes run at once (--web.max-requests).
//
// Every middleware that refuses a request (Kubernetes authentication and
// authorization in web/kubeauth, the concurrency bound here) counts it in one
// Counter, netinspect_http_requests_rejected_total{reason}, so a dashboard
// reads every refusal from one series family.
package reject

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
)

// Reason is the value of the reason label.
type Reason string

// The reasons a request is refused. Each Counter exports only the reasons it
// was built with, at zero until the first refusal.
const (
	// Unauthenticated: no bearer token, a malformed one, or one the API
	// server's TokenReview does not accept (401).
	Unauthenticated Reason = "unauthenticated"
	// Forbidden: the token's user may not get the telemetry path
	// (SubjectAccessReview denied, 403).
	Forbidden Reason = "forbidden"
	// AuthUnavailable: the decision was not cached and the API server could
	// not be asked (unreachable, timed out, refused the exporter): 401 or
	// 403, never served.
	AuthUnavailable Reason = "auth_unavailable"
	// AuthOverloaded: too many reviews already in flight (503).
	AuthOverloaded Reason = "auth_overloaded"
	// MaxRequests: --web.max-requests scrapes already in flight (503).
	MaxRequests Reason = "max_requests"
)

// Counter is netinspect_http_requests_rejected_total{reason}. It implements
// prometheus.Collector.
type Counter struct {
	vec *prometheus.CounterVec
}

// NewCounter returns a Counter exporting reasons at zero.
func NewCounter(reasons ...Reason) *Counter {
	c := &Counter{vec: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "netinspect_http_requests_rejected_total",
		Help: "Requests to the telemetry path refused before any metric was gathered, by reason: unauthenticated (401), forbidden (403), auth_unavailable (API server not reachable for an uncached decision), auth_overloaded and max_requests (503).",
	}, []string{"reason"})}
	c.Add(reasons...)
	return c
}

// Add makes reasons exported at zero (a middleware built later than the
// Counter adds its own).
func (c *Counter) Add(reasons ...Reason) {
	for _, r := range reasons {
		c.vec.WithLabelValues(string(r))
	}
}

// Inc counts one refusal.
func (c *Counter) Inc(r Reason) { c.vec.WithLabelValues(string(r)).Inc() }

// Describe implements prometheus.Collector.
func (c *Counter) Describe(ch chan<- *prometheus.Desc) { c.vec.Describe(ch) }

// Collect implements prometheus.Collector.
func (c *Counter) Collect(ch chan<- prometheus.Metric) { c.vec.Collect(ch) }

// MaxInFlight lets at most n requests through to next at once and answers
// the rest with 503 at once, counting them as MaxRequests; n <= 0 lets every
// request through. It is promhttp.HandlerOpts.MaxRequestsInFlight (what
// node_exporter's --web.max-requests sets) as a middleware: netinspect builds
// a promhttp handler per scrape, for the scrape's own deadline, so the bound
// has to live outside it.
func MaxInFlight(n int, rejected *Counter, next http.Handler) http.Handler {
	if n <= 0 {
		return next
	}
	rejected.Add(MaxRequests)
	slots := make(chan struct{}, n)
	msg := fmt.Sprintf("Service Unavailable: %d scrapes already in flight (--web.max-requests)", n)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case slots <- struct{}{}:
		default:
			rejected.Inc(MaxRequests)
			http.Error(w, msg, http.StatusServiceUnavailable)
			return
		}
		defer func() { <-slots }()
		next.ServeHTTP(w, r)
	})
}
