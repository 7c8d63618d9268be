package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/pki"
)

const (
	exporterURL   = "https://127.0.0.1:10271"
	metricsReader = "netinspect-test-metrics-reader"
)

// clientIn returns an HTTP client whose connections are made inside ns. It
// verifies the server against roots, or not at all when roots is nil (as
// Prometheus with insecureSkipVerify does for the self-signed default).
func clientIn(ns *netns.NS, roots *x509.CertPool) (*http.Client, *http.Transport) {
	tr := &http.Transport{
		DialContext:         controlplane.DialerIn(ns.Path()),
		TLSClientConfig:     &tls.Config{RootCAs: roots, InsecureSkipVerify: roots == nil, ServerName: "127.0.0.1"}, //nolint:gosec // see above
		MaxIdleConnsPerHost: 256,
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, tr
}

type reply struct {
	status int
	body   string
	header http.Header
}

// fetch GETs url with the bearer token (none when empty).
func fetch(t *testing.T, c *http.Client, url, token string) reply {
	t.Helper()
	r, err := tryFetch(c, url, token)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return r
}

func tryFetch(c *http.Client, url, token string) (reply, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return reply{}, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{status: resp.StatusCode, body: string(b), header: resp.Header}, nil
}

// parseExposition parses a whole text exposition.
func parseExposition(body string) (map[string]*dto.MetricFamily, error) {
	if !strings.HasSuffix(body, "\n") {
		return nil, fmt.Errorf("exposition of %d bytes does not end with a newline", len(body))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(strings.NewReader(body))
}

// defaultCollectors are the collectors on by default (CONTRACT.md), each of
// which reports netinspect_scrape_collector_success in every scrape.
var defaultCollectors = []string{"conntrack", "conntrack-attribution", "iptables", "ipvs", "neighbour", "nftables", "veth"}

// checkComplete reports what a full scrape of the exporter lacks.
func checkComplete(mfs map[string]*dto.MetricFamily) error {
	for _, name := range []string{"netinspect_build_info", "netinspect_kube_cache_synced", "netinspect_http_requests_rejected_total", "go_goroutines", "process_resident_memory_bytes"} {
		if mfs[name] == nil {
			return fmt.Errorf("no %s", name)
		}
	}
	var got []string
	for _, m := range mfs["netinspect_scrape_collector_success"].GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == "collector" {
				got = append(got, lp.GetValue())
			}
		}
	}
	sort.Strings(got)
	if !slices.Equal(got, defaultCollectors) {
		return fmt.Errorf("netinspect_scrape_collector_success for %v, want %v", got, defaultCollectors)
	}
	return nil
}

