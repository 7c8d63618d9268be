package collector

import (
	"testing"

	sourcens "github.com/netinspect/netinspect/source/netns"
	"github.com/netinspect/netinspect/test/netns"
)

// must(NewX(cfg, deps))(t) is the collector, the test failing when the
// constructor returned an error.
func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// in points the collector c at the network namespace ns instead of the
// exporter's own.
func in[C interface{ setTarget(sourcens.Target) }](c C, ns *netns.NS) C {
	c.setTarget(ns.Target())
	return c
}

// inNS is in for a constructor's (c, err): inNS(NewX(cfg, deps))(ns) points
// c at ns unless err is set.
func inNS[C interface{ setTarget(sourcens.Target) }](c C, err error) func(*netns.NS) (C, error) {
	return func(ns *netns.NS) (C, error) {
		if err == nil {
			c.setTarget(ns.Target())
		}
		return c, err
	}
}
