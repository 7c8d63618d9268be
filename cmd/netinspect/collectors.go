package main

import (
	"strconv"
	"strings"

	"github.com/alecthomas/kingpin/v2"

	"github.com/netinspect/netinspect/collector"
	"github.com/netinspect/netinspect/inspect"
)

// collectorBuilder constructs a collector from the shared dependencies and
// the set of enabled collectors, after the flags are parsed.
type collectorBuilder func(deps collector.Deps, enabled enabledSet) (collector.Collector, error)

// enabledSet says which collectors run, by name.
type enabledSet map[string]bool

// collectorSpec describes one collector to the command line: its name (the
// --collector.<name> flag), whether it runs by default, and a function that
// registers its own flags and returns its constructor.
type collectorSpec struct {
	name           string
	defaultEnabled bool
	flags          func(app *kingpin.Application) collectorBuilder
}

// collectorSpecs lists every collector the binary knows, in the order their
// flags appear in --help. The rule collectors share the drift flags.
func collectorSpecs(drift *driftFlags) []collectorSpec {
	return []collectorSpec{
		conntrackSpec(),
		vethSpec(),
		ipvsSpec(drift),
		iptablesSpec(drift),
		nftablesSpec(drift),
		attributionSpec(),
		neighbourSpec(),
		dnsSpec(),
	}
}

// buildCollectors constructs the enabled collectors, in flag order. A
// collector that rejects its flag values is a bad-flags error (exit 2).
func buildCollectors(cfg *config, deps collector.Deps) ([]inspect.Source, error) {
	enabled := enabledSet{}
	for _, c := range cfg.collectors {
		enabled[c.name] = *c.enabled
	}
	var out []inspect.Source
	for _, c := range cfg.collectors {
		if !*c.enabled {
			continue
		}
		col, err := c.build(deps, enabled)
		if err != nil {
			return nil, badFlagsf("collector %s: %v", c.name, err)
		}
		out = append(out, inspect.Source{Name: c.name, Collector: col})
	}
	return out, nil
}

// splitList splits a comma-separated flag value, dropping empty items;
// nil when there are none.
func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// btoa and itoa spell a default for kingpin, which takes defaults as text.
func btoa(b bool) string { return strconv.FormatBool(b) }
func itoa(i int) string  { return strconv.Itoa(i) }
