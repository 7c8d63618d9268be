package main

import (
	"github.com/alecthomas/kingpin/v2"

	"github.com/netinspect/netinspect/collector"
)

func iptablesSpec(drift *driftFlags) collectorSpec {
	return collectorSpec{
		name:           collector.IPTablesName,
		defaultEnabled: true,
		flags: func(app *kingpin.Application) collectorBuilder {
			def := collector.DefaultIPTablesConfig()
			var cfg collector.IPTablesConfig
			app.Flag("collector.iptables.refresh-interval", "How often kube-proxy's iptables rules are listed (iptables-save of every table, IPv4 and IPv6); scrapes serve the latest listing.").Default(def.RefreshInterval.String()).DurationVar(&cfg.RefreshInterval)
			app.Flag("collector.iptables.timeout", "Upper bound of one listing of the iptables rules.").Default(def.Timeout.String()).DurationVar(&cfg.Timeout)
			app.Flag("collector.iptables.backend", "iptables backend to list: nft or legacy; empty detects it from kubelet's and kube-proxy's hint chains, as kubernetes-sigs/iptables-wrappers does.").Default(def.Backend).EnumVar(&cfg.Backend, collector.IPTablesBackends...)
			app.Flag("collector.iptables.service-series", "drift: kube-proxy drift against the API and per-node rule counts only; all: also netinspect_iptables_service_endpoints, one series per service port of the cluster on every node.").Default(def.ServiceSeries).EnumVar(&cfg.ServiceSeries, collector.ServiceSeriesModes...)
			return func(deps collector.Deps, _ enabledSet) (collector.Collector, error) {
				cfg.Drift = drift.cfg
				return collector.NewIPTables(cfg, deps)
			}
		},
	}
}