// TestBinaryKubernetesAuth runs the binary as deploy/ does (TLS with a
// self-signed certificate, --web.kubernetes-auth, the ServiceAccount of
// deploy/rbac.yaml) against a real kube-apiserver, with real
// ServiceAccount tokens and real time: every answer, a revoked right, and
// an outage of the API server.
func TestBinaryKubernetesAuth(t *testing.T) {
	cp := controlplane.Start(t)
	cp.CreateObjects(t, "../../deploy/rbac.yaml")
	_, kubeconfig := cp.ServiceAccountConfig(t, "netinspect", "netinspect")
	const ttl = 10 * time.Second
	e := startExporter(t, cp.NS, nil, "--kubeconfig="+kubeconfig, "--node-name=node-a",
		"--web.tls.self-signed", "--web.kubernetes-auth", "--web.kubernetes-auth.allowed-ttl="+ttl.String(), "--web.kubernetes-auth.denied-ttl=2s")
	c, _ := clientIn(cp.NS, nil)
	revoke := cp.GrantNonResourceURL(t, metricsReader, "monitoring", "prometheus", "/metrics", "get")
	prom := cp.ServiceAccountToken(t, "monitoring", "prometheus")
	stranger := cp.ServiceAccountToken(t, "monitoring", "stranger")

	// Open to anyone who reaches the port: the probes and a landing page
	// that says nothing worth knowing.
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ok: serving metrics", "/": "Metrics (bearer token required)"} {
		r := fetch(t, c, exporterURL+path, "")
		if r.status != http.StatusOK || !strings.Contains(r.body, want) {
			t.Errorf("GET %s without a token: %d %q, want 200 containing %q", path, r.status, r.body, want)
		}
	}
	if r := fetch(t, c, exporterURL+"/", ""); strings.Contains(r.body, "Version") || strings.Contains(r.body, "netinspect_") {
		t.Errorf("landing page tells more than the links:\n%s", r.body)
	}

	for _, tt := range []struct {
		what, token string
		want        int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"malformed token", prom + " extra", http.StatusUnauthorized},
		{"unknown token", "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl", http.StatusUnauthorized},
		{"expired token", cp.SignServiceAccountToken(t, "monitoring", "prometheus", time.Now().Add(-time.Hour), time.Now().Add(-10*time.Minute)), http.StatusUnauthorized},
		{"ServiceAccount without the right", stranger, http.StatusForbidden},
	} {
		r := fetch(t, c, exporterURL+"/metrics", tt.token)
		if r.status != tt.want || strings.Contains(r.body, "netinspect_") {
			t.Errorf("%s: %d %q, want %d and no metrics", tt.what, r.status, r.body, tt.want)
		}
	}

	r := fetch(t, c, exporterURL+"/metrics", prom)
	authorized := time.Now()
	if r.status != http.StatusOK {
		t.Fatalf("Prometheus: status %d %q", r.status, r.body)
	}
	mfs, err := parseExposition(r.body)
	if err != nil {
		t.Fatalf("Prometheus's scrape: %v", err)
	}
	if err := checkComplete(mfs); err != nil {
		t.Errorf("Prometheus's scrape: %v", err)
	}
	if got := sample(t, r.body, `netinspect_scrape_collector_success{collector="conntrack"}`); got != 1 {
		t.Errorf("conntrack collector success %v in Prometheus's scrape", got)
	}
	sample(t, r.body, "netinspect_conntrack_entries")
	for series, want := range map[string]float64{
		`netinspect_http_requests_rejected_total{reason="unauthenticated"}`:  4,
		`netinspect_http_requests_rejected_total{reason="forbidden"}`:        1,
		`netinspect_http_requests_rejected_total{reason="auth_unavailable"}`: 0,
		`netinspect_http_requests_rejected_total{reason="max_requests"}`:     0,
		`netinspect_auth_reviews_total{result="denied",review="token"}`:      2,
		`netinspect_auth_reviews_total{result="denied",review="access"}`:     1,
		`netinspect_auth_api_unavailable`:                                    0,
		`netinspect_tls_certificate_reload_errors_total`:                     0,
	} {
		if got := sample(t, r.body, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}

	// The guard's series: a fixed number per node, whatever the cluster.
	guardSeries := 0
	for name, mf := range mfs {
		if strings.HasPrefix(name, "netinspect_auth_") || strings.HasPrefix(name, "netinspect_tls_") || name == "netinspect_http_requests_rejected_total" {
			guardSeries += len(mf.GetMetric())
		}
	}
	if guardSeries != 16 {
		t.Errorf("%d series of the auth, TLS and rejection metrics, want 16 (docs/metrics.md)", guardSeries)
	}
	checkPlainHTTPRefused(t, cp.NS, prom)

	t.Run("revoked right", func(t *testing.T) {
		revoke()
		if time.Since(authorized) < ttl-3*time.Second {
			if r := fetch(t, c, exporterURL+"/metrics", prom); r.status != http.StatusOK {
				t.Errorf("revoked right within the TTL: %d, want 200 (cached)", r.status)
			}
		}
		controlplane.Eventually(t, ttl+20*time.Second, func() error {
			if r := fetch(t, c, exporterURL+"/metrics", prom); r.status != http.StatusForbidden {
				return fmt.Errorf("status %d", r.status)
			}
			return nil
		})
		if took := time.Since(authorized); took < ttl-time.Second {
			t.Errorf("refused %v after the allowing review; the allowed TTL is %v", took, ttl)
		}
	})
	t.Run("API server outage", func(t *testing.T) { testBinaryOutage(t, cp, e, c, ttl) })
}

