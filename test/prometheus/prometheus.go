// Package prometheus runs a real Prometheus (Debian's package) for
// integration tests, inside a test's network namespace, and queries it.
//
//	p := prometheus.Start(t, ns, prometheus.Debian(t), config) // listens on 127.0.0.1:9090 in ns
//	p.WaitQuery(t, `up{job="netinspect"} == 1`, time.Minute) // at least one sample
//	samples := p.Query(t, `netinspect_conntrack_entries`)
//	rules := prometheus.ShortRules(t, dir, "3s")            // alerts/ with every `for:` shortened
package prometheus

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// Addr is where Prometheus listens, in the test's namespace.
const Addr = "127.0.0.1:9090"

// Debian returns Debian's prometheus (promtool, the rules, static targets);
// it is built without Kubernetes service discovery.
func Debian(t testing.TB) string {
	t.Helper()
	return testenv.RequireCommand(t, "prometheus")
}

// WithKubernetesSD returns the Prometheus built from tools/kube with
// kubernetes_sd_configs (and no other discovery), cached by version like the
// Kubernetes binaries (controlplane.PrometheusVersion).
func WithKubernetesSD(t testing.TB) string {
	t.Helper()
	return controlplane.Binary(t, "prometheus")
}

// Server is a running Prometheus.
type Server struct {
	// Dir holds the configuration, the TSDB and the log.
	Dir    string
	client *http.Client
}

// Start writes config (prometheus.yml; rule files and credentials it names
// must exist) and runs the Prometheus binary bin in ns until the test ends,
// waiting until it is ready. Its log is printed when the test fails.
func Start(t testing.TB, ns *netns.NS, bin, config string) *Server {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "prometheus.log")
	_, done := ns.Start(t, dir, "prometheus", bin, "--config.file="+cfg,
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+Addr)
	s := &Server{Dir: dir, client: &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: controlplane.DialerIn(ns.Path())}}}
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := s.client.Get("http://" + Addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("prometheus exited:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 1 min: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Sample is one series of an instant query's result.
type Sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// Float is the sample's value.
func (s Sample) Float() float64 {
	str, _ := s.Value[1].(string)
	v, _ := strconv.ParseFloat(str, 64)
	return v
}

// Series is one series of a range vector's result: its samples'
// timestamps (seconds) and values.
type Series struct {
	Metric map[string]string `json:"metric"`
	Values [][2]any          `json:"values"`
}

// Points returns the series' samples as timestamps and values.
func (s Series) Points() (ts []float64, vs []float64) {
	for _, p := range s.Values {
		t, _ := p[0].(float64)
		str, _ := p[1].(string)
		v, _ := strconv.ParseFloat(str, 64)
		ts, vs = append(ts, t), append(vs, v)
	}
	return ts, vs
}

// QueryErr runs an instant query whose result is a vector.
func (s *Server) QueryErr(q string) ([]Sample, error) {
	var out []Sample
	err := s.query(q, "vector", &out)
	return out, err
}

// Query is QueryErr failing the test on error.
func (s *Server) Query(t testing.TB, q string) []Sample {
	t.Helper()
	out, err := s.QueryErr(q)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// QueryMatrix runs an instant query of a range vector (`up[5m]`), which
// returns every stored sample in the range.
func (s *Server) QueryMatrix(t testing.TB, q string) []Series {
	t.Helper()
	var out []Series
	if err := s.query(q, "matrix", &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func (s *Server) query(q, resultType string, result any) error {
	resp, err := s.client.Get("http://" + Addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("decode %s: %w", body, err)
	}
	if r.Status != "success" {
		return fmt.Errorf("query %q: %s", q, r.Error)
	}
	if r.Data.ResultType != resultType {
		return fmt.Errorf("query %q: result type %s, want %s", q, r.Data.ResultType, resultType)
	}
	return json.Unmarshal(r.Data.Result, result)
}

// WaitQuery polls q until it returns at least one sample, up to timeout,
// and returns them.
func (s *Server) WaitQuery(t testing.TB, q string, timeout time.Duration) []Sample {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		got, err := s.QueryErr(q)
		if err == nil && len(got) > 0 {
			return got
		}
		last = err
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("query %q returned nothing within %v (last error: %v)", q, timeout, last)
	return nil
}

var forLine = regexp.MustCompile(`(?m)^(\s+for:\s*)\S+\s*$`)

// ShortRules copies the project's rule file (alerts/netinspect.rules.yml)
// into dir with every alert's `for:` set to shortFor, checks the copy with
// promtool, and returns its path: a condition then fires within seconds.
func ShortRules(t testing.TB, dir, shortFor string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "alerts", "netinspect.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	alerts := bytes.Count(b, []byte("- alert: "))
	fors := len(forLine.FindAll(b, -1))
	if fors != alerts {
		t.Fatalf("rules have %d alerts but %d for: lines; the shortening assumes one each", alerts, fors)
	}
	path := filepath.Join(dir, "rules.yml")
	if err := os.WriteFile(path, forLine.ReplaceAll(b, []byte("${1}"+shortFor)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(testenv.RequireCommand(t, "promtool"), "check", "rules", path).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules on the shortened copy: %v\n%s", err, out)
	}
	return path
}
