package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/netinspect/netinspect/collector"
)

// defaultListenAddress is outside 9100-9999 (fully allocated to other
// exporters) and clear of the kubelet, kube-proxy and control-plane ports
// (10248-10259), since the DaemonSet runs on the host network.
const defaultListenAddress = ":10271"

// config is everything the flags decide.
type config struct {
	web         *web.FlagConfig
	metricsPath string
	logLevel    string
	logFormat   string

	scrapeDefaultTimeout time.Duration
	scrapeTimeoutOffset  time.Duration

	guard webGuardFlags

	paths collector.Paths
	kube  *kubeFlags
	drift *driftFlags

	// collectors lists every collector with whether it runs and its
	// constructor.
	collectors []enabledCollector

	// command is "serve" (the default) or "inspect".
	command string
	inspect inspectFlags
}

// webGuardFlags decide how the telemetry path is guarded: TLS, Kubernetes
// authentication and authorization, and the bound on concurrent scrapes.
type webGuardFlags struct {
	maxRequests int

	tlsCertFile, tlsKeyFile string
	tlsSelfSigned           bool

	kubeAuth           bool
	kubeAuthAllowedTTL time.Duration
	kubeAuthDeniedTTL  time.Duration
	kubeAuthCacheSize  int
}

func addWebGuardFlags(app *kingpin.Application, f *webGuardFlags) {
	app.Flag("web.max-requests", "Maximum number of scrapes of the telemetry path served at once; beyond it a request gets 503 at once and counts in netinspect_http_requests_rejected_total{reason=\"max_requests\"} (0: no limit).").
		Default("40").IntVar(&f.maxRequests)
	app.Flag("web.tls.cert-file", "Serve TLS with this PEM certificate (chain), e.g. tls.crt of a kubernetes.io/tls Secret mounted as a volume; read again when it changes. Needs --web.tls.key-file.").
		PlaceHolder("FILE").StringVar(&f.tlsCertFile)
	app.Flag("web.tls.key-file", "PEM private key of --web.tls.cert-file, e.g. tls.key of the same Secret.").
		PlaceHolder("FILE").StringVar(&f.tlsKeyFile)
	app.Flag("web.tls.self-signed", "Serve TLS with a self-signed certificate made at start-up for this host's names (renewed in memory); for clients that do not verify it, such as Prometheus with insecureSkipVerify.").
		BoolVar(&f.tlsSelfSigned)
	app.Flag("web.kubernetes-auth", "Let into the telemetry path only requests whose bearer token the Kubernetes API server authenticates (TokenReview) and whose user may get the path (SubjectAccessReview, non-resource URL, verb get); /, /healthz and /readyz stay open. Uses --kubeconfig or the in-cluster config; the identity needs the ClusterRole system:auth-delegator.").
		BoolVar(&f.kubeAuth)
	app.Flag("web.kubernetes-auth.allowed-ttl", "How long a token that was let in is let in again without asking the API server (also how long a revoked right keeps working).").
		Default("5m").DurationVar(&f.kubeAuthAllowedTTL)
	app.Flag("web.kubernetes-auth.denied-ttl", "How long a token that was refused is refused again without asking the API server.").
		Default("30s").DurationVar(&f.kubeAuthDeniedTTL)
	app.Flag("web.kubernetes-auth.cache-size", "Maximum number of cached decisions of each kind (allowed, denied); the least recently used go first.").
		Default("1024").IntVar(&f.kubeAuthCacheSize)
}

// check rejects contradictory or out-of-range values (exit 2).
func (f *webGuardFlags) check() error {
	switch {
	case f.maxRequests < 0:
		return badFlagsf("--web.max-requests=%d: must be 0 (no limit) or more", f.maxRequests)
	case (f.tlsCertFile == "") != (f.tlsKeyFile == ""):
		return badFlagsf("--web.tls.cert-file and --web.tls.key-file go together: give both or neither")
	case f.tlsSelfSigned && f.tlsCertFile != "":
		return badFlagsf("--web.tls.self-signed and --web.tls.cert-file both choose the serving certificate: give one")
	case f.kubeAuthCacheSize < 1:
		return badFlagsf("--web.kubernetes-auth.cache-size=%d: must be at least 1", f.kubeAuthCacheSize)
	case f.kubeAuthAllowedTTL < 0 || f.kubeAuthDeniedTTL < 0:
		return badFlagsf("--web.kubernetes-auth.allowed-ttl and --web.kubernetes-auth.denied-ttl must not be negative")
	}
	return nil
}

// tls reports whether the TLS flags serve TLS.
func (f *webGuardFlags) tls() bool { return f.tlsSelfSigned || f.tlsCertFile != "" }

// inspectFlags are the options of `netinspect inspect`.
type inspectFlags struct {
	output    string
	namespace string
	pod       string
	service   string
	timeout   time.Duration
}

