package nodee2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/node"
)

// exporterURL is the exporter's /metrics on the node: with hostNetwork its
// containerPort is the node's port. deploy/ serves it over HTTPS with a
// self-signed certificate.
const exporterURL = "https://" + node.IP + ":10271/metrics"

// scraper fetches the exporter's metrics from inside the node's network
// namespace as the ServiceMonitor makes Prometheus do: HTTPS without
// verifying the self-signed certificate, with a bearer token whose
// ServiceAccount may get /metrics. Its connections are kept alive and
// pooled (subtests scrape concurrently), so scraping adds no conntrack
// entry once they are open.
type scraper struct {
	client *http.Client
	token  string
}

func newScraper(n *node.Node, token string) *scraper {
	return &scraper{token: token, client: &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: controlplane.DialerIn(n.NS.Path()), MaxIdleConnsPerHost: 8,
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}} //nolint:gosec // as the ServiceMonitor's tlsConfig does
}

// get fetches path from the exporter with token as the bearer token (none
// when empty) and returns the status code and the start of the body.
func (s *scraper) get(path, token string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := strings.TrimSuffix(exporterURL, "/metrics") + path
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	return resp.StatusCode, string(b), nil
}

// series is one scrape: the value of every sample by its series key
// (name{label="value",...}, labels sorted).
type series map[string]float64

func (s *scraper) scrape() (series, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, exporterURL, nil)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return nil, fmt.Errorf("GET %s: %s: %s", exporterURL, resp.Status, b)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", exporterURL, err)
	}
	out := series{}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			out[key(name, m.GetLabel())] = value(f.GetType(), m)
		}
	}
	return out, nil
}

func (s *scraper) mustScrape(t testing.TB) series {
	t.Helper()
	got, err := s.scrape()
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func key(name string, labels []*dto.LabelPair) string {
	parts := make([]string, 0, len(labels))
	for _, l := range labels {
		parts = append(parts, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	sort.Strings(parts)
	return name + "{" + strings.Join(parts, ",") + "}"
}

func value(typ dto.MetricType, m *dto.Metric) float64 {
	switch typ {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	case dto.MetricType_UNTYPED:
		return m.GetUntyped().GetValue()
	case dto.MetricType_HISTOGRAM:
		return float64(m.GetHistogram().GetSampleCount())
	case dto.MetricType_SUMMARY:
		return float64(m.GetSummary().GetSampleCount())
	}
	return 0
}

// match returns the series of metric name whose labels include every
// label="value" pair of want.
func (s series) match(name string, want map[string]string) series {
	out := series{}
	for k, v := range s {
		n, rest, _ := strings.Cut(k, "{")
		if n != name {
			continue
		}
		ok := true
		for l, lv := range want {
			if !strings.Contains(rest, fmt.Sprintf("%s=%q", l, lv)) {
				ok = false
				break
			}
		}
		if ok {
			out[k] = v
		}
	}
	return out
}

// one returns the value of the only series of name matching want, and
// whether there is exactly one.
func (s series) one(name string, want map[string]string) (float64, bool) {
	m := s.match(name, want)
	if len(m) != 1 {
		return 0, false
	}
	for _, v := range m {
		return v, true
	}
	return 0, false
}

// withPod returns the keys of the series that carry pod="name".
func (s series) withPod(namespace, name string) []string {
	var keys []string
	for k := range s {
		if strings.Contains(k, fmt.Sprintf("namespace=%q", namespace)) && strings.Contains(k, fmt.Sprintf("pod=%q", name)) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// waitFor scrapes until ok holds for a scrape, failing after timeout with
// what ok last said.
func (s *scraper) waitFor(t testing.TB, timeout time.Duration, what string, ok func(series) (bool, string)) series {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	var last string
	for {
		got, err := s.scrape()
		if err == nil {
			before := last
			var done bool
			if done, last = ok(got); done {
				if before != "" {
					t.Logf("%s after %v (until then: %s)", what, time.Since(start).Round(100*time.Millisecond), before)
				}
				return got
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %s", what, timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
