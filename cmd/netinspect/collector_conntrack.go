package main

import (
	"github.com/alecthomas/kingpin/v2"

	"github.com/netinspect/netinspect/collector"
)

func conntrackSpec() collectorSpec {
	return collectorSpec{
		name:           collector.ConntrackName,
		defaultEnabled: true,
		flags: func(app *kingpin.Application) collectorBuilder {
			def := collector.DefaultConntrackConfig()
			var cfg collector.ConntrackConfig
			app.Flag("collector.conntrack.per-cpu", "Export the conntrack statistics per CPU, with a cpu label, instead of summed.").Default(btoa(def.PerCPU)).BoolVar(&cfg.PerCPU)
			return func(deps collector.Deps, _ enabledSet) (collector.Collector, error) {
				return collector.NewConntrack(cfg, deps)
			}
		},
	}
}
