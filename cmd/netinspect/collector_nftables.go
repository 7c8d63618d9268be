package main

import (
	"github.com/alecthomas/kingpin/v2"

	"github.com/netinspect/netinspect/collector"
)

func nftablesSpec(drift *driftFlags) collectorSpec {
	return collectorSpec{
		name:           collector.NFTablesName,
		defaultEnabled: true,
		flags: func(app *kingpin.Application) collectorBuilder {
			def := collector.DefaultNFTablesConfig()
			var cfg collector.NFTablesConfig
			app.Flag("collector.nftables.refresh-interval", "How often kube-proxy's nftables tables (ip and ip6 kube-proxy) are listed over netlink; scrapes serve the latest listing.").Default(def.RefreshInterval.String()).DurationVar(&cfg.RefreshInterval)
			app.Flag("collector.nftables.timeout", "Upper bound of one listing of the nftables tables.").Default(def.Timeout.String()).DurationVar(&cfg.Timeout)
			app.Flag("collector.nftables.service-series", "drift: kube-proxy drift against the API and per-node table counts only; all: also netinspect_nftables_service_endpoints, one series per service port of the cluster on every node.").Default(def.ServiceSeries).EnumVar(&cfg.ServiceSeries, collector.ServiceSeriesModes...)
			return func(deps collector.Deps, enabled enabledSet) (collector.Collector, error) {
				cfg.Drift = drift.cfg
				// kube_proxy_mode_info comes from the iptables collector;
				// without it, from this one.
				cfg.KubeProxyMode = !enabled[collector.IPTablesName]
				return collector.NewNFTables(cfg, deps)
			}
		},
	}
}
