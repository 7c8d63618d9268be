// Package kubeauth guards the telemetry path with the Kubernetes API
// server's own identities: a request gets through only with a bearer token
// that a TokenReview authenticates and whose user a SubjectAccessReview
// allows to get the path (a non-resource URL), the checks kube-rbac-proxy and
// controller-runtime's WithAuthenticationAndAuthorization make. Prometheus
// scrapes with its ServiceAccount token and the ClusterRole it already has
// in kube-prometheus (nonResourceURLs ["/metrics"], verbs ["get"]).
//
// Decisions are cached by token digest (Cache): allowed ones for
// Config.AllowedTTL, denied ones for Config.DeniedTTL. When the API server
// cannot be asked, cached decisions keep working until they expire and
// every other request is refused (fail closed): a clear log line when that
// starts and when it ends, netinspect_auth_api_unavailable 1 meanwhile, and
// recovery on the first review that succeeds, without a restart.
//
// Concurrent requests with one token share one review (singleflight), and
// at most Config.MaxReviews reviews are in flight; beyond that a request is
// answered 503 at once, so a flood of made-up tokens costs the API server a
// bounded number of reviews and this process a bounded number of goroutines.
package kubeauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/netinspect/netinspect/web/bearer"
	"github.com/netinspect/netinspect/web/reject"
)

// Defaults of the Config fields left zero.
const (
	DefaultMaxReviews    = 16
	DefaultReviewTimeout = 5 * time.Second
)

// Config configures an Authorizer.
type Config struct {
	// Client asks the API server. Its identity needs create on tokenreviews
	// and subjectaccessreviews: the ClusterRole system:auth-delegator.
	Client kubernetes.Interface
	// Path is the non-resource URL a caller must be allowed to get (the
	// telemetry path, e.g. /metrics).
	Path string
	// AllowedTTL and DeniedTTL are how long a decision is reused; zero
	// caches nothing of that kind.
	AllowedTTL, DeniedTTL time.Duration
	// CacheSize bounds the cached decisions of each kind.
	CacheSize int
	// MaxReviews bounds the tokens under review at once (default
	// DefaultMaxReviews).
	MaxReviews int
	// ReviewTimeout bounds the TokenReview and SubjectAccessReview of one
	// token together (default DefaultReviewTimeout).
	ReviewTimeout time.Duration
	// Logger receives the fail-closed transitions (error/info) and each
	// refusal (debug).
	Logger *zap.Logger
	// Rejected counts the refused requests by reason.
	Rejected *reject.Counter
	// Now is the cache's clock (nil: time.Now).
	Now func() time.Time
}

// Authorizer is the middleware. It implements prometheus.Collector for its
// own metrics (netinspect_auth_*); refusals go to Config.Rejected.
type Authorizer struct {
	client   kubernetes.Interface
	path     string
	timeout  time.Duration
	logger   *zap.Logger
	rejected *reject.Counter
	cache    *Cache
	flight   singleflight.Group
	slots    chan struct{}

	// unavailable is true from a review that could not be made until the
	// next one that could.
	unavailable atomic.Bool

	reviews         *prometheus.CounterVec
	unavailableDesc *prometheus.Desc
	entriesDesc     *prometheus.Desc
}

