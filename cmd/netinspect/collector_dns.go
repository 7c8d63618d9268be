package main

import (
	"strings"

	"github.com/alecthomas/kingpin/v2"

	"github.com/netinspect/netinspect/collector"
)

func dnsSpec() collectorSpec {
	return collectorSpec{
		name:           collector.DNSName,
		defaultEnabled: false, // it sends queries to the cluster DNS
		flags: func(app *kingpin.Application) collectorBuilder {
			def := collector.DefaultDNSConfig()
			var (
				cfg   collector.DNSConfig
				names string
			)
			app.Flag("collector.dns.service", "The cluster DNS Service (namespace/name), whose ClusterIPs and endpoints are probed.").Default(def.Service).StringVar(&cfg.Service)
			app.Flag("collector.dns.names", "Names resolved against every DNS server, comma separated.").Default(strings.Join(def.Names, ",")).StringVar(&names)
			app.Flag("collector.dns.interval", "Time between two rounds of DNS probes; scrapes serve the latest round.").Default(def.Interval.String()).DurationVar(&cfg.Interval)
			app.Flag("collector.dns.timeout", "Upper bound of one DNS probe (dial, query, answer).").Default(def.Timeout.String()).DurationVar(&cfg.Timeout)
			return func(deps collector.Deps, _ enabledSet) (collector.Collector, error) {
				cfg.Names = splitList(names)
				return collector.NewDNS(cfg, deps)
			}
		},
	}
}
