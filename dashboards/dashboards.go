// Package dashboards defines netinspect's Grafana dashboards as code and
// renders them to the JSON files next to this source (cluster.json,
// node.json), which are what operators import. `go test ./dashboards
// -update` rewrites the files; the test fails when they differ from the code.
//
// Conventions (Grafana's dashboard-linter rules): a `datasource` template
// variable used by every panel and target, `$__rate_interval` in every rate,
// a unit on every panel, a stable uid, editable false, and `job`/`instance`
// variables (the monitors in deploy/monitoring set `instance` to the node
// name).
package dashboards

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Panel is one dashboard panel.
type Panel struct {
	Title       string
	Description string
	Type        string // timeseries, table, bargauge, stat
	Unit        string
	Targets     []Target
	W, H        int
	// Instant makes table and bargauge targets instant queries.
	Instant bool
}

// Target is one PromQL query of a panel.
type Target struct {
	Expr   string
	Legend string
}

// Dashboard is one Grafana dashboard.
type Dashboard struct {
	File        string // file name next to this package
	UID, Title  string
	Description string
	// NodeVariable adds the instance variable (one node).
	NodeVariable bool
	Panels       []Panel
}

const (
	sel     = `job=~"$job"`
	nodeSel = `job=~"$job",instance=~"$instance"`
)

// All returns every dashboard.
func All() []Dashboard { return []Dashboard{cluster(), node()} }

