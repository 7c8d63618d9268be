package main

import (
	"github.com/alecthomas/kingpin/v2"

	"github.com/netinspect/netinspect/collector"
)

func nftablesSpec() collectorSpec {
	return collectorSpec{
		name:           collector.NFTablesName,
		defaultEnabled: true,
		flags: func(app *kingpin.Application) collectorBuilder {
			var cfg collector.NFTablesConfig
			app.Flag("collector.nftables.refresh-interval", "How often kube-proxy's nftables tables (ip and ip6 kube-proxy) are listed over netlink; scrapes serve the latest listing.").Default("30s").DurationVar(&cfg.RefreshInterval)
			app.Flag("collector.nftables.timeout", "Upper bound of one listing of the nftables tables.").Default("1m").DurationVar(&cfg.Timeout)
			return func(deps collector.Deps) (collector.Collector, error) {
				return collector.NewNFTables(cfg, deps), nil
			}
		},
	}
}
