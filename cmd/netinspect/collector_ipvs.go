package main

import (
	"strings"

	"github.com/alecthomas/kingpin/v2"

	"github.com/netinspect/netinspect/collector"
)

func ipvsSpec(drift *driftFlags) collectorSpec {
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
			app.Flag("collector.ipvs.service-series", "drift: per-node counts (virtual servers, backends, virtual servers without a usable backend), the per-virtual-server and per-backend series of those without a usable backend only, and kube-proxy drift; all: the series of every virtual server and backend, read at each scrape.").Default(def.ServiceSeries).EnumVar(&cfg.ServiceSeries, collector.ServiceSeriesModes...)
			app.Flag("collector.ipvs.max-no-backend-series", "With --collector.ipvs.service-series=drift, most virtual servers without a usable backend that get their own series (all count in netinspect_ipvs_virtual_servers_no_backends).").Default(itoa(def.MaxNoBackendSeries)).IntVar(&cfg.MaxNoBackendSeries)
			app.Flag("collector.ipvs.refresh-interval", "How often the IPVS virtual servers are listed in the background (per-node counts, virtual servers without a usable backend, kube-proxy drift).").Default(def.RefreshInterval.String()).DurationVar(&cfg.RefreshInterval)
			return func(deps collector.Deps, _ enabledSet) (collector.Collector, error) {
				cfg.Drift = drift.cfg
				cfg.BackendLabels = splitList(labels)
				if cfg.BackendLabels == nil {
					cfg.BackendLabels = []string{}
				}
				return collector.NewIPVS(cfg, deps)
			}
		},
	}
}
