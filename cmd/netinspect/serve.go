package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zapcore"
	"go.yaml.in/yaml/v3"
	"k8s.io/client-go/kubernetes"

	"github.com/netinspect/netinspect/collector"
	"github.com/netinspect/netinspect/web/kubeauth"
	"github.com/netinspect/netinspect/web/reject"
	"github.com/netinspect/netinspect/web/servingcert"
)

// serve runs the exporter until ctx is done. Errors returned before serving
// starts say what to fix; the process then exits 1.
func serve(ctx context.Context, cfg *config, stderr io.Writer) error {
	logger, err := newLogger(cfg.logLevel, cfg.logFormat, stderr)
	if err != nil {
		return err
	}
	defer logger.Sync() //nolint:errcheck // nothing to do about a failed flush at exit

	if *cfg.web.WebConfigFile != "" {
		if err := web.Validate(*cfg.web.WebConfigFile); err != nil {
			return fmt.Errorf("web config file %q (--web.config.file) is not usable: %w; fix or remove it", *cfg.web.WebConfigFile, err)
		}
	}

	static := prometheus.NewRegistry()
	static.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newBuildInfo(),
	)
	guard, err := newWebGuard(cfg, logger, static)
	if err != nil {
		return err
	}

	index, kubeReady, err := startKube(ctx, cfg.kube, logger, static)
	if err != nil {
		return err
	}
	deps := collector.Deps{Logger: logger, Paths: cfg.paths, Index: index}

	built, err := buildCollectors(cfg, deps)
	if err != nil {
		return err
	}
	enabled := map[string]collector.Collector{}
	for _, c := range built {
		if s, ok := c.Collector.(collector.Starter); ok {
			if err := s.Start(ctx); err != nil {
				return fmt.Errorf("start collector %s: %w", c.Name, err)
			}
		}
		enabled[c.Name] = c.Collector
	}
	set := collector.NewSet(logger, enabled)
	logger.Info("starting netinspect", zap.String("version", version), zap.String("revision", revision),
		zap.Strings("collectors", set.Names()))

	listeners, err := listen(*cfg.web.WebListenAddresses)
	if err != nil {
		return err
	}
	listeners = guard.listeners(listeners)

	mux := http.NewServeMux()
	mux.Handle(cfg.metricsPath, guard.handler(newMetricsHandler(set, static, logger, cfg.scrapeDefaultTimeout, cfg.scrapeTimeoutOffset)))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		// Node metrics serve whether or not Kubernetes answers, so readiness
		// only reports the cache state rather than failing on it.
		_, detail := kubeReady()
		fmt.Fprintf(w, "ok: serving metrics; %s\n", detail)
	})
	if cfg.metricsPath != "/" {
		landingVersion, metricsLink := version, "Metrics"
		if guard.auth != nil {
			// Anyone who reaches the port sees this page: nothing on it
			// that helps an attacker (no version).
			landingVersion, metricsLink = "", "Metrics (bearer token required)"
		}
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "netinspect",
			Description: "Kubernetes node networking exporter: conntrack, kube-proxy rules, IPVS and pod veths",
			Version:     landingVersion,
			Links: []web.LandingLinks{
				{Address: cfg.metricsPath, Text: metricsLink},
				{Address: "/healthz", Text: "Health"},
				{Address: "/readyz", Text: "Readiness", Description: "includes the Kubernetes cache state"},
			},
		})
		if err != nil {
			return fmt.Errorf("build landing page: %w", err)
		}
		mux.Handle("/", landing)
	}

	// IdleTimeout closes keep-alive connections a client left open, so a
	// burst of clients does not leave goroutines behind.
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	// net/http logs every failed TLS handshake (port scanners, plain HTTP
	// on the TLS port): in the exporter's log format, at debug level.
	if httpLog, err := zap.NewStdLogAt(logger.Named("http"), zapcore.DebugLevel); err == nil {
		server.ErrorLog = httpLog
	}
	serveErr := make(chan error, 1)
	go func() {
		serveErr <- web.ServeMultiple(listeners, server, cfg.web, slog.New(zapslog.NewHandler(logger.Core())))
	}()

	select {
	case err := <-serveErr:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serving HTTP: %w", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := server.Shutdown(shutdownCtx); err != nil {
		logger.Warn("graceful shutdown incomplete", zap.Error(err))
	}
	return nil
}

