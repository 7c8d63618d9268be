package main

import (
	"github.com/alecthomas/kingpin/v2"

	"github.com/netinspect/netinspect/collector"
)

func neighbourSpec() collectorSpec {
	return collectorSpec{
		name:           collector.NeighbourName,
		defaultEnabled: true,
		flags: func(*kingpin.Application) collectorBuilder {
			cfg := collector.DefaultNeighbourConfig()
			return func(deps collector.Deps, _ enabledSet) (collector.Collector, error) {
				return collector.NewNeighbour(cfg, deps)
			}
		},
	}
}
