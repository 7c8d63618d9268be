package collector

import (
	"cmp"
	"context"
	"slices"

	"go.uber.org/zap"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/source/conntrack"
	"github.com/netinspect/netinspect/source/netns"
)

// podConntrack reads the conntrack table of every pod namespace of ifaces
// that the mapping entered (method netns), once per namespace, through the
// path the mapping recorded: no walk of the node's namespaces. A pod
// counts when its table holds entries now or has since it was mapped (a
// sidecar's NAT rules make it track connections; a namespace without such
// rules never has any). A namespace that vanished, or whose path now names
// another one, is skipped with a debug log. Call with c.mu held.
func (c *Veth) podConntrack(ctx context.Context, ifaces []PodInterface) []PodConntrack {
	var (
		paths []string
		ids   []netns.ID
		pods  []kube.PodRef
	)
	seen := map[netns.ID]bool{}
	for _, i := range ifaces {
		if i.NetNS == "" || i.Pod.Name == "" || seen[i.netnsID] {
			continue
		}
		seen[i.netnsID] = true
		paths, ids = append(paths, i.NetNS), append(ids, i.netnsID)
		pods = append(pods, kube.PodRef{Namespace: i.Pod.Namespace, Name: i.Pod.Name})
	}
	for id := range c.ctInUse {
		if !seen[id] {
			delete(c.ctInUse, id)
		}
	}
	if len(paths) == 0 {
		return nil
	}
	counts, err := conntrack.ReadCounts(ctx, paths, ids)
	if err != nil {
		c.logger.Debug("pod network namespaces' conntrack tables not read", zap.Error(err))
	}
	var out []PodConntrack
	for i, n := range counts {
		if n.Err != nil {
			c.logger.Debug("pod network namespace's conntrack table not read; its series are left out",
				zap.String("pod", pods[i].Namespace+"/"+pods[i].Name), zap.String("netns", paths[i]), zap.Error(n.Err))
			continue
		}
		if n.Entries > 0 {
			c.ctInUse[ids[i]] = true
		}
		if c.ctInUse[ids[i]] {
			out = append(out, PodConntrack{Pod: pods[i], Entries: n.Entries, Limit: n.Limit})
		}
	}
	slices.SortFunc(out, func(a, b PodConntrack) int {
		return cmp.Or(cmp.Compare(a.Pod.Namespace, b.Pod.Namespace), cmp.Compare(a.Pod.Name, b.Pod.Name))
	})
	return out
}
