package kube

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCollector(t *testing.T) {
	ix := NewIndex("node-a")
	ix.SetPod(PodInfo{Namespace: "ns", Name: "web", UID: "u1", Node: "node-a", IPs: addrs("10.244.0.5", "fd00::5"),
		Labels: map[string]string{"app.kubernetes.io/name": "web", "app_kubernetes_io/name": "x", "tier": "front"}})
	ix.SetPod(PodInfo{Namespace: "kube-system", Name: "proxy", UID: "u2", Node: "node-a", HostNetwork: true, IPs: addrs("192.168.0.10")})
	ix.SetService(ServiceInfo{Namespace: "ns", Name: "web"})
	ix.SetNodeZone("zone-a")
	synced := func(res string) bool { return res != ResourceEndpointSlices }

	want := `
# HELP netinspect_kube_cache_synced 1 when the Kubernetes informer cache of the resource has synced, 0 while it has not (API unreachable or RBAC forbidden).
# TYPE netinspect_kube_cache_synced gauge
netinspect_kube_cache_synced{resource="endpointslices"} 0
netinspect_kube_cache_synced{resource="nodes"} 1
netinspect_kube_cache_synced{resource="pods"} 1
netinspect_kube_cache_synced{resource="services"} 1
# HELP netinspect_kube_objects Number of objects of the resource held in the Kubernetes cache.
# TYPE netinspect_kube_objects gauge
netinspect_kube_objects{resource="endpointslices"} 0
netinspect_kube_objects{resource="nodes"} 1
netinspect_kube_objects{resource="pods"} 2
netinspect_kube_objects{resource="services"} 1
# HELP netinspect_pod_info Information about a pod of this node, from the Kubernetes API.
# TYPE netinspect_pod_info gauge
netinspect_pod_info{host_network="false",namespace="ns",node="node-a",pod="web",uid="u1"} 1
netinspect_pod_info{host_network="true",namespace="kube-system",node="node-a",pod="proxy",uid="u2"} 1
# HELP netinspect_pod_ip_info One series per IP address of a pod of this node (status.podIPs).
# TYPE netinspect_pod_ip_info gauge
netinspect_pod_ip_info{family="ipv4",ip="10.244.0.5",namespace="ns",pod="web"} 1
netinspect_pod_ip_info{family="ipv4",ip="192.168.0.10",namespace="kube-system",pod="proxy"} 1
netinspect_pod_ip_info{family="ipv6",ip="fd00::5",namespace="ns",pod="web"} 1
# HELP netinspect_pod_labels Allowlisted Kubernetes labels of a pod of this node (--kube.pod-labels), as label_<sanitized name>.
# TYPE netinspect_pod_labels gauge
netinspect_pod_labels{label_app_kubernetes_io_name_conflict1="web",label_app_kubernetes_io_name_conflict2="x",label_tier="front",namespace="ns",pod="web"} 1
netinspect_pod_labels{label_app_kubernetes_io_name_conflict1="",label_app_kubernetes_io_name_conflict2="",label_tier="",namespace="kube-system",pod="proxy"} 1
`
	if err := testutil.CollectAndCompare(NewCollector(ix, synced), strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}
