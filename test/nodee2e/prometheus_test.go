package nodee2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/netinspect/netinspect/test/node"
	"github.com/netinspect/netinspect/test/prometheus"
)

// serviceMonitor is the part of deploy/monitoring's ServiceMonitor that
// decides what Prometheus scrapes and how it labels it.
type serviceMonitor struct {
	Spec struct {
		JobLabel string `json:"jobLabel"`
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port            string `json:"port"`
			Scheme          string `json:"scheme"`
			BearerTokenFile string `json:"bearerTokenFile"`
			TLSConfig       struct {
				InsecureSkipVerify bool `json:"insecureSkipVerify"`
			} `json:"tlsConfig"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
			Relabelings   []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
				Regex        string   `json:"regex"`
				Replacement  *string  `json:"replacement"`
				Action       string   `json:"action"`
				Separator    *string  `json:"separator"`
			} `json:"relabelings"`
		} `json:"endpoints"`
	} `json:"spec"`
}

func readServiceMonitor(t *testing.T) serviceMonitor {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(node.RepoRoot(), "deploy", "monitoring", "servicemonitor.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var sm serviceMonitor
	if err := sigsyaml.Unmarshal(b, &sm); err != nil {
		t.Fatal(err)
	}
	if len(sm.Spec.Endpoints) != 1 || len(sm.Spec.Selector.MatchLabels) == 0 {
		t.Fatalf("deploy/monitoring/servicemonitor.yaml: want one endpoint and a label selector: %+v", sm.Spec)
	}
	return sm
}

// labelName is how Prometheus' Kubernetes discovery names a Kubernetes
// label in its meta labels.
func labelName(l string) string { return regexp.MustCompile(`[^a-zA-Z0-9_]`).ReplaceAllString(l, "_") }

// scrapeConfig is the scrape job prometheus-operator generates for the
// ServiceMonitor (endpoints role; the endpoint's scheme, TLS settings and
// bearer token file; keep the selected Services' port; the namespace,
// service, pod, container, endpoint and job labels; then the
// ServiceMonitor's own relabelings), with job name, interval and timeout
// given, and the job label set to jobOverride when not empty. tokenFile
// holds Prometheus's ServiceAccount token: discovery authenticates with it,
// and so do the scrapes where the ServiceMonitor names the token the
// kubelet mounts into Prometheus's pod.
func scrapeConfig(sm serviceMonitor, name, interval, timeout, jobOverride, caFile, tokenFile string) string {
	ep := sm.Spec.Endpoints[0]
	var keys, values []string
	for k, v := range sm.Spec.Selector.MatchLabels {
		keys = append(keys, k)
		values = append(values, v)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "  - job_name: %s\n    scrape_interval: %s\n    scrape_timeout: %s\n", name, interval, timeout)
	if ep.Scheme != "" {
		fmt.Fprintf(&b, "    scheme: %s\n", ep.Scheme)
	}
	if ep.TLSConfig.InsecureSkipVerify {
		b.WriteString("    tls_config: {insecure_skip_verify: true}\n")
	}
	if ep.BearerTokenFile != "" {
		fmt.Fprintf(&b, "    authorization: {credentials_file: %q}\n", tokenFile)
	}
	fmt.Fprintf(&b, "    kubernetes_sd_configs:\n      - role: endpoints\n        api_server: https://127.0.0.1:6443\n")
	fmt.Fprintf(&b, "        tls_config: {ca_file: %q}\n        authorization: {credentials_file: %q}\n", caFile, tokenFile)
	fmt.Fprintf(&b, "        namespaces: {names: [%s]}\n", strings.Join(sm.Spec.NamespaceSelector.MatchNames, ", "))
	b.WriteString("    relabel_configs:\n")
	rule := func(src []string, sep, regex, target, replacement, action string) {
		b.WriteString("      - ")
		var parts []string
		if len(src) > 0 {
			parts = append(parts, fmt.Sprintf("source_labels: [%s]", strings.Join(src, ", ")))
		}
		if sep != "" {
			parts = append(parts, fmt.Sprintf("separator: %q", sep))
		}
		if regex != "" {
			parts = append(parts, fmt.Sprintf("regex: %q", regex))
		}
		if target != "" {
			parts = append(parts, "target_label: "+target)
		}
		if replacement != "" {
			parts = append(parts, fmt.Sprintf("replacement: %q", replacement))
		}
		if action != "" {
			parts = append(parts, "action: "+action)
		}
		b.WriteString("{" + strings.Join(parts, ", ") + "}\n")
	}
	for i, k := range keys {
		rule([]string{"__meta_kubernetes_service_label_" + labelName(k), "__meta_kubernetes_service_labelpresent_" + labelName(k)}, ";", "("+values[i]+");true", "", "", "keep")
	}
	rule([]string{"__meta_kubernetes_endpoint_port_name"}, "", ep.Port, "", "", "keep")
	rule([]string{"__meta_kubernetes_endpoint_address_target_kind", "__meta_kubernetes_endpoint_address_target_name"}, ";", "Node;(.*)", "node", "${1}", "replace")
	rule([]string{"__meta_kubernetes_endpoint_address_target_kind", "__meta_kubernetes_endpoint_address_target_name"}, ";", "Pod;(.*)", "pod", "${1}", "replace")
	rule([]string{"__meta_kubernetes_namespace"}, "", "", "namespace", "", "replace")
	rule([]string{"__meta_kubernetes_service_name"}, "", "", "service", "", "replace")
	rule([]string{"__meta_kubernetes_pod_name"}, "", "", "pod", "", "replace")
	rule([]string{"__meta_kubernetes_pod_container_name"}, "", "", "container", "", "replace")
	rule([]string{"__meta_kubernetes_pod_phase"}, "", "(Failed|Succeeded)", "", "", "drop")
	rule([]string{"__meta_kubernetes_service_name"}, "", "", "job", "${1}", "replace")
	if sm.Spec.JobLabel != "" {
		rule([]string{"__meta_kubernetes_service_label_" + labelName(sm.Spec.JobLabel)}, "", "(.+)", "job", "${1}", "replace")
	}
	rule(nil, "", "", "endpoint", ep.Port, "replace")
	for _, r := range ep.Relabelings {
		sep, repl := "", ""
		if r.Separator != nil {
			sep = *r.Separator
		}
		if r.Replacement != nil {
			repl = *r.Replacement
		}
		rule(r.SourceLabels, sep, r.Regex, r.TargetLabel, repl, strings.ToLower(r.Action))
	}
	if jobOverride != "" {
		rule(nil, "", "", "job", jobOverride, "replace")
	}
	return b.String()
}

// prometheusToken gives ServiceAccount monitoring/prometheus what the
// Prometheus of kube-prometheus may do here (list and watch the objects
// endpoints discovery reads, get /metrics, which the exporter's
// SubjectAccessReview asks about) and returns a file holding a token of it.
func (c *cluster) prometheusToken(t *testing.T) (token, file string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "test-prometheus"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services", "endpoints", "pods"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
			{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "test-prometheus"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "monitoring", Name: "prometheus"}},
	}
	if _, err := c.n.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := c.n.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	token = c.n.CP.ServiceAccountToken(t, "monitoring", "prometheus")
	file = filepath.Join(c.dir, "prometheus.token")
	if err := os.WriteFile(file, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return token, file
}

// startPrometheus runs Prometheus on the node with two jobs made from the
// ServiceMonitor: "netinspect", scraped every second for the alerts, and
// "netinspect-rollout", at the ServiceMonitor's own interval and timeout, for
// the rolling update. It discovers and scrapes the exporter with the token
// of prometheusToken.
func (c *cluster) startPrometheus(t *testing.T) (*prometheus.Server, time.Duration) {
	t.Helper()
	sm := readServiceMonitor(t)
	dir := t.TempDir()
	rules := prometheus.ShortRules(t, dir, "1s")
	interval, err := time.ParseDuration(sm.Spec.Endpoints[0].Interval)
	if err != nil {
		t.Fatalf("ServiceMonitor interval %q: %v", sm.Spec.Endpoints[0].Interval, err)
	}
	config := fmt.Sprintf("global:\n  evaluation_interval: 1s\nrule_files: [%q]\nscrape_configs:\n", rules) +
		scrapeConfig(sm, "netinspect", "1s", "1s", "", c.n.CP.CAFile(), c.tokenFile) +
		scrapeConfig(sm, "netinspect-rollout", sm.Spec.Endpoints[0].Interval, sm.Spec.Endpoints[0].ScrapeTimeout, "netinspect-rollout", c.n.CP.CAFile(), c.tokenFile)
	return prometheus.Start(t, c.n.NS, prometheus.WithKubernetesSD(t), config), interval
}

// checkDiscovery: Prometheus finds the exporter through the API server
// (the headless Service's endpoints) and labels the target as the
// ServiceMonitor implies: job from the Service's app.kubernetes.io/name,
// instance and node the node's name, the pod, namespace, service and
// endpoint port.
func (c *cluster) checkDiscovery(t *testing.T, p *prometheus.Server, pod string) {
	got := p.WaitQuery(t, `up{job="netinspect"} == 1`, 2*time.Minute)
	want := map[string]string{"job": "netinspect", "instance": c.n.Name, "node": c.n.Name, "namespace": namespace,
		"service": "netinspect", "pod": pod, "container": container, "endpoint": "metrics"}
	if len(got) != 1 {
		t.Fatalf("up{job=\"netinspect\"}: %d targets, want 1: %v", len(got), got)
	}
	for k, v := range want {
		if got[0].Metric[k] != v {
			t.Errorf("target label %s = %q, want %q (labels %v)", k, got[0].Metric[k], v, got[0].Metric)
		}
	}
	// The scrape carried the exporter's series, labelled the same way.
	p.WaitQuery(t, `netinspect_conntrack_entries{job="netinspect",instance="`+c.n.Name+`"} > 0`, time.Minute)
}

// checkDown deletes the DaemonSet's pod on a node that has lost the
// exporter's image, so that the DaemonSet's new pod cannot start:
// NetinspectDown (for: shortened to 1 s) fires while the node has no
// target. With the image back, the kubelet's next pull attempt starts the
// new pod, and the alert resolves once it is scraped. It returns the new
// pod's name. (With the image present, the new pod can listen within a
// scrape interval of the old one's exit: on a real node with `for: 5m` a
// restart must not fire the alert, and here it would not reliably.)
func (c *cluster) checkDown(t *testing.T, p *prometheus.Server, pod string) string {
	// Before the first scrapes absent(up) fired too: start from a quiet
	// moment, and look only at what came after the deletion.
	p.WaitQuery(t, `absent(ALERTS{alertname="NetinspectDown"})`, time.Minute)
	image := node.ImageRepository + ":" + tag1
	c.n.RemoveImage(t, image)
	deleted := time.Now()
	c.deletePod(t, namespace, pod)
	fired := false
	for deadline := time.Now().Add(2 * time.Minute); !fired && time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		since := int(time.Since(deleted).Seconds()) + 1
		got, err := p.QueryErr(fmt.Sprintf(`max_over_time(ALERTS{alertname="NetinspectDown",alertstate="firing"}[%ds])`, since))
		fired = err == nil && len(got) > 0
	}
	c.n.TagImage(t, node.ImageRepository+":"+tag2, image)
	if !fired {
		t.Fatalf("NetinspectDown did not fire within 2 min of the pod's deletion")
	}
	t.Logf("NetinspectDown fired %v after the pod's deletion", time.Since(deleted).Round(100*time.Millisecond))
	ds := c.waitDaemonSetPod(t, tag1, pod)
	p.WaitQuery(t, `up{job="netinspect",pod="`+ds.Name+`"} == 1`, 2*time.Minute)
	p.WaitQuery(t, `absent(ALERTS{alertname="NetinspectDown"})`, time.Minute)
	t.Logf("NetinspectDown resolved %v after the pod's deletion (new pod %s)", time.Since(deleted).Round(100*time.Millisecond), ds.Name)
	return ds.Name
}

// checkRollingUpdate applies the manifests with the second tag: the new pod
// takes over, and the rollout job (the ServiceMonitor's interval) misses at
// most one scrape: no two successful scrapes of the node are more than two
// intervals apart.
func (c *cluster) checkRollingUpdate(t *testing.T, p *prometheus.Server, pod string, interval time.Duration) {
	p.WaitQuery(t, `up{job="netinspect-rollout",pod="`+pod+`"} == 1`, interval+time.Minute)
	start := time.Now()
	c.apply(t, renderKustomize(t, c.n), tag2)
	ds := c.waitDaemonSetPod(t, tag2, pod)
	t.Logf("pod %s (%s) Ready %v after the update", ds.Name, tag2, time.Since(start).Round(100*time.Millisecond))
	p.WaitQuery(t, `up{job="netinspect-rollout",pod="`+ds.Name+`"} == 1`, 2*interval+time.Minute)

	window := time.Since(start) + 2*interval
	series := p.QueryMatrix(t, fmt.Sprintf(`up{job="netinspect-rollout",instance=%q}[%ds]`, c.n.Name, int(window.Seconds())+1))
	var ok []float64
	for _, s := range series {
		ts, vs := s.Points()
		for i := range ts {
			if vs[i] == 1 {
				ok = append(ok, ts[i])
			}
		}
	}
	sort.Float64s(ok)
	if len(ok) < 2 {
		t.Fatalf("fewer than two successful scrapes around the update: %v", series)
	}
	var worst float64
	for i := 1; i < len(ok); i++ {
		worst = max(worst, ok[i]-ok[i-1])
	}
	t.Logf("rolling update: longest time between successful scrapes %.1fs (interval %v, %d scrapes)", worst, interval, len(ok))
	if limit := 2 * interval.Seconds(); worst > limit+1 {
		t.Errorf("successful scrapes %.1fs apart during the update, more than one missed scrape (interval %v)", worst, interval)
	}
}
