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
			var cfg collector.IPVSConfig
			var labels string
			app.Flag("collector.ipvs.backends", "Export per-backend IPVS series (active/inactive connections, weight); --no-collector.ipvs.backends keeps only the per-service series.").Default("true").BoolVar(&cfg.Backends)
			app.Flag("collector.ipvs.backend-stats", "Also export each IPVS backend's own connection, packet and byte counters (five more series per backend).").Default("false").BoolVar(&cfg.BackendStats)
			app.Flag("collector.ipvs.backend-labels", "Comma-separated labels kept on the per-backend IPVS series; backends that differ only in dropped labels are summed.").Default(strings.Join(collector.IPVSBackendLabels, ",")).StringVar(&labels)
			return func(deps collector.Deps) (collector.Collector, error) {
				cfg.BackendLabels = nil
				for _, l := range strings.Split(labels, ",") {
					if l = strings.TrimSpace(l); l != "" {
						cfg.BackendLabels = append(cfg.BackendLabels, l)
					}
				}
				if cfg.BackendLabels == nil {
					cfg.BackendLabels = []string{}
				}
				return collector.NewIPVS(cfg, deps)
			}
		},
	}
}
