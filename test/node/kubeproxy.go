package node

import (
	"testing"

	"github.com/netinspect/netinspect/test/controlplane"
)

// StartKubeProxy runs the real kube-proxy in mode ("iptables" or
// "nftables") as a process of the node (its namespaces, the node's
// /run/xtables.lock), authenticated as system:kube-proxy (the bootstrap
// role system:node-proxier), with controlplane.KubeProxyArgs' settings: it
// leaves the conntrack sysctls alone and syncs every 5 s. It waits until
// kube-proxy serves its metrics; its rules appear within a sync period.
func (n *Node) StartKubeProxy(t testing.TB, mode string) {
	t.Helper()
	kubeconfig := n.CP.ClientKubeconfig(t, "kube-proxy", "system:kube-proxy")
	args := controlplane.KubeProxyArgs(kubeconfig, controlplane.KubeProxyOptions{NodeName: n.Name, Mode: mode, ClusterCIDR: ClusterCIDR})
	p := n.start(t, "kube-proxy", append([]string{controlplane.Binary(t, "kube-proxy")}, args...)...)
	n.procs = append(n.procs, p)
	controlplane.WaitKubeProxy(t, n.NS.Path(), p.running, p.tail)
}
