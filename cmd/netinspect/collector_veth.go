package main

import (
	"strings"

	"github.com/alecthomas/kingpin/v2"

	"github.com/netinspect/netinspect/collector"
)

func vethSpec() collectorSpec {
	return collectorSpec{
		name:           collector.VethName,
		defaultEnabled: true,
		flags: func(app *kingpin.Application) collectorBuilder {
			var cfg collector.VethConfig
			methods := app.Flag("collector.veth.methods",
				"Comma-separated veth-to-pod mapping methods, in order of precedence: netns (enter pod network namespaces from --path.procfs and --path.netns), route (host /32 and /128 routes through a veth), fdb (bridge neighbour table and forwarding database).").
				Default(strings.Join(collector.VethMethods(), ",")).String()
			app.Flag("collector.veth.rescan-interval",
				"Longest time the veth-to-pod mapping is reused while the node's veths stay the same; a veth appearing or going triggers a rescan at the next scrape.").
				Default("1m").DurationVar(&cfg.RescanInterval)
			return func(deps collector.Deps) (collector.Collector, error) {
				for _, m := range strings.Split(*methods, ",") {
					if m = strings.TrimSpace(m); m != "" {
						cfg.Methods = append(cfg.Methods, m)
					}
				}
				return collector.NewVeth(cfg, deps)
			}
		},
	}
}