func testBinaryOutage(t *testing.T, cp *controlplane.ControlPlane, e *exporter, c *http.Client, ttl time.Duration) {
	cp.GrantNonResourceURL(t, metricsReader, "monitoring", "prometheus", "/metrics", "get")
	cached := cp.ServiceAccountToken(t, "monitoring", "prometheus")
	fresh := cp.ServiceAccountToken(t, "monitoring", "prometheus")
	stranger := cp.ServiceAccountToken(t, "monitoring", "stranger")
	if r := fetch(t, c, exporterURL+"/metrics", cached); r.status != http.StatusOK {
		t.Fatalf("before the outage: %d", r.status)
	}
	reviewed := time.Now()

	cp.Kill(t)
	if took := time.Since(reviewed); took > ttl/2 {
		t.Fatalf("killing the API server took %v: too close to the allowed TTL (%v) to check cached callers", took, ttl)
	}
	for what, token := range map[string]string{"new token of an allowed user": fresh, "new token of another user": stranger} {
		if r := fetch(t, c, exporterURL+"/metrics", token); r.status != http.StatusUnauthorized {
			t.Errorf("%s during the outage: %d, want 401", what, r.status)
		}
	}
	r := fetch(t, c, exporterURL+"/metrics", cached)
	if r.status != http.StatusOK {
		t.Fatalf("cached caller during the outage: %d, want 200", r.status)
	}
	if got := sample(t, r.body, "netinspect_auth_api_unavailable"); got != 1 {
		t.Errorf("netinspect_auth_api_unavailable = %v during the outage, want 1", got)
	}
	if got := sample(t, r.body, `netinspect_http_requests_rejected_total{reason="auth_unavailable"}`); got != 2 {
		t.Errorf(`rejected{auth_unavailable} = %v, want 2`, got)
	}
	if !strings.Contains(e.stderr.String(), "kubernetes auth failing closed") {
		t.Error("no fail-closed log line")
	}

	// Once its decision expires the cached caller is refused too, and stays
	// refused while the API server is away.
	controlplane.Eventually(t, ttl+20*time.Second, func() error {
		if r := fetch(t, c, exporterURL+"/metrics", cached); r.status == http.StatusOK {
			return fmt.Errorf("still let in")
		}
		return nil
	})
	for i := range 3 {
		if r := fetch(t, c, exporterURL+"/metrics", cached); r.status == http.StatusOK {
			t.Errorf("request %d let in after the decision expired, API server down", i)
		}
	}

	cp.Restart(t)
	controlplane.Eventually(t, 30*time.Second, func() error {
		if r := fetch(t, c, exporterURL+"/metrics", fresh); r.status != http.StatusOK {
			return fmt.Errorf("new token after the outage: status %d", r.status)
		}
		return nil
	})
	r = fetch(t, c, exporterURL+"/metrics", cached)
	if r.status != http.StatusOK {
		t.Fatalf("formerly cached caller after the outage: %d", r.status)
	}
	if got := sample(t, r.body, "netinspect_auth_api_unavailable"); got != 0 {
		t.Errorf("netinspect_auth_api_unavailable = %v after the outage, want 0", got)
	}
	if !strings.Contains(e.stderr.String(), "kubernetes auth recovered") {
		t.Error("no recovery log line")
	}
}