// New returns an Authorizer for cfg.
func New(cfg Config) (*Authorizer, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("kubeauth: no Kubernetes client")
	case cfg.Path == "":
		return nil, errors.New("kubeauth: no path to authorize")
	case cfg.Rejected == nil:
		return nil, errors.New("kubeauth: no rejection counter")
	case cfg.CacheSize < 1:
		return nil, fmt.Errorf("cache size %d: must be at least 1", cfg.CacheSize)
	case cfg.AllowedTTL < 0 || cfg.DeniedTTL < 0:
		return nil, fmt.Errorf("cache TTLs %v (allowed) and %v (denied): must not be negative", cfg.AllowedTTL, cfg.DeniedTTL)
	}
	if cfg.MaxReviews <= 0 {
		cfg.MaxReviews = DefaultMaxReviews
	}
	if cfg.ReviewTimeout <= 0 {
		cfg.ReviewTimeout = DefaultReviewTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	a := &Authorizer{
		client:   cfg.Client,
		path:     cfg.Path,
		timeout:  cfg.ReviewTimeout,
		logger:   cfg.Logger,
		rejected: cfg.Rejected,
		cache:    NewCache(cfg.CacheSize, cfg.AllowedTTL, cfg.DeniedTTL, cfg.Now),
		slots:    make(chan struct{}, cfg.MaxReviews),
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "netinspect_auth_reviews_total",
			Help: "Reviews asked of the Kubernetes API server for requests whose decision was not cached: review is token (TokenReview) or access (SubjectAccessReview); result is allowed, denied or error (API server not reachable, timed out or refused the exporter).",
		}, []string{"review", "result"}),
		unavailableDesc: prometheus.NewDesc("netinspect_auth_api_unavailable",
			"1 while the last review could not be made (API server unreachable, timed out, or the exporter lacks system:auth-delegator): only callers with a cached decision are let in until a review succeeds; 0 otherwise.",
			nil, nil),
		entriesDesc: prometheus.NewDesc("netinspect_auth_cache_entries",
			"Unexpired cached decisions, by decision (allowed, denied).",
			[]string{"decision"}, nil),
	}
	for _, review := range []string{reviewToken, reviewAccess} {
		for _, result := range []string{resultAllowed, resultDenied, resultError} {
			a.reviews.WithLabelValues(review, result)
		}
	}
	a.rejected.Add(reject.Unauthenticated, reject.Forbidden, reject.AuthUnavailable, reject.AuthOverloaded)
	return a, nil
}

const (
	reviewToken   = "token"
	reviewAccess  = "access"
	resultAllowed = "allowed"
	resultDenied  = "denied"
	resultError   = "error"
)

// errOverloaded is returned when MaxReviews reviews are already in flight.
var errOverloaded = errors.New("too many token reviews in flight")

// unavailableError is a review that could not be made. status is what the
// caller gets: 401 when its token could not be reviewed, 403 when its
// access could not.
type unavailableError struct {
	status int
	review string
	err    error
}

func (e *unavailableError) Error() string { return e.review + ": " + e.err.Error() }
func (e *unavailableError) Unwrap() error { return e.err }

// Wrap returns next guarded by the Authorizer.
func (a *Authorizer) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := bearer.Token(r.Header)
		if !ok {
			a.refuse(w, r, http.StatusUnauthorized, reject.Unauthenticated, "", "no well-formed bearer token")
			return
		}
		d, err := a.decide(r.Context(), token)
		var unavailable *unavailableError
		switch {
		case err == nil && d.Allowed():
			next.ServeHTTP(w, r)
		case err == nil && d.Status == http.StatusUnauthorized:
			a.refuse(w, r, d.Status, reject.Unauthenticated, d.User, "token not authenticated")
		case err == nil:
			a.refuse(w, r, d.Status, reject.Forbidden, d.User, "user may not get "+a.path)
		case errors.As(err, &unavailable):
			a.refuse(w, r, unavailable.status, reject.AuthUnavailable, "", err.Error())
		case errors.Is(err, errOverloaded):
			a.refuse(w, r, http.StatusServiceUnavailable, reject.AuthOverloaded, "", err.Error())
		default: // the caller went away while its token was under review
		}
	})
}