func cluster() Dashboard {
	ratio := fmt.Sprintf(`netinspect_conntrack_entries{%[1]s} / netinspect_conntrack_entries_limit{%[1]s}`, sel)
	return Dashboard{
		File: "cluster.json", UID: "netinspect-cluster", Title: "netinspect / Cluster",
		Description: "Node networking across the cluster: conntrack usage against the limit, drops, kube-proxy rules and their drift from the API, and IPVS backends. Cluster-wide panels read the recording rules of alerts/netinspect.rules.yml (group netinspect.cluster).",
		Panels: []Panel{
			{Title: "Conntrack usage per node", Type: "timeseries", Unit: "percentunit", W: 12, H: 8,
				Description: "Entries in each node's conntrack table over its limit (nf_conntrack_max). At 100% new connections are dropped.",
				Targets:     []Target{{Expr: ratio, Legend: "{{instance}}"}}},
			{Title: "Nodes nearest full", Type: "bargauge", Unit: "percentunit", W: 12, H: 8, Instant: true,
				Description: "The ten nodes whose conntrack tables are fullest.",
				Targets:     []Target{{Expr: "topk(10, " + ratio + ")", Legend: "{{instance}}"}}},
			{Title: "Conntrack entries and limit, all nodes", Type: "timeseries", Unit: "short", W: 12, H: 8,
				Description: "Sum of entries and of limits over all nodes (recording rules job:netinspect_conntrack_entries:sum, job:netinspect_conntrack_entries_limit:sum).",
				Targets: []Target{
					{Expr: fmt.Sprintf(`job:netinspect_conntrack_entries:sum{%s}`, sel), Legend: "entries"},
					{Expr: fmt.Sprintf(`job:netinspect_conntrack_entries_limit:sum{%s}`, sel), Legend: "limit"},
				}},
			{Title: "Conntrack drops and failures per node", Type: "timeseries", Unit: "pps", W: 12, H: 8,
				Description: "Packets dropped because the table was full, entries evicted early to make room, and failed inserts.",
				Targets: []Target{
					{Expr: fmt.Sprintf(`sum by (instance) (rate(netinspect_conntrack_stat_drop_total{%s}[$__rate_interval]))`, sel), Legend: "drop {{instance}}"},
					{Expr: fmt.Sprintf(`sum by (instance) (rate(netinspect_conntrack_stat_early_drop_total{%s}[$__rate_interval]))`, sel), Legend: "early_drop {{instance}}"},
					{Expr: fmt.Sprintf(`sum by (instance) (rate(netinspect_conntrack_stat_insert_failed_total{%s}[$__rate_interval]))`, sel), Legend: "insert_failed {{instance}}"},
				}},
			{Title: "kube-proxy rules per node", Type: "timeseries", Unit: "short", W: 12, H: 8,
				Description: "Rules in kube-proxy's iptables nat chains and nftables table per node; nodes that lag behind the others have stale rules.",
				Targets: []Target{
					{Expr: fmt.Sprintf(`sum by (instance) (netinspect_iptables_rules{%s,table="nat"})`, sel), Legend: "iptables {{instance}}"},
					{Expr: fmt.Sprintf(`sum by (instance) (netinspect_nftables_rules{%s})`, sel), Legend: "nftables {{instance}}"},
				}},
			{Title: "kube-proxy drift: service ports by state, all nodes", Type: "timeseries", Unit: "short", W: 12, H: 8,
				Description: "Service ports over all nodes and families by drift state: in_sync (programmed as the API asks), missing, stale, endpoints (other endpoints or verdict), counted once a mismatch has lasted the grace (recording rule job_state:netinspect_kube_proxy_service_ports:sum). Anything but in_sync is a node whose kube-proxy is behind the API.",
				Targets:     []Target{{Expr: fmt.Sprintf(`job_state:netinspect_kube_proxy_service_ports:sum{%s}`, sel), Legend: "{{state}}"}}},
			{Title: "Nodes whose kube-proxy drifts", Type: "stat", Unit: "short", W: 6, H: 8,
				Description: "Nodes with at least one service port whose rules disagree with the API past the grace (recording rule job:netinspect_kube_proxy_drifting_nodes:count); NetinspectKubeProxyDrift fires after 10 minutes.",
				Targets:     []Target{{Expr: fmt.Sprintf(`job:netinspect_kube_proxy_drifting_nodes:count{%s}`, sel), Legend: "nodes"}}},
			{Title: "Nodes with the most drifting service ports", Type: "bargauge", Unit: "short", W: 6, H: 8, Instant: true,
				Description: "Service ports in drift (missing, stale, endpoints) per node, the ten highest; open the node dashboard for which.",
				Targets:     []Target{{Expr: fmt.Sprintf(`topk(10, sum by (instance) (netinspect_kube_proxy_service_ports{%s,state!="in_sync"}))`, sel), Legend: "{{instance}}"}}},
			{Title: "kube-proxy programming latency seen from outside", Type: "timeseries", Unit: "s", W: 12, H: 8,
				Description: "How long mismatches lasted until they cleared, 50th and 99th percentile over all nodes (recording rule job_le:netinspect_kube_proxy_drift_duration_seconds_bucket:rate5m); the resolution is the rule refresh interval. Empty when nothing cleared in the window.",
				Targets: []Target{
					{Expr: fmt.Sprintf(`histogram_quantile(0.5, job_le:netinspect_kube_proxy_drift_duration_seconds_bucket:rate5m{%s})`, sel), Legend: "p50"},
					{Expr: fmt.Sprintf(`histogram_quantile(0.99, job_le:netinspect_kube_proxy_drift_duration_seconds_bucket:rate5m{%s})`, sel), Legend: "p99"},
				}},
			{Title: "kube-proxy mode", Type: "table", Unit: "none", W: 8, H: 8, Instant: true,
				Description: "The mode kube-proxy runs in on each node, from the rules present.",
				Targets:     []Target{{Expr: fmt.Sprintf(`job_mode:netinspect_kube_proxy_mode_info:count{%s}`, sel), Legend: "{{mode}}"}}},
			{Title: "Rules snapshot age", Type: "timeseries", Unit: "s", W: 8, H: 8,
				Description: "Seconds since each node last listed kube-proxy's rules; alerts at 5 minutes.",
				Targets:     []Target{{Expr: fmt.Sprintf(`time() - netinspect_rules_last_refresh_timestamp_seconds{%s}`, sel), Legend: "{{source}} {{instance}}"}}},
			{Title: "IPVS services without a usable backend", Type: "table", Unit: "none", W: 8, H: 8, Instant: true,
				Description: "IPVS virtual servers (kube-proxy ipvs mode) with no backend of weight above 0 (by default up to --collector.ipvs.max-no-backend-series per node; netinspect_ipvs_virtual_servers_no_backends counts all).",
				Targets: []Target{{Expr: fmt.Sprintf(`netinspect_ipvs_service_usable_backends{%s} == 0`, sel),
					Legend: "{{namespace}}/{{service}} {{instance}}"}}},
			{Title: "IPVS backends per service (needs --collector.ipvs.service-series=all)", Type: "timeseries", Unit: "short", W: 12, H: 8,
				Description: "Backends with weight above 0, per Service, summed over nodes. Needs every backend's series: --collector.ipvs.service-series=all; by default only the backends of virtual servers without a usable one are exported.",
				Targets:     []Target{{Expr: fmt.Sprintf(`count by (namespace, service) (netinspect_ipvs_backend_weight{%s} > 0)`, sel), Legend: "{{namespace}}/{{service}}"}}},
			{Title: "Collectors succeeding", Type: "timeseries", Unit: "short", W: 12, H: 8,
				Description: "Nodes on which each collector succeeded; a collector whose kernel feature a node lacks reports 0 there.",
				Targets: []Target{
					{Expr: fmt.Sprintf(`job_collector:netinspect_scrape_collector_success:sum{%s}`, sel), Legend: "{{collector}}"},
					{Expr: fmt.Sprintf(`count(up{%s} == 1)`, sel), Legend: "exporters up"},
				}},
		},
	}
}

