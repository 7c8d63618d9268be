package collector

import (
	"cmp"
	"context"
	"fmt"
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
	var out []PodConntrack
	seen := map[netns.ID]bool{}
	for _, i := range ifaces {
		if i.NetNS == "" || i.Pod.Name == "" || seen[i.netnsID] {
			continue
		}
		seen[i.netnsID] = true
		entries, limit, err := readPodConntrack(ctx, i.NetNS, i.netnsID)
		if err != nil {
			c.logger.Debug("pod network namespace's conntrack table not read; its series are left out",
				zap.String("pod", i.Pod.Namespace+"/"+i.Pod.Name), zap.String("netns", i.NetNS), zap.Error(err))
			continue
		}
		if entries > 0 {
			c.ctInUse[i.netnsID] = true
		}
		if !c.ctInUse[i.netnsID] {
			continue
		}
		out = append(out, PodConntrack{Pod: kube.PodRef{Namespace: i.Pod.Namespace, Name: i.Pod.Name}, Entries: entries, Limit: limit})
	}
	for id := range c.ctInUse {
		if !seen[id] {
			delete(c.ctInUse, id)
		}
	}
	slices.SortFunc(out, func(a, b PodConntrack) int {
		return cmp.Or(cmp.Compare(a.Pod.Namespace, b.Pod.Namespace), cmp.Compare(a.Pod.Name, b.Pod.Name))
	})
	return out
}

// readPodConntrack opens the namespace at path, checks that it is still
// the one with id (a pid or a bind mount may have been reused), and reads
// its table's entries and limit.
func readPodConntrack(ctx context.Context, path string, id netns.ID) (entries, limit uint64, err error) {
	f, err := netns.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	if got, err := f.ID(); err != nil || got != id {
		return 0, 0, fmt.Errorf("%s no longer names the pod's network namespace", path)
	}
	return conntrack.ReadCount(ctx, netns.FromFD(f.FD()))
}
