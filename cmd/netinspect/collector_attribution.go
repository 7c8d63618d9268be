package main

import (
	"github.com/alecthomas/kingpin/v2"

	"github.com/netinspect/netinspect/collector"
)

func attributionSpec() collectorSpec {
	return collectorSpec{
		name:           collector.AttributionName,
		defaultEnabled: true,
		flags: func(app *kingpin.Application) collectorBuilder {
			def := collector.DefaultAttributionConfig()
			var cfg collector.AttributionConfig
			app.Flag("collector.conntrack-attribution.interval",
				"Time between the starts of two passes over the conntrack table; scrapes serve the last pass (mode pass) or the counts kept by events since it (mode events).").
				Default(def.Interval.String()).DurationVar(&cfg.Interval)
			app.Flag("collector.conntrack-attribution.top-services",
				"Number of service series exported, largest first; the others are summed into service=\"\". 0 exports all.").
				Default(itoa(def.TopServices)).IntVar(&cfg.TopServices)
			app.Flag("collector.conntrack-attribution.mode",
				"How the table is followed: pass (a full dump every interval) or events (a full dump every interval, and conntrack new/destroy events in between; lost events trigger a dump).").
				Default(def.Mode).EnumVar(&cfg.Mode, collector.AttributionModes...)
			app.Flag("collector.conntrack-attribution.top-snat-tuples",
				"Number of source-NAT tuples (translated address, destination address and port, protocol) exported with their entries and port usage, highest usage first. 0 exports none; conntrack_snat_port_usage_ratio gives the worst either way.").
				Default(itoa(def.TopSNATTuples)).IntVar(&cfg.TopSNATTuples)
			return func(deps collector.Deps, _ enabledSet) (collector.Collector, error) {
				return collector.NewAttribution(cfg, deps)
			}
		},
	}
}
