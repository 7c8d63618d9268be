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
			def := collector.DefaultVethConfig()
			var cfg collector.VethConfig
			methods := app.Flag("collector.veth.methods",
				"Comma-separated veth-to-pod mapping methods, in order of precedence: netns (enter pod network namespaces from --path.procfs and --path.netns), route (host /32 and /128 routes through a veth), fdb (bridge neighbour table and forwarding database).").
				Default(strings.Join(def.Methods, ",")).String()
			app.Flag("collector.veth.rescan-interval",
				"Longest time the veth-to-pod mapping is reused while the node's veths stay the same; a veth appearing or going triggers a rescan at the next scrape.").
				Default(def.RescanInterval.String()).DurationVar(&cfg.RescanInterval)
			app.Flag("collector.veth.pod-conntrack",
				"Read, on every scrape, the conntrack table of each pod network namespace the netns method entered (one netlink request per pod): pod_conntrack_entries for pods whose namespace tracks connections.").
				Default(btoa(def.PodConntrack)).BoolVar(&cfg.PodConntrack)
			return func(deps collector.Deps, _ enabledSet) (collector.Collector, error) {
				cfg.Methods = splitList(*methods)
				return collector.NewVeth(cfg, deps)
			}
		},
	}
}
