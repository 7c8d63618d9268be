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
			var cfg collector.IPTablesConfig
			app.Flag("collector.iptables.refresh-interval", "How often kube-proxy's iptables rules are listed (iptables-save of every table, IPv4 and IPv6); scrapes serve the latest listing.").Default("30s").DurationVar(&cfg.RefreshInterval)
			app.Flag("collector.iptables.timeout", "Upper bound of one listing of the iptables rules.").Default("1m").DurationVar(&cfg.Timeout)
			app.Flag("collector.iptables.backend", "iptables backend to list: nft or legacy; empty detects it from kubelet's and kube-proxy's hint chains, as kubernetes-sigs/iptables-wrappers does.").Default("").EnumVar(&cfg.Backend, "", "nft", "legacy")
			return func(deps collector.Deps) (collector.Collector, error) {
				return collector.NewIPTables(cfg, deps), nil
			}
		},
	}
}
