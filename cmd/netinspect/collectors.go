package main

import (
	"github.com/alecthomas/kingpin/v2"

	"github.com/netinspect/netinspect/collector"
)

// collectorBuilder constructs a collector from the shared dependencies, after
// the flags are parsed.
type collectorBuilder func(deps collector.Deps) (collector.Collector, error)

// collectorSpec describes one collector to the command line: its name (the
// --collector.<name> flag), whether it runs by default, and a function that
// registers its own flags and returns its constructor.
type collectorSpec struct {
	name           string
	defaultEnabled bool
	flags          func(app *kingpin.Application) collectorBuilder
}

// collectorSpecs lists every collector the binary knows, in the order their
// flags appear in --help.
func collectorSpecs() []collectorSpec {
	return []collectorSpec{
		conntrackSpec(),
		vethSpec(),
		ipvsSpec(),
		iptablesSpec(),
		nftablesSpec(),
		attributionSpec(),
		dnsSpec(),
	}
}
