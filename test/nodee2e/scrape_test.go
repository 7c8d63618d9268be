package nodee2e

import (
	"context"
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
// containerPort is the node's port.
const exporterURL = "http://" + node.IP + ":10271/metrics"

// scraper fetches the exporter's metrics from inside the node's network
// namespace over one kept-alive connection, so that scraping adds no
// conntrack entry after the first scrape.
type scraper struct {
	client *http.Client
}

func newScraper(n *node.Node) *scraper {
	return &scraper{client: &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: controlplane.DialerIn(n.NS.Path()), MaxIdleConnsPerHost: 1}}}
}

// series is one scrape: the value of every sample by its series key
// (name{label="value",...}, labels sorted).
type series map[string]float64

func (s *scraper) scrape() (series, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, exporterURL, nil)
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
	deadline := time.Now().Add(timeout)
	var last string
	for {
		got, err := s.scrape()
		if err == nil {
			var done bool
			if done, last = ok(got); done {
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
