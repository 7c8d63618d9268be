package kubeauth

// Error paths a real API server cannot be made to produce on cue: a
// SubjectAccessReview failing right after its TokenReview succeeded, a
// review that hangs, reviews held in flight. The cases a real API server
// does produce are in integration_test.go.

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"

	"github.com/netinspect/netinspect/web/reject"
)

type harness struct {
	a        *Authorizer
	h        http.Handler
	rejected *reject.Counter
	logs     *observer.ObservedLogs
}

func newHarness(t *testing.T, client kubernetes.Interface, mutate func(*Config)) *harness {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	rejected := reject.NewCounter()
	cfg := Config{Client: client, Path: "/metrics", AllowedTTL: time.Minute, DeniedTTL: time.Minute, CacheSize: 64,
		Logger: zap.New(core), Rejected: rejected}
	if mutate != nil {
		mutate(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := a.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("metrics\n")) }))
	return &harness{a: a, h: h, rejected: rejected, logs: logs}
}

func (hs *harness) get(ctx context.Context, token string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("GET", "/metrics", nil).WithContext(ctx)
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	hs.h.ServeHTTP(rec, r)
	return rec
}

func (hs *harness) rejections(r reject.Reason) float64 {
	return SeriesValue(hs.rejected, "netinspect_http_requests_rejected_total", "reason", string(r))
}

func (hs *harness) unavailable() float64 { return SeriesValue(hs.a, "netinspect_auth_api_unavailable") }

// SeriesValue returns the value of the counter or gauge named name, with the
// given label pairs, among the metrics of c (-1 when there is none). It is
// exported for the integration test (package kubeauth_test).
func SeriesValue(c prometheus.Collector, name string, labelPairs ...string) float64 {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labelPairs); i += 2 {
				if have[labelPairs[i]] != labelPairs[i+1] {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// authenticates answers every TokenReview with an authenticated user.
func authenticates(user string) k8stesting.ReactionFunc {
	return func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authenticationv1.TokenReview{Status: authenticationv1.TokenReviewStatus{
			Authenticated: true, User: authenticationv1.UserInfo{Username: user}}}, nil
	}
}

func allows(k8stesting.Action) (bool, runtime.Object, error) {
	return true, &authorizationv1.SubjectAccessReview{Status: authorizationv1.SubjectAccessReviewStatus{Allowed: true}}, nil
}

func TestSubjectAccessReviewErrorFailsClosedAndRecovers(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("create", "tokenreviews", authenticates("system:serviceaccount:monitoring:prometheus"))
	var sarCalls atomic.Int32
	client.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if sarCalls.Add(1) == 1 {
			return true, nil, errors.New("dial tcp 10.96.0.1:443: connect: connection refused")
		}
		return allows(a)
	})
	hs := newHarness(t, client, nil)

	if rec := hs.get(context.Background(), "tok"); rec.Code != http.StatusForbidden || strings.Contains(rec.Body.String(), "metrics") {
		t.Fatalf("access review failed: %d %q, want 403 without metrics", rec.Code, rec.Body.String())
	}
	if got := hs.rejections(reject.AuthUnavailable); got != 1 {
		t.Errorf("rejected{auth_unavailable} = %v, want 1", got)
	}
	if got := hs.unavailable(); got != 1 {
		t.Errorf("netinspect_auth_api_unavailable = %v, want 1", got)
	}
	lines := hs.logs.FilterMessageSnippet("failing closed").All()
	if len(lines) != 1 || lines[0].ContextMap()["error"] != "SubjectAccessReview: dial tcp 10.96.0.1:443: connect: connection refused" {
		t.Errorf("fail-closed log lines %v, want one with the cause", lines)
	}

	// The failure was not cached: the next request is reviewed and let in.
	if rec := hs.get(context.Background(), "tok"); rec.Code != http.StatusOK || rec.Body.String() != "metrics\n" {
		t.Fatalf("after recovery: %d %q, want 200 and the handler's body", rec.Code, rec.Body.String())
	}
	if got := hs.unavailable(); got != 0 {
		t.Errorf("netinspect_auth_api_unavailable after recovery = %v, want 0", got)
	}
	if n := hs.logs.FilterMessageSnippet("recovered").Len(); n != 1 {
		t.Errorf("%d recovery log lines, want 1", n)
	}
	if got := testutil.ToFloat64(hs.a.reviews.WithLabelValues(reviewAccess, resultError)); got != 1 {
		t.Errorf("reviews{access,error} = %v, want 1", got)
	}
}