// webGuard stands between a client and the telemetry path: TLS on the
// listeners, Kubernetes authentication and authorization, and the bound on
// concurrent scrapes. Its metrics are on the static registry.
type webGuard struct {
	tls         *servingcert.Source
	auth        *kubeauth.Authorizer
	rejected    *reject.Counter
	maxRequests int
}

func newWebGuard(cfg *config, logger *zap.Logger, reg prometheus.Registerer) (*webGuard, error) {
	f := &cfg.guard
	if err := f.check(); err != nil {
		return nil, err
	}
	g := &webGuard{rejected: reject.NewCounter(), maxRequests: f.maxRequests}
	webConfigTLS, err := webConfigServesTLS(*cfg.web.WebConfigFile)
	if err != nil {
		return nil, err
	}
	if f.tls() {
		if webConfigTLS {
			return nil, fmt.Errorf("web config file %q (--web.config.file) has a tls_server_config and --web.tls.* serve TLS too: keep one", *cfg.web.WebConfigFile)
		}
		src, err := servingcert.New(servingcert.Config{
			CertFile: f.tlsCertFile, KeyFile: f.tlsKeyFile,
			Hosts:  selfSignedHosts(cfg.kube.nodeName),
			Logger: logger.Named("tls"),
		})
		if err != nil {
			return nil, fmt.Errorf("serving certificate (--web.tls.cert-file, --web.tls.key-file): %w; fix the files or their paths", err)
		}
		if err := reg.Register(src); err != nil {
			return nil, fmt.Errorf("register TLS metrics: %w", err)
		}
		g.tls = src
	}
	if f.kubeAuth {
		rc, why, err := cfg.kube.restConfig()
		if err != nil {
			return nil, err
		}
		if rc == nil {
			return nil, fmt.Errorf("--web.kubernetes-auth needs the Kubernetes API to review tokens, but there is none (%s): run in a cluster or give --kubeconfig", why)
		}
		client, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client for --web.kubernetes-auth: %w", err)
		}
		a, err := kubeauth.New(kubeauth.Config{
			Client: client, Path: cfg.metricsPath,
			AllowedTTL: f.kubeAuthAllowedTTL, DeniedTTL: f.kubeAuthDeniedTTL, CacheSize: f.kubeAuthCacheSize,
			Logger: logger.Named("auth"), Rejected: g.rejected,
		})
		if err != nil {
			return nil, badFlagsf("--web.kubernetes-auth: %v", err)
		}
		if err := reg.Register(a); err != nil {
			return nil, fmt.Errorf("register auth metrics: %w", err)
		}
		g.auth = a
		if !f.tls() && !webConfigTLS {
			logger.Warn("--web.kubernetes-auth without TLS: bearer tokens cross the network in clear text; add --web.tls.self-signed or --web.tls.cert-file")
		}
		logger.Info("kubernetes authentication on the telemetry path", zap.String("path", cfg.metricsPath), zap.String("api_server", rc.Host),
			zap.Duration("allowed_ttl", f.kubeAuthAllowedTTL), zap.Duration("denied_ttl", f.kubeAuthDeniedTTL))
	}
	if err := reg.Register(g.rejected); err != nil {
		return nil, fmt.Errorf("register rejection metrics: %w", err)
	}
	return g, nil
}

// handler guards the telemetry handler: authentication first, so that only
// callers that are let in take one of the --web.max-requests slots.
func (g *webGuard) handler(metrics http.Handler) http.Handler {
	h := reject.MaxInFlight(g.maxRequests, g.rejected, metrics)
	if g.auth != nil {
		h = g.auth.Wrap(h)
	}
	return h
}

