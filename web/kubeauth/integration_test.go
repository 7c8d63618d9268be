package kubeauth_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	cpl "github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/web/kubeauth"
	"github.com/netinspect/netinspect/web/reject"
)

const (
	allowedTTL = time.Minute
	deniedTTL  = 30 * time.Second
	// metricsReader is the ClusterRole kube-prometheus gives Prometheus.
	metricsReader = "netinspect-test-metrics-reader"
)

// clock is the cache's clock, moved by the test; the API server keeps real
// time for the tokens' own validity.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// guarded is an httptest server on loopback whose handler, behind the
// Authorizer, writes "metrics".
type guarded struct {
	url      string
	a        *kubeauth.Authorizer
	rejected *reject.Counter
	logs     *observer.ObservedLogs
}

func newGuarded(t *testing.T, client kubernetes.Interface, clk *clock) *guarded {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	g := &guarded{rejected: reject.NewCounter(), logs: logs}
	a, err := kubeauth.New(kubeauth.Config{
		Client: client, Path: "/metrics", AllowedTTL: allowedTTL, DeniedTTL: deniedTTL, CacheSize: 64,
		Logger: zap.New(core), Rejected: g.rejected, Now: clk.now,
	})
	if err != nil {
		t.Fatal(err)
	}
	g.a = a
	srv := httptest.NewServer(a.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "metrics\n")
	})))
	t.Cleanup(srv.Close)
	g.url = srv.URL + "/metrics"
	return g
}

// get requests the guarded path with the Authorization header value auth
// ("" for none) and returns the status, failing if a refusal leaks the body.
func (g *guarded) get(t *testing.T, auth string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", g.url, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK && strings.Contains(string(body), "metrics") {
		t.Errorf("status %d with the guarded body", resp.StatusCode)
	}
	if resp.StatusCode == http.StatusOK && string(body) != "metrics\n" {
		t.Errorf("200 with body %q", body)
	}
	if resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") != `Bearer realm="netinspect"` {
		t.Errorf("401 without a Bearer challenge: %v", resp.Header)
	}
	return resp.StatusCode
}

func (g *guarded) expect(t *testing.T, what, auth string, want int) {
	t.Helper()
	if got := g.get(t, auth); got != want {
		t.Errorf("%s: status %d, want %d", what, got, want)
	}
}

// series returns the value of one series of the Authorizer's or the
// rejection counter's metrics.
func (g *guarded) series(t *testing.T, name string, labelPairs ...string) float64 {
	t.Helper()
	if v := kubeauth.SeriesValue(g.a, name, labelPairs...); v >= 0 {
		return v
	}
	if v := kubeauth.SeriesValue(g.rejected, name, labelPairs...); v >= 0 {
		return v
	}
	t.Fatalf("no series %s%v", name, labelPairs)
	return 0
}

func (g *guarded) reviews(t *testing.T, review, result string) float64 {
	t.Helper()
	return g.series(t, "netinspect_auth_reviews_total", "review", review, "result", result)
}

