package iptables

import (
	"fmt"
	"reflect"
	"strings"
)

// Diff describes how a differs from b in their exported fields ("" when
// it does not), to check that two ways of listing agree.
func Diff(a, b *Ruleset) string {
	exported := func(rs *Ruleset) []Table {
		var out []Table
		for _, t := range rs.Tables {
			out = append(out, Table{Name: t.Name, Chains: t.Chains, Services: t.Services, NoEndpoints: t.NoEndpoints, SetMatches: t.SetMatches})
		}
		return out
	}
	ta, tb := exported(a), exported(b)
	if len(ta) != len(tb) {
		names := func(ts []Table) (s []string) {
			for _, t := range ts {
				s = append(s, t.Name)
			}
			return s
		}
		return "tables " + strings.Join(names(ta), ",") + " vs " + strings.Join(names(tb), ",")
	}
	var diffs []string
	for i := range ta {
		x, y := ta[i], tb[i]
		switch {
		case x.Name != y.Name:
			diffs = append(diffs, "table "+x.Name+" vs "+y.Name)
		case !reflect.DeepEqual(x.Chains, y.Chains):
			for c, n := range x.Chains {
				if m, ok := y.Chains[c]; !ok || m != n {
					diffs = append(diffs, fmt.Sprintf("%s: chain %s has %d rules, %d (listed %v) in the other", x.Name, c, n, m, ok))
				}
			}
			for c := range y.Chains {
				if _, ok := x.Chains[c]; !ok {
					diffs = append(diffs, fmt.Sprintf("%s: chain %s missing", x.Name, c))
				}
			}
		case !reflect.DeepEqual(x.Services, y.Services):
			for h, s := range x.Services {
				if !reflect.DeepEqual(s, y.Services[h]) {
					diffs = append(diffs, fmt.Sprintf("%s: service %s: %+v vs %+v", x.Name, h, s, y.Services[h]))
					break
				}
			}
			diffs = append(diffs, fmt.Sprintf("%s: %d services vs %d", x.Name, len(x.Services), len(y.Services)))
		case !reflect.DeepEqual(x.NoEndpoints, y.NoEndpoints):
			diffs = append(diffs, fmt.Sprintf("%s: no endpoints %v vs %v", x.Name, x.NoEndpoints, y.NoEndpoints))
		case x.SetMatches != y.SetMatches:
			diffs = append(diffs, fmt.Sprintf("%s: %d set matches vs %d", x.Name, x.SetMatches, y.SetMatches))
		}
	}
	return strings.Join(diffs, "; ")
}