func node() Dashboard {
	return Dashboard{
		File: "node.json", UID: "netinspect-node", Title: "netinspect / Node",
		Description:  "One node: conntrack table, who fills it, pod traffic through veths, kube-proxy rules and their drift from the API, IPVS, and the node's other tables (hash buckets, stale entries, SNAT ports, neighbours, pods' own conntrack tables).",
		NodeVariable: true,
		Panels: append([]Panel{
			{Title: "Conntrack entries and limit", Type: "timeseries", Unit: "short", W: 12, H: 8,
				Targets: []Target{
					{Expr: fmt.Sprintf(`netinspect_conntrack_entries{%s}`, nodeSel), Legend: "entries"},
					{Expr: fmt.Sprintf(`netinspect_conntrack_entries_limit{%s}`, nodeSel), Legend: "limit"},
				}},
			{Title: "Conntrack usage", Type: "stat", Unit: "percentunit", W: 6, H: 8,
				Targets: []Target{{Expr: fmt.Sprintf(`netinspect_conntrack_entries{%[1]s} / netinspect_conntrack_entries_limit{%[1]s}`, nodeSel), Legend: "usage"}}},
			{Title: "Conntrack headroom", Type: "stat", Unit: "short", W: 6, H: 8,
				Description: "Entries the table can still take.",
				Targets:     []Target{{Expr: fmt.Sprintf(`netinspect_conntrack_entries_limit{%[1]s} - netinspect_conntrack_entries{%[1]s}`, nodeSel), Legend: "headroom"}}},
			{Title: "Conntrack events", Type: "timeseries", Unit: "ops", W: 12, H: 8,
				Description: "Inserts, drops (table full), early drops (evictions), failed inserts and untrackable packets per second.",
				Targets: []Target{
					{Expr: fmt.Sprintf(`sum without (cpu) (rate(netinspect_conntrack_stat_insert_total{%s}[$__rate_interval]))`, nodeSel), Legend: "insert"},
					{Expr: fmt.Sprintf(`sum without (cpu) (rate(netinspect_conntrack_stat_drop_total{%s}[$__rate_interval]))`, nodeSel), Legend: "drop"},
					{Expr: fmt.Sprintf(`sum without (cpu) (rate(netinspect_conntrack_stat_early_drop_total{%s}[$__rate_interval]))`, nodeSel), Legend: "early_drop"},
					{Expr: fmt.Sprintf(`sum without (cpu) (rate(netinspect_conntrack_stat_insert_failed_total{%s}[$__rate_interval]))`, nodeSel), Legend: "insert_failed"},
					{Expr: fmt.Sprintf(`sum without (cpu) (rate(netinspect_conntrack_stat_invalid_total{%s}[$__rate_interval]))`, nodeSel), Legend: "invalid"},
				}},
			{Title: "Pods by conntrack entries", Type: "bargauge", Unit: "short", W: 12, H: 8, Instant: true,
				Description: "The pods of this node with the most conntrack entries (as client, or as backend after DNAT).",
				Targets:     []Target{{Expr: fmt.Sprintf(`topk(20, sum by (namespace, pod) (netinspect_conntrack_pod_entries{%s}))`, nodeSel), Legend: "{{namespace}}/{{pod}}"}}},
			{Title: "Services by conntrack entries", Type: "bargauge", Unit: "short", W: 12, H: 8, Instant: true,
				Targets: []Target{{Expr: fmt.Sprintf(`topk(20, sum by (namespace, service) (netinspect_conntrack_service_entries{%s}))`, nodeSel), Legend: "{{namespace}}/{{service}}"}}},
			{Title: "Conntrack entries by state", Type: "timeseries", Unit: "short", W: 12, H: 8,
				Description: "Entries by protocol, TCP state and assured (assured entries cannot be evicted by early drop when the table is full), at the last attribution pass.",
				Targets:     []Target{{Expr: fmt.Sprintf(`sum by (protocol, state, assured) (netinspect_conntrack_state_entries{%s})`, nodeSel), Legend: "{{protocol}} {{state}} assured={{assured}}"}}},
			{Title: "Pods by traffic received", Type: "timeseries", Unit: "Bps", W: 12, H: 8,
				Targets: []Target{{Expr: fmt.Sprintf(`topk(10, sum by (namespace, pod) (rate(netinspect_pod_network_receive_bytes_total{%s}[$__rate_interval])))`, nodeSel), Legend: "{{namespace}}/{{pod}}"}}},
			{Title: "Pods by traffic sent", Type: "timeseries", Unit: "Bps", W: 12, H: 8,
				Targets: []Target{{Expr: fmt.Sprintf(`topk(10, sum by (namespace, pod) (rate(netinspect_pod_network_transmit_bytes_total{%s}[$__rate_interval])))`, nodeSel), Legend: "{{namespace}}/{{pod}}"}}},
			{Title: "Pod drops on veths", Type: "timeseries", Unit: "pps", W: 12, H: 8,
				Targets: []Target{
					{Expr: fmt.Sprintf(`sum by (namespace, pod) (rate(netinspect_pod_network_receive_dropped_total{%s}[$__rate_interval])) > 0`, nodeSel), Legend: "rx {{namespace}}/{{pod}}"},
					{Expr: fmt.Sprintf(`sum by (namespace, pod) (rate(netinspect_pod_network_transmit_dropped_total{%s}[$__rate_interval])) > 0`, nodeSel), Legend: "tx {{namespace}}/{{pod}}"},
				}},
			{Title: "veth to pod map", Type: "table", Unit: "none", W: 12, H: 8, Instant: true,
				Description: "Each host veth and the pod interface it belongs to; unmapped veths are counted separately.",
				Targets: []Target{
					{Expr: fmt.Sprintf(`netinspect_pod_interface_info{%s}`, nodeSel), Legend: "{{host_interface}}"},
					{Expr: fmt.Sprintf(`netinspect_veth_unmapped{%s}`, nodeSel), Legend: "unmapped"},
				}},
			{Title: "kube-proxy rules by chain", Type: "table", Unit: "none", W: 12, H: 8, Instant: true,
				Targets: []Target{
					{Expr: fmt.Sprintf(`netinspect_iptables_rules{%s}`, nodeSel), Legend: "{{family}} {{table}} {{chain}}"},
					{Expr: fmt.Sprintf(`netinspect_nftables_rules{%s}`, nodeSel), Legend: "{{family}} {{table}}"},
				}},
			{Title: "kube-proxy mode and rules age", Type: "table", Unit: "s", W: 12, H: 8, Instant: true,
				Targets: []Target{
					{Expr: fmt.Sprintf(`netinspect_kube_proxy_mode_info{%s}`, nodeSel), Legend: "{{mode}}"},
					{Expr: fmt.Sprintf(`time() - netinspect_rules_last_refresh_timestamp_seconds{%s}`, nodeSel), Legend: "{{source}}"},
				}},
			{Title: "kube-proxy service ports by drift state", Type: "timeseries", Unit: "short", W: 12, H: 8,
				Description: "This node's service ports per family by drift state (in_sync, missing, stale, endpoints), what kube-proxy programmed against what the API asks; a mismatch counts once it lasted --kube-proxy.drift.grace.",
				Targets:     []Target{{Expr: fmt.Sprintf(`netinspect_kube_proxy_service_ports{%s}`, nodeSel), Legend: "{{family}} {{state}}"}}},
			{Title: "Service ports in drift", Type: "table", Unit: "s", W: 12, H: 8, Instant: true,
				Description: "Which service ports disagree with the API and for how long (the oldest --kube-proxy.drift.max-series; netinspect_kube_proxy_drift_series_dropped counts the rest). Empty on a node in sync. Runbook: NetinspectKubeProxyDrift.",
				Targets: []Target{
					{Expr: fmt.Sprintf(`netinspect_kube_proxy_drift_service_port_seconds{%s}`, nodeSel), Legend: "{{family}} {{namespace}}/{{service}}:{{port}} {{state}}"},
					{Expr: fmt.Sprintf(`netinspect_kube_proxy_drift_oldest_seconds{%s}`, nodeSel), Legend: "oldest {{family}}"},
				}},
			{Title: "IPVS virtual servers and backends", Type: "timeseries", Unit: "short", W: 12, H: 8,
				Description: "Virtual servers, their backends and the virtual servers without a usable backend (weight above 0) on this node.",
				Targets: []Target{
					{Expr: fmt.Sprintf(`netinspect_ipvs_virtual_servers{%s}`, nodeSel), Legend: "virtual servers"},
					{Expr: fmt.Sprintf(`netinspect_ipvs_backends{%s}`, nodeSel), Legend: "backends"},
					{Expr: fmt.Sprintf(`netinspect_ipvs_virtual_servers_no_backends{%s}`, nodeSel), Legend: "without a usable backend"},
				}},
			{Title: "IPVS backends (all of them need --collector.ipvs.service-series=all)", Type: "table", Unit: "none", W: 12, H: 8, Instant: true,
				Description: "Backends and their weights. By default only those of virtual servers without a usable backend; --collector.ipvs.service-series=all exports every one.",
				Targets:     []Target{{Expr: fmt.Sprintf(`netinspect_ipvs_backend_weight{%s}`, nodeSel), Legend: "{{address}}:{{port}} -> {{backend_address}}:{{backend_port}}"}}},
			{Title: "Collector success", Type: "table", Unit: "none", W: 12, H: 8, Instant: true,
				Description: "1 when the collector succeeded on the last scrape; 0 also when the node lacks its kernel feature.",
				Targets:     []Target{{Expr: fmt.Sprintf(`netinspect_scrape_collector_success{%s}`, nodeSel), Legend: "{{collector}}"}}},
			{Title: "Collector duration", Type: "timeseries", Unit: "s", W: 12, H: 8,
				Targets: []Target{{Expr: fmt.Sprintf(`netinspect_scrape_collector_duration_seconds{%s}`, nodeSel), Legend: "{{collector}}"}}},
		}, nodeTablePanels()...),
	}
}