// listeners wraps each listener in TLS when the --web.tls flags serve it;
// exporter-toolkit then serves them as they are (its own TLS is off).
func (g *webGuard) listeners(ls []net.Listener) []net.Listener {
	if g.tls == nil {
		return ls
	}
	out := make([]net.Listener, len(ls))
	for i, l := range ls {
		out[i] = tls.NewListener(l, g.tls.TLSConfig())
	}
	return out
}

// webConfigServesTLS reports whether an exporter-toolkit web config file
// has a tls_server_config (it was validated before).
func webConfigServesTLS(path string) (bool, error) {
	if path == "" {
		return false, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read web config file %q (--web.config.file): %w", path, err)
	}
	var c struct {
		TLS map[string]any `yaml:"tls_server_config"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		return false, fmt.Errorf("web config file %q (--web.config.file): %w", path, err)
	}
	return len(c.TLS) > 0, nil
}

// selfSignedHosts are the names a self-signed certificate is made for: the
// host's (with hostNetwork, the node's) and loopback's.
func selfSignedHosts(nodeName string) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	if nodeName != "" && !slices.Contains(hosts, nodeName) {
		hosts = append(hosts, nodeName)
	}
	return hosts
}

// listen binds every address up front, so that a port in use stops the start
// with a clear message instead of failing later in the background.
func listen(addresses []string) ([]net.Listener, error) {
	var ls []net.Listener
	for _, addr := range addresses {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			for _, prev := range ls {
				prev.Close()
			}
			return nil, fmt.Errorf("listen on %s: %w; choose a free address with --web.listen-address or stop the process that holds it", addr, err)
		}
		ls = append(ls, l)
	}
	return ls, nil
}

func newLogger(level, format string, out io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log.level=%q is not a log level; use one of debug, info, warn, error", level)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if format == "console" {
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(out), lvl)), nil
}

func newBuildInfo() prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: collector.Namespace,
		Name:      "build_info",
		Help:      "A metric with a constant '1' value labelled by the version, revision and Go version netinspect was built from.",
	}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(version, revision, runtime.Version()).Set(1)
	return g
}

// metricsHandler serves one scrape: the static registry plus every enabled
// collector, bounded by the deadline Prometheus announces.
type metricsHandler struct {
	set            *collector.Set
	static         *prometheus.Registry
	logger         *zap.Logger
	defaultTimeout time.Duration
	offset         time.Duration
	errorLog       promhttp.Logger
}

// minScrapeTimeout keeps a tiny or negative announced timeout from turning
// every collection into an immediate failure.
const minScrapeTimeout = 100 * time.Millisecond

func newMetricsHandler(set *collector.Set, static *prometheus.Registry, logger *zap.Logger, defaultTimeout, offset time.Duration) http.Handler {
	h := &metricsHandler{
		set: set, static: static, logger: logger,
		defaultTimeout: defaultTimeout, offset: offset,
		errorLog: zap.NewStdLog(logger.Named("promhttp")),
	}
	return promhttp.InstrumentMetricHandler(static, h)
}

func (h *metricsHandler) timeout(r *http.Request) time.Duration {
	t := h.defaultTimeout
	if v := r.Header.Get("X-Prometheus-Scrape-Timeout-Seconds"); v != "" {
		if s, err := strconv.ParseFloat(v, 64); err == nil && s > 0 {
			t = time.Duration(s*float64(time.Second)) - h.offset
		}
	}
	return max(t, minScrapeTimeout)
}

func (h *metricsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout(r))
	defer cancel()
	scrape := prometheus.NewRegistry()
	if err := scrape.Register(h.set.Scrape(ctx)); err != nil {
		http.Error(w, "register collectors: "+err.Error(), http.StatusInternalServerError)
		return
	}
	promhttp.HandlerFor(prometheus.Gatherers{h.static, scrape}, promhttp.HandlerOpts{
		ErrorLog:      h.errorLog,
		ErrorHandling: promhttp.ContinueOnError,
	}).ServeHTTP(w, r)
}