type enabledCollector struct {
	name    string
	enabled *bool
	build   collectorBuilder
}

// errTerminated is what kingpin's terminate hook panics with, so that
// --help and --version return from parseFlags instead of exiting the process.
type errTerminated struct{ code int }

// parseFlags parses args into a config. It returns (nil, 0, nil) after
// --help or --version, and a non-nil error with the exit code on bad flags.
func parseFlags(args []string, stdout, stderr io.Writer) (cfg *config, code int, err error) {
	app := kingpin.New("netinspect", "Kubernetes node networking exporter for Prometheus: conntrack, kube-proxy rules, IPVS, pod veths.")
	app.UsageWriter(stdout)
	app.ErrorWriter(stderr)
	app.HelpFlag.Short('h')
	app.Version(versionText(version, revision))

	cfg = &config{
		web: kingpinflag.AddFlags(app, defaultListenAddress),
	}
	app.Command("serve", "Serve metrics (the default).").Default()
	inspect := app.Command("inspect", "Print a one-shot report of this node's networking, from the same collectors, and exit.")
	inspect.Flag("output", "Report format.").Short('o').Default("table").EnumVar(&cfg.inspect.output, "table", "json")
	inspect.Flag("namespace", "Only pods and services of this namespace.").StringVar(&cfg.inspect.namespace)
	inspect.Flag("pod", "Only this pod (and the services it backs).").StringVar(&cfg.inspect.pod)
	inspect.Flag("service", "Only this service.").StringVar(&cfg.inspect.service)
	inspect.Flag("timeout", "How long to wait for the Kubernetes cache and the first background passes (rules, attribution).").Default("30s").DurationVar(&cfg.inspect.timeout)
	app.Flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").StringVar(&cfg.metricsPath)
	app.Flag("log.level", "Only log messages with the given severity or above: debug, info, warn, error.").Default("info").StringVar(&cfg.logLevel)
	app.Flag("log.format", "Output format of log messages.").Default("json").EnumVar(&cfg.logFormat, "json", "console")
	app.Flag("scrape.default-timeout", "Deadline of a scrape when Prometheus sends no X-Prometheus-Scrape-Timeout-Seconds header.").Default("10s").DurationVar(&cfg.scrapeDefaultTimeout)
	app.Flag("scrape.timeout-offset", "Taken off the scrape timeout Prometheus announces, to leave time to send the response.").Default("500ms").DurationVar(&cfg.scrapeTimeoutOffset)
	app.Flag("path.procfs", "procfs mountpoint (the host's /proc is mounted at /host/proc in the DaemonSet).").Default("/proc").StringVar(&cfg.paths.ProcFS)
	app.Flag("path.netns", "Directory of the container runtime's network namespace bind mounts.").Default("/run/netns").StringVar(&cfg.paths.NetNS)
	cfg.kube = addKubeFlags(app)
	addWebGuardFlags(app, &cfg.guard)
	cfg.drift = addDriftFlags(app)

	for _, spec := range collectorSpecs(cfg.drift) {
		help := fmt.Sprintf("Enable the %s collector (default: %s).", spec.name, onOff(spec.defaultEnabled))
		enabled := app.Flag("collector."+spec.name, help).Default(fmt.Sprint(spec.defaultEnabled)).Bool()
		cfg.collectors = append(cfg.collectors, enabledCollector{
			name: spec.name, enabled: enabled, build: spec.flags(app),
		})
	}

	app.Terminate(func(code int) { panic(errTerminated{code: code}) })
	defer func() {
		if r := recover(); r != nil {
			t, ok := r.(errTerminated)
			if !ok {
				panic(r)
			}
			cfg, code, err = nil, t.code, nil
			if t.code != 0 {
				code, err = exitBadFlags, errors.New("flag parser terminated")
			}
		}
	}()

	command, perr := app.Parse(args)
	if perr != nil {
		fmt.Fprintf(stderr, "netinspect: %v\n\n", perr)
		app.UsageWriter(stderr)
		app.Usage(nil)
		return nil, exitBadFlags, perr
	}
	cfg.command = command
	if err := cfg.drift.check(); err != nil {
		fmt.Fprintf(stderr, "netinspect: %v\n\n", err)
		app.UsageWriter(stderr)
		app.Usage(nil)
		return nil, exitBadFlags, err
	}
	// The collectors' constructors validate their configs; building them
	// once here, with no Kubernetes index, makes a rejected value a bad
	// flag (exit 2, with usage) before anything starts.
	if _, err := buildCollectors(cfg, collector.Deps{Paths: cfg.paths}); err != nil {
		fmt.Fprintf(stderr, "netinspect: %v\n\n", err)
		app.UsageWriter(stderr)
		app.Usage(nil)
		return nil, exitBadFlags, err
	}
	return cfg, 0, nil
}

func onOff(b bool) string {
	if b {
		return "enabled"
	}
	return "disabled"
}