// nodeTablePanels are the node dashboard's rows for the tables besides the
// conntrack table's size, each its usage against its limit: the hash
// table, stale entries, source-NAT ports, the neighbour tables and the
// pods' own conntrack tables.
func nodeTablePanels() []Panel {
	return []Panel{
		{Title: "Conntrack hash buckets", Type: "timeseries", Unit: "short", W: 12, H: 8,
			Description: "The hash table's size against nf_conntrack_max/4, what the kernel and kube-proxy size it to; far below it, lookups walk long chains (see the panel beside).",
			Targets: []Target{
				{Expr: fmt.Sprintf(`netinspect_conntrack_buckets{%s}`, nodeSel), Legend: "buckets"},
				{Expr: fmt.Sprintf(`netinspect_conntrack_entries_limit{%s} / 4`, nodeSel), Legend: "limit/4"},
			}},
		{Title: "Conntrack inserts into too long chains", Type: "timeseries", Unit: "ops", W: 12, H: 8,
			Description: "Entries the kernel inserted into an over-long hash chain per second: too few buckets for the entries (or a hash attack).",
			Targets:     []Target{{Expr: fmt.Sprintf(`sum without (cpu) (rate(netinspect_conntrack_stat_chaintoolong_total{%s}[$__rate_interval]))`, nodeSel), Legend: "chaintoolong"}}},
		{Title: "Stale conntrack entries", Type: "timeseries", Unit: "short", W: 12, H: 8,
			Description: "Entries kube-proxy deletes as stale after its next sync (UDP, DNATed to an address that no longer serves the Service port), and those of them that black-hole traffic; 0 on a healthy node.",
			Targets: []Target{
				{Expr: fmt.Sprintf(`netinspect_conntrack_stale_node_entries{%s}`, nodeSel), Legend: "stale"},
				{Expr: fmt.Sprintf(`netinspect_conntrack_stale_node_blackhole_entries{%s}`, nodeSel), Legend: "black-holing"},
				{Expr: fmt.Sprintf(`topk(10, netinspect_conntrack_stale_blackhole_entries{%s})`, nodeSel), Legend: "{{namespace}}/{{service}}"},
			}},
		{Title: "SNAT port usage", Type: "timeseries", Unit: "percentunit", W: 12, H: 8,
			Description: "Masqueraded entries per translated tuple (node address, destination address and port, protocol) over the ports NAT can pick from; at 100% new connections to that destination fail.",
			Targets: []Target{
				{Expr: fmt.Sprintf(`netinspect_conntrack_snat_port_usage_ratio{%s}`, nodeSel), Legend: "worst tuple"},
				{Expr: fmt.Sprintf(`topk(10, netinspect_conntrack_snat_tuple_port_usage_ratio{%s})`, nodeSel), Legend: "{{protocol}} {{translated}} -> {{destination}}:{{destination_port}}"},
			}},
		{Title: "Neighbour table entries and gc_thresh3", Type: "timeseries", Unit: "short", W: 12, H: 8,
			Description: "The kernel's neighbour tables (global: every namespace's entries, pods' included) against gc_thresh3, where new neighbours are refused; the entries are an upper bound (permanent ones are not collected).",
			Targets: []Target{
				{Expr: fmt.Sprintf(`netinspect_neighbour_entries{%s}`, nodeSel), Legend: "{{family}} entries"},
				{Expr: fmt.Sprintf(`netinspect_neighbour_gc_threshold{%s,level="3"}`, nodeSel), Legend: "{{family}} gc_thresh3"},
			}},
		{Title: "Neighbour table collections and refusals", Type: "timeseries", Unit: "ops", W: 12, H: 8,
			Description: "Forced garbage collections (the table above gc_thresh2) and entries refused (table_fulls: the table at gc_thresh3), per second.",
			Targets: []Target{
				{Expr: fmt.Sprintf(`rate(netinspect_neighbour_forced_gc_runs_total{%s}[$__rate_interval])`, nodeSel), Legend: "{{family}} forced gc"},
				{Expr: fmt.Sprintf(`rate(netinspect_neighbour_table_fulls_total{%s}[$__rate_interval])`, nodeSel), Legend: "{{family}} table full"},
			}},
		{Title: "Pods' own conntrack tables", Type: "bargauge", Unit: "percentunit", W: 12, H: 8, Instant: true,
			Description: "Pods whose network namespace tracks connections of its own (a sidecar's NAT rules): entries over the limit.",
			Targets:     []Target{{Expr: fmt.Sprintf(`topk(20, netinspect_pod_conntrack_entries{%[1]s} / netinspect_pod_conntrack_entries_limit{%[1]s})`, nodeSel), Legend: "{{namespace}}/{{pod}}"}}},
		{Title: "Conntrack timeouts", Type: "table", Unit: "s", W: 12, H: 8, Instant: true,
			Description: "How long an idle entry stays in each state (the namespace's nf_conntrack_*_timeout* sysctls).",
			Targets:     []Target{{Expr: fmt.Sprintf(`netinspect_conntrack_timeout_seconds{%s}`, nodeSel), Legend: "{{protocol}} {{state}}"}}},
	}
}

