package main

import (
	"github.com/alecthomas/kingpin/v2"

	"github.com/netinspect/netinspect/collector"
)

// driftFlags are the --kube-proxy.drift.* flags, shared by the collectors
// that judge kube-proxy drift (iptables, nftables, ipvs: the one of the
// mode kube-proxy runs in).
type driftFlags struct {
	maxSeries int
	grace     string
	cfg       collector.DriftConfig // set by check
}

func addDriftFlags(app *kingpin.Application) *driftFlags {
	def := collector.DefaultDriftConfig()
	f := &driftFlags{}
	app.Flag("kube-proxy.drift.max-series", "Most kube_proxy_drift_service_port_seconds series (service ports whose rules disagree with the API past the grace, the oldest first); the rest count in kube_proxy_drift_series_dropped. 0: none, only the per-node counts.").
		Default(itoa(def.MaxSeries)).IntVar(&f.maxSeries)
	app.Flag("kube-proxy.drift.grace", "How long a service port's rules must disagree with the API before it counts as drift, so that normal propagation is not reported: a duration (90s), or a multiple of the refresh interval of the collector that lists kube-proxy's rules (2x: two refresh intervals, 1m at the default 30s). 0 counts at once.").
		Default(def.Grace.String()).StringVar(&f.grace)
	return f
}

// check validates the flags (exit 2 when they are bad) and sets cfg.
func (f *driftFlags) check() error {
	if f.maxSeries < 0 {
		return badFlagsf("--kube-proxy.drift.max-series=%d: must be 0 (no per-port series) or more", f.maxSeries)
	}
	g, err := collector.ParseDriftGrace(f.grace)
	if err != nil {
		return badFlagsf("--kube-proxy.drift.grace=%s: %v", f.grace, err)
	}
	f.cfg = collector.DriftConfig{MaxSeries: f.maxSeries, Grace: g}
	return nil
}