// TestAgainstKubeAPIServer runs the Authorizer as the exporter's
// ServiceAccount of deploy/rbac.yaml against a real kube-apiserver, with
// real ServiceAccount tokens, through every answer the API server gives and
// an outage of it.
func TestAgainstKubeAPIServer(t *testing.T) {
	cp := cpl.Start(t)
	cp.CreateObjects(t, "../../deploy/rbac.yaml")
	exporter, _ := cp.ServiceAccountConfig(t, "netinspect", "netinspect")
	clk := &clock{t: time.Now()}
	g := newGuarded(t, kubernetes.NewForConfigOrDie(exporter), clk)

	revoke := cp.GrantNonResourceURL(t, metricsReader, "monitoring", "prometheus", "/metrics", "get")
	prom := cp.ServiceAccountToken(t, "monitoring", "prometheus")
	stranger := cp.ServiceAccountToken(t, "monitoring", "stranger")

	// Refused before any review: nothing to send to the API server.
	g.expect(t, "no token", "", http.StatusUnauthorized)
	for _, auth := range []string{"Bearer", "Bearer ", "Bearer " + prom + " x", "Basic cHJvbTpzM2NyZXQ=", "Token " + prom} {
		g.expect(t, "malformed "+auth[:min(len(auth), 12)], auth, http.StatusUnauthorized)
	}
	if n := g.reviews(t, "token", "denied") + g.reviews(t, "token", "allowed"); n != 0 {
		t.Errorf("%v TokenReviews for requests without a well-formed token", n)
	}

	// The API server's answers.
	g.expect(t, "unknown token", "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl", http.StatusUnauthorized)
	now := time.Now()
	expired := cp.SignServiceAccountToken(t, "monitoring", "prometheus", now.Add(-20*time.Minute), now.Add(-5*time.Minute))
	g.expect(t, "expired token", "Bearer "+expired, http.StatusUnauthorized)
	// The same claims, still valid: the expiry alone made the difference.
	valid := cp.SignServiceAccountToken(t, "monitoring", "prometheus", now.Add(-time.Minute), now.Add(10*time.Minute))
	g.expect(t, "signed token within its validity", "Bearer "+valid, http.StatusOK)
	if got := g.reviews(t, "token", "denied"); got != 2 {
		t.Errorf("reviews{token,denied} = %v, want 2 (unknown, expired)", got)
	}
	g.expect(t, "ServiceAccount without the right", "Bearer "+stranger, http.StatusForbidden)
	if got := g.reviews(t, "access", "denied"); got != 1 {
		t.Errorf("reviews{access,denied} = %v, want 1", got)
	}
	g.expect(t, "Prometheus", "Bearer "+prom, http.StatusOK)

	// Cached: no further review for either decision.
	before := g.reviews(t, "token", "allowed") + g.reviews(t, "token", "denied")
	g.expect(t, "Prometheus again", "Bearer "+prom, http.StatusOK)
	g.expect(t, "stranger again", "Bearer "+stranger, http.StatusForbidden)
	if after := g.reviews(t, "token", "allowed") + g.reviews(t, "token", "denied"); after != before {
		t.Errorf("cached decisions reviewed again: %v TokenReviews, want %v", after, before)
	}
	if got := g.series(t, "netinspect_http_requests_rejected_total", "reason", "unauthenticated"); got != 8 {
		t.Errorf("rejected{unauthenticated} = %v, want 8 (no token, 5 malformed, unknown, expired)", got)
	}

	// Revoked: still let in while the decision is cached, refused after.
	revoke()
	g.expect(t, "revoked, within the allowed TTL", "Bearer "+prom, http.StatusOK)
	clk.advance(allowedTTL)
	g.expect(t, "revoked, at the allowed TTL", "Bearer "+prom, http.StatusOK)
	clk.advance(time.Nanosecond)
	g.expect(t, "revoked, past the allowed TTL", "Bearer "+prom, http.StatusForbidden)

	t.Run("API server outage", func(t *testing.T) { testOutage(t, cp, g, clk) })
	t.Run("exporter without system:auth-delegator", func(t *testing.T) { testWithoutDelegation(t, cp) })
	t.Run("deploy/rbac.yaml grants nothing more", func(t *testing.T) { testExporterRights(t, cp) })
}

// testExporterRights asks the API server what the exporter's ServiceAccount
// may do: review tokens and read what the watcher reads, nothing else.
func testExporterRights(t *testing.T, cp *cpl.ControlPlane) {
	user := "system:serviceaccount:netinspect:netinspect"
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:netinspect", "system:authenticated"}
	for _, tt := range []struct {
		attrs authorizationv1.ResourceAttributes
		want  bool
	}{
		{authorizationv1.ResourceAttributes{Verb: "create", Group: "authentication.k8s.io", Resource: "tokenreviews"}, true},
		{authorizationv1.ResourceAttributes{Verb: "create", Group: "authorization.k8s.io", Resource: "subjectaccessreviews"}, true},
		{authorizationv1.ResourceAttributes{Verb: "watch", Resource: "pods"}, true},
		{authorizationv1.ResourceAttributes{Verb: "list", Group: "discovery.k8s.io", Resource: "endpointslices"}, true},
		{authorizationv1.ResourceAttributes{Verb: "get", Resource: "secrets", Namespace: "netinspect"}, false},
		{authorizationv1.ResourceAttributes{Verb: "create", Resource: "serviceaccounts", Subresource: "token", Namespace: "monitoring", Name: "prometheus"}, false},
		{authorizationv1.ResourceAttributes{Verb: "create", Resource: "pods", Namespace: "netinspect"}, false},
		{authorizationv1.ResourceAttributes{Verb: "get", Resource: "nodes", Subresource: "proxy"}, false},
		{authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "users"}, false},
		{authorizationv1.ResourceAttributes{Verb: "create", Group: "authorization.k8s.io", Resource: "localsubjectaccessreviews", Namespace: "netinspect"}, false},
		{authorizationv1.ResourceAttributes{Verb: "update", Resource: "services", Namespace: "default"}, false},
	} {
		sar, err := cp.Client.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: user, Groups: groups, ResourceAttributes: &tt.attrs},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != tt.want {
			t.Errorf("exporter may %s %s/%s %s: %v, want %v", tt.attrs.Verb, tt.attrs.Group, tt.attrs.Resource, tt.attrs.Subresource, sar.Status.Allowed, tt.want)
		}
	}
	sar, err := cp.Client.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{User: user, Groups: groups,
			NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: "/metrics", Verb: "get"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sar.Status.Allowed {
		t.Error("the exporter may get /metrics (of the API server and of every other exporter)")
	}
}

