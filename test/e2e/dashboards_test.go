package e2e

import (
	"strings"
	"testing"

	"github.com/netinspect/netinspect/dashboards"
)

// needsFeature lists, by metric name prefix, the series the test node cannot
// have and why. A dashboard query that returns nothing must use one of them.
var needsFeature = map[string]string{
	"netinspect_ipvs_":                                 "IPVS: the test kernel has no ip_vs, and no kube-proxy runs in ipvs mode",
	"netinspect_nftables_":                             "kube-proxy in nftables mode: the test node's kube-proxy runs in iptables mode",
	"netinspect_conntrack_pod_entries":                 "conntrack entries whose source is a pod of the node (the table is filled from non-pod addresses)",
	"netinspect_conntrack_service_entries":             "conntrack entries to a Service address (the table is filled toward non-service addresses)",
	"netinspect_pod_network_receive_dropped":           "drops on a pod's veth (the query keeps only rates above 0)",
	"netinspect_pod_network_transmit_dropped":          "drops on a pod's veth (the query keeps only rates above 0)",
	"netinspect_kube_proxy_drift_service_port_seconds": "a service port whose rules disagree with the API (the test node's kube-proxy is in sync)",
	"netinspect_conntrack_stale_blackhole_entries":     "stale conntrack entries of a Service (a healthy node has none; the node totals are there at 0)",
	"netinspect_conntrack_snat_tuple_":                 "masqueraded connections (the test node masquerades none; the worst ratio is there at 0)",
	"netinspect_pod_conntrack_":                        "a pod namespace that tracks connections itself (a sidecar's NAT rules)",
}

// checkDashboardQueries runs every dashboard query against the e2e
// Prometheus: each returns data, or uses a metric listed in needsFeature.
func checkDashboardQueries(t *testing.T, n *node) {
	vars := map[string]string{"job": "netinspect", "instance": exporterAddr}
	var withData, without int
	for _, d := range dashboards.All() {
		for _, q := range d.Queries() {
			expr := dashboards.Expand(q, "1m", vars)
			s, err := n.prom.QueryErr(expr)
			if err != nil {
				t.Errorf("%s: %v", d.File, err)
				continue
			}
			if len(s) > 0 {
				withData++
				continue
			}
			without++
			reason := ""
			for prefix, why := range needsFeature {
				if strings.Contains(expr, prefix) {
					reason = why
				}
			}
			if reason == "" {
				t.Errorf("%s: query returned no data and needs no feature the test node lacks: %s", d.File, expr)
				continue
			}
			t.Logf("%s: no data (needs %s): %s", d.File, reason, expr)
		}
	}
	t.Logf("dashboard queries: %d returned data, %d need a feature the test node lacks", withData, without)
}