func (a *Authorizer) refuse(w http.ResponseWriter, r *http.Request, status int, reason reject.Reason, user, why string) {
	a.rejected.Inc(reason)
	if ce := a.logger.Check(zap.DebugLevel, "request refused"); ce != nil {
		ce.Write(zap.Int("status", status), zap.String("reason", string(reason)), zap.String("user", user),
			zap.String("detail", why), zap.String("remote", r.RemoteAddr), zap.String("path", r.URL.Path))
	}
	switch status {
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="netinspect"`)
		http.Error(w, "Unauthorized", status)
	case http.StatusForbidden:
		http.Error(w, "Forbidden", status)
	default:
		http.Error(w, "Service Unavailable: "+why, status)
	}
}

// decide returns the cached decision for token or reviews it, sharing the
// review with concurrent requests carrying the same token. A review runs
// on its own deadline, so that callers who leave do not cancel it for the
// others.
func (a *Authorizer) decide(ctx context.Context, token string) (Decision, error) {
	key := DigestOf(token)
	if d, ok := a.cache.Get(key); ok {
		return d, nil
	}
	ch := a.flight.DoChan(string(key[:]), func() (any, error) {
		if d, ok := a.cache.Get(key); ok { // a flight that just ended stored it
			return d, nil
		}
		select {
		case a.slots <- struct{}{}:
		default:
			return nil, errOverloaded
		}
		defer func() { <-a.slots }()
		d, err := a.review(token)
		if err != nil {
			a.markUnavailable(err)
			return nil, err
		}
		a.markAvailable()
		a.cache.Add(key, d)
		return d, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return Decision{}, res.Err
		}
		return res.Val.(Decision), nil
	case <-ctx.Done():
		return Decision{}, ctx.Err()
	}
}

// review asks the API server who the token belongs to and whether that
// user may get the path.
func (a *Authorizer) review(token string) (Decision, error) {
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	tr, err := a.client.AuthenticationV1().TokenReviews().Create(ctx,
		&authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		a.reviews.WithLabelValues(reviewToken, resultError).Inc()
		return Decision{}, &unavailableError{status: http.StatusUnauthorized, review: "TokenReview", err: err}
	}
	if !tr.Status.Authenticated {
		a.reviews.WithLabelValues(reviewToken, resultDenied).Inc()
		a.logger.Debug("token not authenticated", zap.String("error", tr.Status.Error))
		return Decision{Status: http.StatusUnauthorized}, nil
	}
	a.reviews.WithLabelValues(reviewToken, resultAllowed).Inc()
	u := tr.Status.User
	extra := make(map[string]authorizationv1.ExtraValue, len(u.Extra))
	for k, v := range u.Extra {
		extra[k] = authorizationv1.ExtraValue(v)
	}
	sar, err := a.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: a.path, Verb: "get"},
			User:                  u.Username,
			UID:                   u.UID,
			Groups:                u.Groups,
			Extra:                 extra,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		a.reviews.WithLabelValues(reviewAccess, resultError).Inc()
		return Decision{}, &unavailableError{status: http.StatusForbidden, review: "SubjectAccessReview", err: err}
	}
	if !sar.Status.Allowed {
		a.reviews.WithLabelValues(reviewAccess, resultDenied).Inc()
		a.logger.Debug("access denied", zap.String("user", u.Username), zap.String("path", a.path),
			zap.String("reason", sar.Status.Reason), zap.String("evaluation_error", sar.Status.EvaluationError))
		return Decision{Status: http.StatusForbidden, User: u.Username}, nil
	}
	a.reviews.WithLabelValues(reviewAccess, resultAllowed).Inc()
	return Decision{Status: http.StatusOK, User: u.Username}, nil
}

func (a *Authorizer) markUnavailable(err error) {
	if !a.unavailable.CompareAndSwap(false, true) {
		a.logger.Debug("review failed again", zap.Error(err))
		return
	}
	fields := []zap.Field{zap.Error(err)}
	if apierrors.IsForbidden(err) {
		fields = append(fields, zap.String("fix", "let the exporter's ServiceAccount create tokenreviews and subjectaccessreviews: bind it to the ClusterRole system:auth-delegator (deploy/rbac.yaml)"))
	}
	a.logger.Error("kubernetes auth failing closed: the API server could not review a token; only callers with a cached decision are let in until a review succeeds", fields...)
}

func (a *Authorizer) markAvailable() {
	if a.unavailable.CompareAndSwap(true, false) {
		a.logger.Info("kubernetes auth recovered: the API server reviews tokens again")
	}
}

// Describe implements prometheus.Collector.
func (a *Authorizer) Describe(ch chan<- *prometheus.Desc) {
	a.reviews.Describe(ch)
	ch <- a.unavailableDesc
	ch <- a.entriesDesc
}

// Collect implements prometheus.Collector.
func (a *Authorizer) Collect(ch chan<- prometheus.Metric) {
	a.reviews.Collect(ch)
	v := 0.0
	if a.unavailable.Load() {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(a.unavailableDesc, prometheus.GaugeValue, v)
	allowed, denied := a.cache.Len()
	ch <- prometheus.MustNewConstMetric(a.entriesDesc, prometheus.GaugeValue, float64(allowed), "allowed")
	ch <- prometheus.MustNewConstMetric(a.entriesDesc, prometheus.GaugeValue, float64(denied), "denied")
}
