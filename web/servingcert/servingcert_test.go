package servingcert

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/netinspect/netinspect/test/pki"
)

// serve runs an HTTP server answering "ok" behind the Source's TLS config on
// loopback and returns its address.
func serve(t *testing.T, s *Source) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.Serve(tls.NewListener(l, s.TLSConfig())) }()
	t.Cleanup(func() { _ = srv.Close() })
	return l.Addr().String()
}

// servedCert makes a new TLS connection (verified against roots when not
// nil) and returns the certificate the server presented.
func servedCert(t *testing.T, addr string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots, InsecureSkipVerify: roots == nil, ServerName: "127.0.0.1"} //nolint:gosec // the test reads what is served
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

func TestSelfSignedServesTLSForItsHosts(t *testing.T) {
	s, err := New(Config{Hosts: []string{"node-a", "127.0.0.1", "::1"}})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, s)
	cert := servedCert(t, addr, nil)
	if cert.Subject.CommonName != "netinspect" || !cert.Equal(s.Certificate().Leaf) {
		t.Errorf("served %v, want the Source's self-signed certificate", cert.Subject)
	}
	// A client that pins the self-signed certificate verifies it for the
	// names it was made for.
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	servedCert(t, addr, roots)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: "node-a"}); err != nil {
		t.Errorf("verify for node-a: %v", err)
	}
	if time.Until(cert.NotAfter) < 364*24*time.Hour {
		t.Errorf("NotAfter %v: want a year", cert.NotAfter)
	}

	// HTTPS works; plain HTTP on the same port gets no metrics, only
	// Go's "HTTP request to an HTTPS server" refusal.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}}}
	resp, err := client.Get("https://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Errorf("HTTPS: %d %q", resp.StatusCode, body)
	}
	status, refusal := plainHTTP(t, addr)
	if status != http.StatusBadRequest || !strings.Contains(refusal, "Client sent an HTTP request to an HTTPS server") {
		t.Errorf("plain HTTP on the TLS port: %d %q, want 400 and Go's refusal", status, refusal)
	}
	if v := testutil.ToFloat64(s.reloadErrors); v != 0 {
		t.Errorf("reload errors %v", v)
	}
}

// plainHTTP sends a plain HTTP/1.1 request and returns the status and body
// of whatever comes back.
func plainHTTP(t *testing.T, addr string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestSelfSignedIsRenewedBeforeItExpires(t *testing.T) {
	now := time.Now()
	s, err := New(Config{Hosts: []string{"127.0.0.1"}, Validity: 3 * time.Hour, CheckInterval: time.Millisecond,
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	first := s.Certificate().Leaf
	now = now.Add(2*time.Hour - time.Second)
	if got, _ := s.GetCertificate(nil); !got.Leaf.Equal(first) {
		t.Error("renewed before two thirds of its validity")
	}
	now = now.Add(2 * time.Second)
	got, _ := s.GetCertificate(nil)
	if got.Leaf.Equal(first) || !got.Leaf.NotAfter.After(first.NotAfter) {
		t.Errorf("not renewed after two thirds of its validity: NotAfter %v, first %v", got.Leaf.NotAfter, first.NotAfter)
	}
}

// TestFilesRotatedLikeASecretVolumeAreServed rotates the files the way the
// kubelet updates a Secret volume, then writes a pair that does not match.
func TestFilesRotatedLikeASecretVolumeAreServed(t *testing.T) {
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.PEM)
	dir := t.TempDir()
	write := func(cert, key []byte) {
		t.Helper()
		if err := pki.WriteSecretVolume(dir, map[string][]byte{"tls.crt": cert, "tls.key": key}); err != nil {
			t.Fatal(err)
		}
	}
	certA, keyA, _ := ca.IssueServing("a", "127.0.0.1")
	write(certA, keyA)
	core, logs := observer.New(zapcore.InfoLevel)
	s, err := New(Config{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"),
		CheckInterval: 10 * time.Millisecond, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, s)
	if got := servedCert(t, addr, roots).Subject.CommonName; got != "a" {
		t.Fatalf("served %q, want a", got)
	}

	certB, keyB, _ := ca.IssueServing("b", "127.0.0.1")
	write(certB, keyB)
	waitServed(t, addr, roots, "b")

	// A certificate whose key is not in the Secret yet: refused, counted
	// and logged once however many handshakes look at it.
	certC, keyC, _ := ca.IssueServing("c", "127.0.0.1")
	write(certC, keyB)
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(s.reloadErrors) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("mismatched pair never looked at")
		}
		servedCert(t, addr, roots)
		time.Sleep(10 * time.Millisecond)
	}
	for range 5 {
		if got := servedCert(t, addr, roots).Subject.CommonName; got != "b" {
			t.Errorf("served %q with a mismatched pair on disk, want the last good one (b)", got)
		}
		time.Sleep(15 * time.Millisecond)
	}
	if v := testutil.ToFloat64(s.reloadErrors); v != 1 {
		t.Errorf("reload errors = %v, want 1", v)
	}
	if n := logs.FilterMessageSnippet("not reloaded").Len(); n != 1 {
		t.Errorf("%d warnings, want 1", n)
	}
	write(certC, keyC)
	waitServed(t, addr, roots, "c")
	if n := logs.FilterMessageSnippet("reloaded the serving certificate").Len(); n != 2 {
		t.Errorf("%d reload log lines, want 2 (b, c)", n)
	}
	want := fmt.Sprintf(`
# HELP netinspect_tls_certificate_expiry_timestamp_seconds NotAfter of the certificate being served, in seconds since the epoch.
# TYPE netinspect_tls_certificate_expiry_timestamp_seconds gauge
netinspect_tls_certificate_expiry_timestamp_seconds %d
# HELP netinspect_tls_certificate_reload_errors_total Changes of the serving certificate files that could not be loaded (unreadable, not PEM, key not matching); the last good certificate is served meanwhile.
# TYPE netinspect_tls_certificate_reload_errors_total counter
netinspect_tls_certificate_reload_errors_total 1
`, ca.Cert.NotAfter.Unix())
	if err := testutil.CollectAndCompare(s, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

func waitServed(t *testing.T, addr string, roots *x509.CertPool, cn string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := servedCert(t, addr, roots).Subject.CommonName
		if got == cn {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still serving %q 10 s after %q was written", got, cn)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestNewRefusesUnusableFiles(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	cert, _, _ := ca.IssueServing("x", "127.0.0.1")
	_, otherKey, _ := ca.IssueServing("y", "127.0.0.1")
	if err := pki.WriteSecretVolume(dir, map[string][]byte{"tls.crt": cert, "wrong.key": otherKey, "junk": []byte("not PEM")}); err != nil {
		t.Fatal(err)
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	tests := []struct {
		name       string
		cert, key  string
		wantSubstr string
	}{
		{"missing certificate", p("nope.crt"), p("wrong.key"), "read certificate: open " + p("nope.crt")},
		{"missing key", p("tls.crt"), p("nope.key"), "read key: open " + p("nope.key")},
		{"not PEM", p("junk"), p("wrong.key"), "load key pair " + p("junk")},
		{"key of another certificate", p("tls.crt"), p("wrong.key"), "private key does not match public key"},
		{"key without certificate", "", p("wrong.key"), "needs its key file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(Config{CertFile: tt.cert, KeyFile: tt.key})
			if err == nil || !strings.Contains(err.Error(), tt.wantSubstr) {
				t.Errorf("New: %v, want an error containing %q", err, tt.wantSubstr)
			}
		})
	}
}