// TestHangingAPIServerIsCutAtTheReviewTimeout points the client at a server
// that accepts the request and never answers.
func TestHangingAPIServerIsCutAtTheReviewTimeout(t *testing.T) {
	stop := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-stop }))
	t.Cleanup(hang.Close)
	t.Cleanup(func() { close(stop) }) // runs first
	client := kubernetes.NewForConfigOrDie(&rest.Config{Host: hang.URL})
	const timeout = 300 * time.Millisecond
	hs := newHarness(t, client, func(c *Config) { c.ReviewTimeout = timeout })

	start := time.Now()
	rec := hs.get(context.Background(), "tok")
	took := time.Since(start)
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("status %d, want 401", rec.Code)
	}
	if took > 10*timeout {
		t.Errorf("refused after %v; the review timeout is %v", took, timeout)
	}
	if got := hs.rejections(reject.AuthUnavailable); got != 1 {
		t.Errorf("rejected{auth_unavailable} = %v, want 1", got)
	}
	if got := hs.unavailable(); got != 1 {
		t.Errorf("netinspect_auth_api_unavailable = %v, want 1", got)
	}
}

// blockingReviews holds every TokenReview until release is closed.
type blockingReviews struct {
	entered chan string
	release chan struct{}
	calls   atomic.Int32
}

func newBlockingReviews() *blockingReviews {
	return &blockingReviews{entered: make(chan string, 16), release: make(chan struct{})}
}

func (b *blockingReviews) react(a k8stesting.Action) (bool, runtime.Object, error) {
	b.calls.Add(1)
	tr := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenReview)
	b.entered <- tr.Spec.Token
	<-b.release
	return authenticates("user-" + tr.Spec.Token)(a)
}

func TestReviewsInFlightAreBounded(t *testing.T) {
	client := fake.NewClientset()
	b := newBlockingReviews()
	client.PrependReactor("create", "tokenreviews", b.react)
	client.PrependReactor("create", "subjectaccessreviews", allows)
	hs := newHarness(t, client, func(c *Config) { c.MaxReviews = 1 })

	first := make(chan int, 1)
	go func() { first <- hs.get(context.Background(), "a").Code }()
	<-b.entered

	// Another token finds the one review slot taken: 503 at once.
	rec := hs.get(context.Background(), "b")
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("second token while the slot is taken: %d, want 503", rec.Code)
	}
	if got := hs.rejections(reject.AuthOverloaded); got != 1 {
		t.Errorf("rejected{auth_overloaded} = %v, want 1", got)
	}
	close(b.release)
	if code := <-first; code != http.StatusOK {
		t.Errorf("first token: %d, want 200", code)
	}
	// The slot is free again; the overload was not cached as a decision.
	if rec := hs.get(context.Background(), "b"); rec.Code != http.StatusOK {
		t.Errorf("second token after the first review: %d, want 200", rec.Code)
	}
	if got := hs.unavailable(); got != 0 {
		t.Errorf("an overload marked the API server unavailable")
	}
}

// TestCallerThatLeavesDoesNotCancelTheReview: the review goes on after its
// first caller disconnects, and its decision serves the next caller.
func TestCallerThatLeavesDoesNotCancelTheReview(t *testing.T) {
	client := fake.NewClientset()
	b := newBlockingReviews()
	client.PrependReactor("create", "tokenreviews", b.react)
	client.PrependReactor("create", "subjectaccessreviews", allows)
	hs := newHarness(t, client, nil)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() { done <- hs.get(ctx, "a") }()
	<-b.entered
	cancel()
	rec := <-done
	if rec.Body.Len() != 0 {
		t.Errorf("departed caller got a body: %q", rec.Body.String())
	}
	for _, r := range []reject.Reason{reject.Unauthenticated, reject.Forbidden, reject.AuthUnavailable, reject.AuthOverloaded} {
		if got := hs.rejections(r); got != 0 {
			t.Errorf("departed caller counted as rejected{%s}", r)
		}
	}
	close(b.release)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if allowed, _ := hs.a.cache.Len(); allowed == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the review of the departed caller's token was never cached")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if rec := hs.get(context.Background(), "a"); rec.Code != http.StatusOK {
		t.Errorf("next caller: %d, want 200", rec.Code)
	}
	if n := b.calls.Load(); n != 1 {
		t.Errorf("%d TokenReviews, want 1 (the next caller uses the cached decision)", n)
	}
}

func TestNewRefusesIncompleteConfig(t *testing.T) {
	ok := Config{Client: fake.NewClientset(), Path: "/metrics", CacheSize: 1, Rejected: reject.NewCounter()}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no client", func(c *Config) { c.Client = nil }, "no Kubernetes client"},
		{"no path", func(c *Config) { c.Path = "" }, "no path"},
		{"no counter", func(c *Config) { c.Rejected = nil }, "no rejection counter"},
		{"zero cache size", func(c *Config) { c.CacheSize = 0 }, "cache size 0: must be at least 1"},
		{"negative TTL", func(c *Config) { c.DeniedTTL = -time.Second }, "must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.mutate(&cfg)
			if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := New(ok); err != nil {
		t.Errorf("complete config: %v", err)
	}
}
