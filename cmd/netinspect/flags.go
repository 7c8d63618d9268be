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

	paths collector.Paths
	kube  *kubeFlags

	// collectors lists every collector with whether it runs and its
	// constructor.
	collectors []enabledCollector

	// command is "serve" (the default) or "inspect".
	command string
	inspect inspectFlags
}

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

	for _, spec := range collectorSpecs() {
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
	return cfg, 0, nil
}

func onOff(b bool) string {
	if b {
		return "enabled"
	}
	return "disabled"
}