// testOutage stops the API server: a cached caller is let in until its
// decision expires, then nobody is; every new caller is refused at once;
// once the API server is back, callers are let in again.
func testOutage(t *testing.T, cp *cpl.ControlPlane, g *guarded, clk *clock) {
	cp.GrantNonResourceURL(t, metricsReader, "monitoring", "prometheus", "/metrics", "get")
	cached := cp.ServiceAccountToken(t, "monitoring", "prometheus")
	fresh := cp.ServiceAccountToken(t, "monitoring", "prometheus")
	stranger := cp.ServiceAccountToken(t, "monitoring", "stranger")
	g.expect(t, "before the outage", "Bearer "+cached, http.StatusOK)

	cp.Stop(t)
	g.expect(t, "cached caller during the outage", "Bearer "+cached, http.StatusOK)
	g.expect(t, "new token of an allowed user during the outage", "Bearer "+fresh, http.StatusUnauthorized)
	g.expect(t, "new token of another user during the outage", "Bearer "+stranger, http.StatusUnauthorized)
	if got := g.series(t, "netinspect_auth_api_unavailable"); got != 1 {
		t.Errorf("netinspect_auth_api_unavailable = %v during the outage, want 1", got)
	}
	if got := g.series(t, "netinspect_http_requests_rejected_total", "reason", "auth_unavailable"); got != 2 {
		t.Errorf("rejected{auth_unavailable} = %v, want 2", got)
	}
	if lines := g.logs.FilterMessageSnippet("failing closed").All(); len(lines) != 1 || !strings.Contains(lines[0].ContextMap()["error"].(string), "TokenReview") {
		t.Errorf("fail-closed log lines: %v, want one naming the TokenReview", lines)
	}

	clk.advance(allowedTTL + time.Nanosecond)
	for i := range 3 {
		if got := g.get(t, "Bearer "+cached); got == http.StatusOK {
			t.Errorf("request %d of the formerly cached caller let in after its decision expired, during the outage", i)
		}
	}
	if n := g.logs.FilterMessageSnippet("failing closed").Len(); n != 1 {
		t.Errorf("%d fail-closed log lines over the outage, want 1 (no spam)", n)
	}

	cp.Restart(t)
	g.expect(t, "new token after the outage", "Bearer "+fresh, http.StatusOK)
	g.expect(t, "formerly cached caller after the outage", "Bearer "+cached, http.StatusOK)
	if got := g.series(t, "netinspect_auth_api_unavailable"); got != 0 {
		t.Errorf("netinspect_auth_api_unavailable = %v after the outage, want 0", got)
	}
	if n := g.logs.FilterMessageSnippet("recovered").Len(); n != 1 {
		t.Errorf("%d recovery log lines, want 1", n)
	}
}

// testWithoutDelegation runs the Authorizer as a ServiceAccount that may not
// create tokenreviews: every caller is refused and the log says how to fix it.
func testWithoutDelegation(t *testing.T, cp *cpl.ControlPlane) {
	nobody, _ := cp.ServiceAccountConfig(t, "netinspect", "no-delegation")
	g := newGuarded(t, kubernetes.NewForConfigOrDie(nobody), &clock{t: time.Now()})
	prom := cp.ServiceAccountToken(t, "monitoring", "prometheus")
	g.expect(t, "Prometheus, exporter without delegation", "Bearer "+prom, http.StatusUnauthorized)
	lines := g.logs.FilterMessageSnippet("failing closed").All()
	if len(lines) != 1 || !strings.Contains(lines[0].ContextMap()["fix"].(string), "system:auth-delegator") {
		t.Errorf("log lines %v, want one whose fix names system:auth-delegator", lines)
	}
}
