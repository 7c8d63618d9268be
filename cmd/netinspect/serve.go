package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zapcore"

	"github.com/netinspect/netinspect/collector"
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

	mux := http.NewServeMux()
	mux.Handle(cfg.metricsPath, newMetricsHandler(set, static, logger, cfg.scrapeDefaultTimeout, cfg.scrapeTimeoutOffset))
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
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "netinspect",
			Description: "Kubernetes node networking exporter: conntrack, kube-proxy rules, IPVS and pod veths",
			Version:     version,
			Links: []web.LandingLinks{
				{Address: cfg.metricsPath, Text: "Metrics"},
				{Address: "/healthz", Text: "Health"},
				{Address: "/readyz", Text: "Readiness", Description: "includes the Kubernetes cache state"},
			},
		})
		if err != nil {
			return fmt.Errorf("build landing page: %w", err)
		}
		mux.Handle("/", landing)
	}

	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
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
