package main

import (
	"strings"

	"github.com/alecthomas/kingpin/v2"

	"github.com/netinspect/netinspect/collector"
)

func ipvsSpec() collectorSpec {
	return collectorSpec{
		name:           collector.IPVSName,
		defaultEnabled: true,
		flags: func(app *kingpin.Application) collectorBuilder {
			def := collector.DefaultIPVSConfig()
			var cfg collector.IPVSConfig
			var labels string
			app.Flag("collector.ipvs.backends", "Export per-backend IPVS series (active/inactive connections, weight); --no-collector.ipvs.backends keeps only the per-service series.").Default(btoa(def.Backends)).BoolVar(&cfg.Backends)
			app.Flag("collector.ipvs.backend-stats", "Also export each IPVS backend's own connection, packet and byte counters (five more series per backend).").Default(btoa(def.BackendStats)).BoolVar(&cfg.BackendStats)
			app.Flag("collector.ipvs.backend-labels", "Comma-separated labels kept on the per-backend IPVS series; backends that differ only in dropped labels are summed.").Default(strings.Join(def.BackendLabels, ",")).StringVar(&labels)
			return func(deps collector.Deps, _ enabledSet) (collector.Collector, error) {
				cfg.BackendLabels = splitList(labels)
				if cfg.BackendLabels == nil {
					cfg.BackendLabels = []string{}
				}
				return collector.NewIPVS(cfg, deps)
			}
		},
	}
}
