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
			var (
				cfg   collector.DNSConfig
				names string
			)
			app.Flag("collector.dns.service", "The cluster DNS Service (namespace/name), whose ClusterIPs and endpoints are probed.").Default(collector.DefaultDNSService).StringVar(&cfg.Service)
			app.Flag("collector.dns.names", "Names resolved against every DNS server, comma separated.").Default(collector.DefaultDNSName).StringVar(&names)
			app.Flag("collector.dns.interval", "Time between two rounds of DNS probes; scrapes serve the latest round.").Default(collector.DefaultDNSInterval.String()).DurationVar(&cfg.Interval)
			app.Flag("collector.dns.timeout", "Upper bound of one DNS probe (dial, query, answer).").Default(collector.DefaultDNSTimeout.String()).DurationVar(&cfg.Timeout)
			return func(deps collector.Deps) (collector.Collector, error) {
				cfg.Names = nil
				for _, n := range strings.Split(names, ",") {
					if n = strings.TrimSpace(n); n != "" {
						cfg.Names = append(cfg.Names, n)
					}
				}
				return collector.NewDNS(cfg, deps)
			}
		},
	}
}
