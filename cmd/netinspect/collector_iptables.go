package main

import (
	"github.com/alecthomas/kingpin/v2"

	"github.com/netinspect/netinspect/collector"
)

func iptablesSpec() collectorSpec {
	return collectorSpec{
		name:           collector.IPTablesName,
		defaultEnabled: true,
		flags: func(app *kingpin.Application) collectorBuilder {
			def := collector.DefaultIPTablesConfig()
			var cfg collector.IPTablesConfig
			app.Flag("collector.iptables.refresh-interval", "How often kube-proxy's iptables rules are listed (iptables-save of every table, IPv4 and IPv6); scrapes serve the latest listing.").Default(def.RefreshInterval.String()).DurationVar(&cfg.RefreshInterval)
			app.Flag("collector.iptables.timeout", "Upper bound of one listing of the iptables rules.").Default(def.Timeout.String()).DurationVar(&cfg.Timeout)
			app.Flag("collector.iptables.backend", "iptables backend to list: nft or legacy; empty detects it from kubelet's and kube-proxy's hint chains, as kubernetes-sigs/iptables-wrappers does.").Default(def.Backend).EnumVar(&cfg.Backend, collector.IPTablesBackends...)
			return func(deps collector.Deps, _ enabledSet) (collector.Collector, error) {
				return collector.NewIPTables(cfg, deps)
			}
		},
	}
}