// TestBinaryServesRotatedCertificateFiles serves a certificate from files
// laid out as a mounted kubernetes.io/tls Secret and rotates them as the
// kubelet does: new connections get the new certificate, no restart.
func TestBinaryServesRotatedCertificateFiles(t *testing.T) {
	ns := netns.New(t, "tls")
	ca, err := pki.NewCA("netinspect-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.PEM)
	dir := filepath.Join(t.TempDir(), "tls")
	rotate := func(cn string) {
		t.Helper()
		cert, key, err := ca.IssueServing(cn, "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteSecretVolume(dir, map[string][]byte{"tls.crt": cert, "tls.key": key}); err != nil {
			t.Fatal(err)
		}
	}
	rotate("first")
	startExporter(t, ns, nil, "--web.tls.cert-file="+filepath.Join(dir, "tls.crt"), "--web.tls.key-file="+filepath.Join(dir, "tls.key"))

	served := func() string {
		t.Helper()
		c, tr := clientIn(ns, roots)
		defer tr.CloseIdleConnections()
		resp, err := c.Get(exporterURL + "/metrics")
		if err != nil {
			t.Fatalf("HTTPS with the CA: %v", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "netinspect_build_info") {
			t.Fatalf("HTTPS with the CA: %d", resp.StatusCode)
		}
		return resp.TLS.PeerCertificates[0].Subject.CommonName
	}
	if got := served(); got != "first" {
		t.Fatalf("served %q, want first", got)
	}
	rotate("second")
	controlplane.Eventually(t, 20*time.Second, func() error {
		if got := served(); got != "second" {
			return fmt.Errorf("still serving %q", got)
		}
		return nil
	})
	checkPlainHTTPRefused(t, ns, "")
}

// checkPlainHTTPRefused sends plain HTTP to the TLS port: Go answers 400
// ("Client sent an HTTP request to an HTTPS server") and closes; with a
// request longer than the TLS record header it read, the close resets the
// connection, which the client may see first. Never metrics.
func checkPlainHTTPRefused(t *testing.T, ns *netns.NS, token string) {
	t.Helper()
	plain := &http.Client{Transport: &http.Transport{DialContext: controlplane.DialerIn(ns.Path())}, Timeout: 10 * time.Second}
	r, err := tryFetch(plain, "http://127.0.0.1:10271/metrics", token)
	switch {
	case err != nil && strings.Contains(err.Error(), "connection reset by peer"):
	case err != nil:
		t.Errorf("plain HTTP on the TLS port: %v, want 400 or a reset connection", err)
	case r.status != http.StatusBadRequest || !strings.Contains(r.body, "HTTPS server") || strings.Contains(r.body, "netinspect_"):
		t.Errorf("plain HTTP on the TLS port: %d %q, want 400 and no metrics", r.status, r.body)
	}
}

// TestBinaryGuardFlagErrors checks the exit status and message of each bad
// combination of the TLS, auth and max-requests flags.
func TestBinaryGuardFlagErrors(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("netinspect-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.IssueServing("x", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteSecretVolume(dir, map[string][]byte{"tls.crt": cert, "tls.key": key,
		"web.yml": []byte("tls_server_config:\n  cert_file: " + filepath.Join(dir, "tls.crt") + "\n  key_file: " + filepath.Join(dir, "tls.key") + "\n")}); err != nil {
		t.Fatal(err)
	}
	webConfig := filepath.Join(dir, "web.yml")
	listen := "--web.listen-address=127.0.0.1:0"
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantMsg  string
	}{
		{"negative max requests", []string{listen, "--web.max-requests=-1"}, exitBadFlags, "--web.max-requests=-1: must be 0 (no limit) or more"},
		{"cert without key", []string{listen, "--web.tls.cert-file=/x.crt"}, exitBadFlags, "--web.tls.cert-file and --web.tls.key-file go together"},
		{"self-signed and files", []string{listen, "--web.tls.self-signed", "--web.tls.cert-file=/x.crt", "--web.tls.key-file=/x.key"}, exitBadFlags, "give one"},
		{"zero cache", []string{listen, "--web.kubernetes-auth", "--web.kubernetes-auth.cache-size=0"}, exitBadFlags, "cache-size=0: must be at least 1"},
		{"missing certificate file", []string{listen, "--web.tls.cert-file=" + filepath.Join(dir, "nope.crt"), "--web.tls.key-file=" + filepath.Join(dir, "nope.key")}, exitStartup, "read certificate: open " + filepath.Join(dir, "nope.crt")},
		{"TLS twice", []string{listen, "--web.tls.self-signed", "--web.config.file=" + webConfig}, exitStartup, "has a tls_server_config and --web.tls.* serve TLS too"},
		{"auth without an API server", []string{listen, "--web.kubernetes-auth"}, exitStartup, "--web.kubernetes-auth needs the Kubernetes API"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := runBinary(t, tt.args...)
			if code != tt.wantCode || !strings.Contains(out, tt.wantMsg) {
				t.Errorf("exit %d, output:\n%s\nwant exit %d and %q", code, out, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

// TestBinaryScrapeStorm sends 200 concurrent clients at the exporter, as
// deployed (TLS, Kubernetes auth, a valid token), for 30 s with
// --web.max-requests=4: every 200 is a complete, correct exposition, every
// other answer a 503 counted as max_requests, and afterwards goroutines and
// heap are back at their resting level. The figures are logged.
func TestBinaryScrapeStorm(t *testing.T) {
	const (
		clients     = 200
		duration    = 30 * time.Second
		maxRequests = 4
		flows       = 37
	)
	cp := controlplane.Start(t)
	cp.CreateObjects(t, "../../deploy/rbac.yaml")
	_, kubeconfig := cp.ServiceAccountConfig(t, "netinspect", "netinspect")
	cp.GrantNonResourceURL(t, metricsReader, "monitoring", "prometheus", "/metrics", "get")
	prom := cp.ServiceAccountToken(t, "monitoring", "prometheus")
	node := netns.New(t, "storm")
	cp.KubeconfigIn(t, node) // the API server on the node's loopback
	if n, err := ctfill.Create(node.FD(), ctfill.Spec{Count: flows, Src: netip.MustParseAddr("10.5.0.1"), Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 53}); err != nil || n != flows {
		t.Fatalf("created %d of %d flows: %v", n, flows, err)
	}
	e := startExporter(t, node, nil, "--kubeconfig="+kubeconfig, "--node-name=node-a",
		"--web.tls.self-signed", "--web.kubernetes-auth", fmt.Sprintf("--web.max-requests=%d", maxRequests))
	pid := e.cmd.Process.Pid
	c, tr := clientIn(node, nil)

	scrape := func() (map[string]*dto.MetricFamily, string) {
		t.Helper()
		for {
			r := fetch(t, c, exporterURL+"/metrics", prom)
			if r.status == http.StatusOK {
				mfs, err := parseExposition(r.body)
				if err != nil {
					t.Fatal(err)
				}
				return mfs, r.body
			}
			if r.status != http.StatusServiceUnavailable {
				t.Fatalf("status %d %q", r.status, r.body)
			}
		}
	}
	// Resting: the caches synced and the first background passes done.
	controlplane.Eventually(t, 60*time.Second, func() error {
		_, body := scrape()
		for _, s := range []string{`netinspect_kube_cache_synced{resource="pods"} 1`, `netinspect_scrape_collector_success{collector="conntrack-attribution"} 1`} {
			if !strings.Contains(body, s) {
				return fmt.Errorf("no %s yet", s)
			}
		}
		return nil
	})
	time.Sleep(2 * time.Second) // let the first scrapes' goroutines finish
	tr.CloseIdleConnections()
	before := usage(t, scrape, pid)
	restMFs, _ := scrape()
	working := succeeding(restMFs)

	var (
		ok, unavailable, other, incomplete, skipping atomic.Int64
		firstProblem                                 atomic.Value
		mu                                           sync.Mutex
		okLatency, refusedLatency                    []time.Duration
	)
	stop := time.Now().Add(duration)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			var okL, refL []time.Duration
			for time.Now().Before(stop) {
				start := time.Now()
				r, err := tryFetch(c, exporterURL+"/metrics", prom)
				took := time.Since(start)
				switch {
				case err != nil:
					other.Add(1)
					firstProblem.CompareAndSwap(nil, err.Error())
				case r.status == http.StatusOK:
					ok.Add(1)
					okL = append(okL, took)
					skipped, problem := checkStormScrape(r.body, flows, working)
					if problem != "" {
						incomplete.Add(1)
						firstProblem.CompareAndSwap(nil, problem)
					}
					if len(skipped) > 0 {
						skipping.Add(1)
					}
				case r.status == http.StatusServiceUnavailable:
					unavailable.Add(1)
					refL = append(refL, took)
				default:
					other.Add(1)
					firstProblem.CompareAndSwap(nil, fmt.Sprintf("status %d %q", r.status, r.body))
				}
			}
			mu.Lock()
			okLatency, refusedLatency = append(okLatency, okL...), append(refusedLatency, refL...)
			mu.Unlock()
		})
	}
	wg.Wait()
	tr.CloseIdleConnections()
	peakRSS := procStatus(t, pid, "VmHWM")

	if ok.Load() == 0 || unavailable.Load() == 0 {
		t.Errorf("%d answered, %d refused: the storm should see both", ok.Load(), unavailable.Load())
	}
	if n := incomplete.Load() + other.Load(); n > 0 {
		t.Errorf("%d incomplete scrapes and %d other answers; first: %v", incomplete.Load(), other.Load(), firstProblem.Load())
	}
	// Concurrent scrapes share a collector's Update under way: a collector
	// that works at rest works in every storm scrape too.
	if n := skipping.Load(); n > 0 {
		t.Errorf("%d of %d answered scrapes had a collector that works at rest at success 0", n, ok.Load())
	}

	// Back to rest: goroutines and heap within a small margin of before. The
	// heap shrinks at the next GC, which the polling scrapes' allocations
	// or the runtime's forced GC (every 2 minutes) bring.
	var after resources
	controlplane.Eventually(t, 150*time.Second, func() error {
		tr.CloseIdleConnections()
		after = usage(t, scrape, pid)
		if after.goroutines > before.goroutines+5 || after.heapInuse > before.heapInuse*1.25+4<<20 {
			return fmt.Errorf("goroutines %d (resting %d), heap in use %.1f MiB (resting %.1f MiB)",
				after.goroutines, before.goroutines, mib(after.heapInuse), mib(before.heapInuse))
		}
		return nil
	})
	_, body := scrape()
	if got := sample(t, body, `netinspect_http_requests_rejected_total{reason="max_requests"}`); got != float64(unavailable.Load()) {
		t.Errorf("rejected{max_requests} = %v, clients saw %d 503s", got, unavailable.Load())
	}
	if got := sample(t, body, `netinspect_http_requests_rejected_total{reason="auth_overloaded"}`); got != 0 {
		t.Errorf("rejected{auth_overloaded} = %v, want 0 (one token, one review)", got)
	}
	if got := sample(t, body, `netinspect_auth_reviews_total{result="allowed",review="token"}`); got != 1 {
		t.Errorf("%v TokenReviews for one token, want 1", got)
	}
	t.Logf("storm: %d clients for %v, --web.max-requests=%d: %d answered 200 (p50 %v, p99 %v; %d of them with a working collector failed), %d refused 503 (p50 %v, p99 %v), %d other",
		clients, duration, maxRequests, ok.Load(), percentile(okLatency, 50), percentile(okLatency, 99), skipping.Load(),
		unavailable.Load(), percentile(refusedLatency, 50), percentile(refusedLatency, 99), other.Load())
	t.Logf("exporter before: %d goroutines, heap in use %.1f MiB, RSS %.1f MiB; peak RSS %s; after: %d goroutines, heap in use %.1f MiB, RSS %.1f MiB",
		before.goroutines, mib(before.heapInuse), mib(before.rss), peakRSS, after.goroutines, mib(after.heapInuse), mib(after.rss))
}

// succeeding returns the collectors whose success is 1 in a scrape.
func succeeding(mfs map[string]*dto.MetricFamily) map[string]bool {
	ok := map[string]bool{}
	for _, m := range mfs["netinspect_scrape_collector_success"].GetMetric() {
		if m.GetGauge().GetValue() == 1 {
			ok[m.GetLabel()[0].GetValue()] = true
		}
	}
	return ok
}

// checkStormScrape returns what is wrong with one scrape's body ("" when
// nothing), and the collectors that work at rest but report success 0.
func checkStormScrape(body string, flows int, working map[string]bool) (skipped []string, problem string) {
	mfs, err := parseExposition(body)
	if err != nil {
		return nil, err.Error()
	}
	if err := checkComplete(mfs); err != nil {
		return nil, err.Error()
	}
	now := succeeding(mfs)
	for c := range working {
		if !now[c] {
			skipped = append(skipped, c)
		}
	}
	if now["conntrack"] {
		if got := mfs["netinspect_conntrack_entries"].GetMetric()[0].GetGauge().GetValue(); got != float64(flows) {
			return skipped, fmt.Sprintf("netinspect_conntrack_entries %v, want %d", got, flows)
		}
	}
	return skipped, ""
}

type resources struct {
	goroutines     int
	heapInuse, rss float64
}

func usage(t *testing.T, scrape func() (map[string]*dto.MetricFamily, string), pid int) resources {
	t.Helper()
	mfs, _ := scrape()
	g := func(name string) float64 { return mfs[name].GetMetric()[0].GetGauge().GetValue() }
	return resources{goroutines: int(g("go_goroutines")), heapInuse: g("go_memstats_heap_inuse_bytes"), rss: g("process_resident_memory_bytes")}
}

// procStatus returns a field of /proc/<pid>/status.
func procStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)*p/100].Round(time.Millisecond)
}

func mib(b float64) float64 { return b / (1 << 20) }
