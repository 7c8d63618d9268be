package kube

import (
	"sort"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

const metricPrefix = "netinspect_"

var (
	podInfoDesc = prometheus.NewDesc(metricPrefix+"pod_info",
		"Information about a pod of this node, from the Kubernetes API.",
		[]string{"namespace", "pod", "uid", "node", "host_network"}, nil)
	podIPInfoDesc = prometheus.NewDesc(metricPrefix+"pod_ip_info",
		"One series per IP address of a pod of this node (status.podIPs).",
		[]string{"namespace", "pod", "ip", "family"}, nil)
	cacheSyncedDesc = prometheus.NewDesc(metricPrefix+"kube_cache_synced",
		"1 when the Kubernetes informer cache of the resource has synced, 0 while it has not (API unreachable or RBAC forbidden).",
		[]string{"resource"}, nil)
	objectsDesc = prometheus.NewDesc(metricPrefix+"kube_objects",
		"Number of objects of the resource held in the Kubernetes cache.",
		[]string{"resource"}, nil)
)

const podLabelsHelp = "Allowlisted Kubernetes labels of a pod of this node (--kube.pod-labels), as label_<sanitized name>."

// Collector exports the kube metrics: pod_info, pod_ip_info, pod_labels,
// kube_cache_synced, kube_objects. pod_labels's label names depend on the
// pods present, so the collector is unchecked (Describe sends nothing).
type Collector struct {
	index  *Index
	synced func(resource string) bool
	// podLabels: pod_labels is exported (an allowlist is set).
	podLabels bool
}

// NewCollector returns the collector for an index. synced reports each
// resource's cache state; nil reports every resource as synced.
func NewCollector(ix *Index, synced func(resource string) bool) *Collector {
	return &Collector{index: ix, synced: synced, podLabels: true}
}

// Collector returns the watcher's metrics collector. Without an allowlist
// (--kube.pod-labels empty, the default) it exports no pod_labels: one
// series per pod that would carry only namespace and pod, which pod_info
// has already.
func (w *Watcher) Collector() *Collector {
	c := NewCollector(w.index, w.Synced)
	c.podLabels = !w.cfg.PodLabels.Empty()
	return c
}

// Describe sends nothing: the collector is unchecked.
func (c *Collector) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	pods := c.index.Pods()
	npods, nsvcs, nslices := c.index.Counts()
	counts := map[string]int{ResourcePods: npods, ResourceServices: nsvcs, ResourceEndpointSlices: nslices}
	if c.index.NodeKnown() {
		counts[ResourceNodes] = 1
	}
	for _, res := range resources {
		v := 1.0
		if c.synced != nil && !c.synced(res) {
			v = 0
		}
		ch <- prometheus.MustNewConstMetric(cacheSyncedDesc, prometheus.GaugeValue, v, res)
		ch <- prometheus.MustNewConstMetric(objectsDesc, prometheus.GaugeValue, float64(counts[res]), res)
	}
	if len(pods) == 0 {
		return
	}

	// pod_labels: one label set per scrape, the union of the pods' label
	// keys, so every series of the family has the same dimensions (a pod
	// without a label gets an empty value, which Prometheus treats as absent).
	keySet := map[string]struct{}{}
	for _, p := range pods {
		for k := range p.Labels {
			keySet[k] = struct{}{}
		}
	}
	keys := make([]string, 0, len(keySet))
	for k := range keySet {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	names := PrometheusLabelNames(keys)
	labelNames := []string{"namespace", "pod"}
	for _, k := range keys {
		labelNames = append(labelNames, names[k])
	}
	podLabelsDesc := prometheus.NewDesc(metricPrefix+"pod_labels", podLabelsHelp, labelNames, nil)

	values := make([]string, len(labelNames))
	for _, p := range pods {
		ch <- prometheus.MustNewConstMetric(podInfoDesc, prometheus.GaugeValue, 1,
			p.Namespace, p.Name, p.UID, p.Node, strconv.FormatBool(p.HostNetwork))
		for _, ip := range p.IPs {
			family := "ipv4"
			if ip.Is6() {
				family = "ipv6"
			}
			ch <- prometheus.MustNewConstMetric(podIPInfoDesc, prometheus.GaugeValue, 1,
				p.Namespace, p.Name, ip.String(), family)
		}
		if !c.podLabels {
			continue
		}
		values[0], values[1] = p.Namespace, p.Name
		for i, k := range keys {
			values[i+2] = p.Labels[k]
		}
		ch <- prometheus.MustNewConstMetric(podLabelsDesc, prometheus.GaugeValue, 1, values...)
	}
}
