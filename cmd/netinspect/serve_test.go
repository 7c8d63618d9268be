package main

import (
	"net/http/httptest"
	"testing"
	"time"
)

func TestScrapeTimeoutFromPrometheusHeader(t *testing.T) {
	h := &metricsHandler{defaultTimeout: 10 * time.Second, offset: 500 * time.Millisecond}
	tests := []struct {
		header string
		want   time.Duration
	}{
		{"", 10 * time.Second},
		{"5", 4500 * time.Millisecond},
		{"0.55", 100 * time.Millisecond}, // floor, not a negative deadline
		{"0.3", minScrapeTimeout},
		{"not-a-number", 10 * time.Second},
		{"-3", 10 * time.Second},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/metrics", nil)
		if tt.header != "" {
			r.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", tt.header)
		}
		if got := h.timeout(r); got != tt.want {
			t.Errorf("header %q: timeout %v, want %v", tt.header, got, tt.want)
		}
	}
}