// Queries returns every PromQL expression of d, in panel order.
func (d Dashboard) Queries() []string {
	var qs []string
	for _, p := range d.Panels {
		for _, t := range p.Targets {
			qs = append(qs, t.Expr)
		}
	}
	return qs
}

type obj = map[string]any

var datasourceRef = obj{"type": "prometheus", "uid": "${datasource}"}

// JSON renders d as a Grafana dashboard (schema 39), indented, with a final
// newline.
func (d Dashboard) JSON() ([]byte, error) {
	vars := []any{
		obj{"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
			"current": obj{}, "hide": 0, "refresh": 1, "regex": "", "options": []any{}},
		queryVar("job", "Job", `label_values(netinspect_build_info, job)`, true),
	}
	if d.NodeVariable {
		vars = append(vars, queryVar("instance", "Node", `label_values(netinspect_build_info{job=~"$job"}, instance)`, false))
	}
	panels := make([]any, 0, len(d.Panels))
	x, y, rowH := 0, 0, 0
	for i, p := range d.Panels {
		if x+p.W > 24 {
			x, y, rowH = 0, y+rowH, 0
		}
		targets := make([]any, 0, len(p.Targets))
		for j, t := range p.Targets {
			tj := obj{"datasource": datasourceRef, "expr": t.Expr, "legendFormat": t.Legend, "refId": string(rune('A' + j))}
			if p.Instant {
				tj["instant"], tj["range"], tj["format"] = true, false, "table"
			}
			targets = append(targets, tj)
		}
		panels = append(panels, obj{
			"id": i + 1, "type": p.Type, "title": p.Title, "description": p.Description,
			"datasource":  datasourceRef,
			"gridPos":     obj{"x": x, "y": y, "w": p.W, "h": p.H},
			"fieldConfig": obj{"defaults": obj{"unit": p.Unit}, "overrides": []any{}},
			"options":     obj{},
			"targets":     targets,
		})
		x += p.W
		rowH = max(rowH, p.H)
	}
	dash := obj{
		"uid": d.UID, "title": d.Title, "description": d.Description,
		"tags": []string{"netinspect", "kubernetes", "networking"}, "editable": false,
		"schemaVersion": 39, "version": 1, "graphTooltip": 1, "timezone": "utc", "refresh": "30s",
		"time":        obj{"from": "now-6h", "to": "now"},
		"templating":  obj{"list": vars},
		"annotations": obj{"list": []any{}},
		"links":       []any{},
		"panels":      panels,
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(dash); err != nil {
		return nil, fmt.Errorf("render dashboard %s: %w", d.UID, err)
	}
	return buf.Bytes(), nil
}

func queryVar(name, label, query string, multi bool) obj {
	return obj{
		"name": name, "label": label, "type": "query", "datasource": datasourceRef,
		"query":      obj{"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
		"definition": query, "refresh": 2, "sort": 1, "hide": 0,
		"multi": multi, "includeAll": multi, "current": obj{}, "options": []any{},
	}
}

// Expand replaces Grafana's variables in expr: $__rate_interval with
// rateInterval and $<name> with vars[name], for running a panel's query
// outside Grafana (tests, the e2e Prometheus).
func Expand(expr, rateInterval string, vars map[string]string) string {
	out := strings.ReplaceAll(expr, "$__rate_interval", rateInterval)
	for k, v := range vars {
		out = strings.ReplaceAll(out, "$"+k, v)
	}
	return out
}
