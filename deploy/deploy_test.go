// Package deploy checks the Kubernetes manifests: the kustomize base
// (`kubectl apply -k deploy/`), the optional prometheus-operator objects
// (`kubectl apply -k deploy/monitoring/`) with the PrometheusRule
// generated from alerts/netinspect.rules.yml; and applies all of them with
// server-side dry-run to a real kube-apiserver (test/controlplane) with the
// prometheus-operator CRDs installed from that module's own files.
package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/testenv"
)

var update = flag.Bool("update", false, "regenerate deploy/monitoring/prometheusrule.yaml from alerts/")

const (
	rulesFile          = "../alerts/netinspect.rules.yml"
	prometheusRuleFile = "monitoring/prometheusrule.yaml"
	// prometheusOperatorModule provides the CRDs (example/prometheus-operator-crd).
	prometheusOperatorModule = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
	// defaultPort is cmd/netinspect's defaultListenAddress.
	defaultPort = 10271
)

// renderPrometheusRule wraps the rule file's groups in a PrometheusRule.
func renderPrometheusRule(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rules yaml.Node
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatalf("parse %s: %v", rulesFile, err)
	}
	spec := rules.Content[0]
	spec.HeadComment = ""
	unfold(spec)
	str := func(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Value: s} }
	doc := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
		str("apiVersion"), str("monitoring.coreos.com/v1"),
		str("kind"), str("PrometheusRule"),
		str("metadata"), {Kind: yaml.MappingNode, Content: []*yaml.Node{
			str("name"), str("netinspect"),
			str("namespace"), str("netinspect"),
			str("labels"), {Kind: yaml.MappingNode, Content: []*yaml.Node{str("app.kubernetes.io/name"), str("netinspect")}},
		}},
		str("spec"), spec,
	}}
	var buf bytes.Buffer
	buf.WriteString("# Generated from alerts/netinspect.rules.yml by `go test ./deploy -update`; do not edit.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// unfold re-styles folded scalars (`>-`), which yaml.v3 does not re-encode
// faithfully when they hold more-indented lines: literal when the value has
// line breaks, the encoder's choice otherwise.
func unfold(n *yaml.Node) {
	if n.Kind == yaml.ScalarNode && n.Style == yaml.FoldedStyle {
		n.Style = 0
		if strings.Contains(n.Value, "\n") {
			n.Style = yaml.LiteralStyle
		}
	}
	for _, c := range n.Content {
		unfold(c)
	}
}

func TestPrometheusRuleIsGeneratedFromAlerts(t *testing.T) {
	want := renderPrometheusRule(t)
	if *update {
		if err := os.WriteFile(prometheusRuleFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(prometheusRuleFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is out of date with %s: run `go test ./deploy -update`", prometheusRuleFile, rulesFile)
	}
	// The generated groups are the rule file's, rule for rule.
	var fromRules, fromCR struct {
		Groups []map[string]any `json:"groups"`
		Spec   struct {
			Groups []map[string]any `json:"groups"`
		} `json:"spec"`
	}
	rb, _ := os.ReadFile(rulesFile)
	if err := sigsyaml.Unmarshal(rb, &fromRules); err != nil {
		t.Fatal(err)
	}
	if err := sigsyaml.Unmarshal(got, &fromCR); err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(fromRules.Groups)
	b, _ := json.Marshal(fromCR.Spec.Groups)
	if len(fromRules.Groups) == 0 || !bytes.Equal(a, b) {
		t.Errorf("PrometheusRule groups differ from %s", rulesFile)
	}
}

// kustomize builds dir with kubectl's kustomize and splits the documents.
func kustomize(t *testing.T, dir string) (raw []byte, docs map[string][]byte) {
	t.Helper()
	kubectl := controlplane.Binary(t, "kubectl")
	out, err := exec.Command(kubectl, "kustomize", dir).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr)
	}
	docs = splitDocs(t, out)
	return out, docs
}

// strict decodes a manifest into a typed object, failing on unknown fields.
func strict(t *testing.T, doc []byte, into any) {
	t.Helper()
	if err := sigsyaml.UnmarshalStrict(doc, into); err != nil {
		t.Fatalf("decode %T: %v", into, err)
	}
}

func TestKustomizeBase(t *testing.T) {
	_, docs := kustomize(t, ".")
	var keys []string
	for k := range docs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := []string{"ClusterRole/netinspect", "ClusterRoleBinding/netinspect", "ClusterRoleBinding/netinspect-auth-delegator", "DaemonSet/netinspect",
		"Namespace/netinspect", "PriorityClass/netinspect-node", "Service/netinspect", "ServiceAccount/netinspect"}
	if !slices.Equal(keys, want) {
		t.Fatalf("objects %v, want %v", keys, want)
	}
	strict(t, docs["Namespace/netinspect"], &corev1.Namespace{})
	strict(t, docs["ServiceAccount/netinspect"], &corev1.ServiceAccount{})
	strict(t, docs["ClusterRole/netinspect"], &rbacv1.ClusterRole{})
	strict(t, docs["ClusterRoleBinding/netinspect"], &rbacv1.ClusterRoleBinding{})
	var delegator rbacv1.ClusterRoleBinding
	strict(t, docs["ClusterRoleBinding/netinspect-auth-delegator"], &delegator)
	if delegator.RoleRef.Name != "system:auth-delegator" || len(delegator.Subjects) != 1 || delegator.Subjects[0].Name != "netinspect" {
		t.Errorf("auth-delegator binding %+v: want system:auth-delegator for the netinspect ServiceAccount only", delegator)
	}
	strict(t, docs["PriorityClass/netinspect-node"], &schedulingv1.PriorityClass{})

	var svc corev1.Service
	strict(t, docs["Service/netinspect"], &svc)
	if svc.Spec.ClusterIP != "None" || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != defaultPort {
		t.Errorf("Service: want headless with port %d: %+v", defaultPort, svc.Spec)
	}

	var ds appsv1.DaemonSet
	strict(t, docs["DaemonSet/netinspect"], &ds)
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork {
		t.Error("DaemonSet: hostNetwork false")
	}
	if pod.ServiceAccountName != "netinspect" || pod.PriorityClassName != "netinspect-node" {
		t.Errorf("DaemonSet: serviceAccountName %q, priorityClassName %q", pod.ServiceAccountName, pod.PriorityClassName)
	}
	if len(pod.Tolerations) != 1 || pod.Tolerations[0].Operator != corev1.TolerationOpExists || pod.Tolerations[0].Key != "" {
		t.Errorf("DaemonSet: tolerations %+v, want one that tolerates every taint", pod.Tolerations)
	}
	if pod.SecurityContext == nil || pod.SecurityContext.SeccompProfile == nil || pod.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("DaemonSet: seccomp profile is not RuntimeDefault")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("DaemonSet: %d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Privileged != nil && *sc.Privileged || sc.Capabilities == nil {
		t.Fatalf("container securityContext %+v", sc)
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	if want := []corev1.Capability{"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"}; !slices.Equal(sc.Capabilities.Add, want) {
		t.Errorf("capabilities add %v, want %v", sc.Capabilities.Add, want)
	}
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != defaultPort || c.Ports[0].Name != "metrics" {
		t.Errorf("ports %+v, want metrics %d", c.Ports, defaultPort)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" || c.LivenessProbe.HTTPGet.Scheme != corev1.URISchemeHTTPS {
		t.Error("liveness probe is not GET https /healthz")
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.ReadinessProbe.HTTPGet.Scheme != corev1.URISchemeHTTPS {
		t.Error("readiness probe is not GET https /readyz")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want cpu and memory requests and a memory limit", c.Resources)
	}
	var nodeName bool
	for _, e := range c.Env {
		nodeName = nodeName || e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	}
	if !nodeName {
		t.Error("NODE_NAME is not set from spec.nodeName")
	}
	for _, a := range []string{"--path.procfs=/host/proc", "--path.netns=/host/run/netns", "--web.tls.self-signed", "--web.kubernetes-auth"} {
		if !slices.Contains(c.Args, a) {
			t.Errorf("args %v lack %s", c.Args, a)
		}
	}

	// Host paths: where they are mounted and whether read-only.
	hostPaths := map[string]string{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[hostPaths[m.Name]] = m
	}
	for host, want := range map[string]struct {
		at string
		ro bool
	}{
		"/proc":             {"/host/proc", true},
		"/run/netns":        {"/host/run/netns", true},
		"/run/xtables.lock": {"/run/xtables.lock", false},
	} {
		m, ok := mounts[host]
		if !ok || m.MountPath != want.at || m.ReadOnly != want.ro {
			t.Errorf("host %s: mount %+v, want at %s read-only=%v", host, m, want.at, want.ro)
		}
	}
}

// The base runs the chart's release of the image (deploy/image's tests keep
// the two equal), and an overlay of the user's own, as
// `kustomize edit set image ghcr.io/netinspect/netinspect=REGISTRY/netinspect:TAG`
// writes it, points the DaemonSet at another registry.
func TestKustomizeImage(t *testing.T) {
	chart, err := os.ReadFile("helm/netinspect/Chart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		AppVersion string `json:"appVersion"`
	}
	if err := sigsyaml.Unmarshal(chart, &meta); err != nil {
		t.Fatal(err)
	}
	image := func(docs map[string][]byte) string {
		t.Helper()
		var ds appsv1.DaemonSet
		strict(t, docs["DaemonSet/netinspect"], &ds)
		return ds.Spec.Template.Spec.Containers[0].Image
	}
	_, base := kustomize(t, ".")
	if got, want := image(base), "ghcr.io/netinspect/netinspect:"+meta.AppVersion; got != want {
		t.Errorf("kustomize deploy/: image %s, want %s", got, want)
	}

	overlay := t.TempDir()
	here, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(overlay, here) // kustomize takes relative bases only
	if err != nil {
		t.Fatal(err)
	}
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - " + rel + "\n" +
		"images:\n  - name: ghcr.io/netinspect/netinspect\n    newName: registry.example.com/team/netinspect\n    newTag: v1.2.3-4-gabc1234\n"
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	_, docs := kustomize(t, overlay)
	if got := image(docs); got != "registry.example.com/team/netinspect:v1.2.3-4-gabc1234" {
		t.Errorf("overlay: image %s", got)
	}
}

func TestKustomizeMonitoring(t *testing.T) {
	_, docs := kustomize(t, "monitoring")
	if len(docs) != 2 || docs["ServiceMonitor/netinspect"] == nil || docs["PrometheusRule/netinspect"] == nil {
		t.Errorf("monitoring: objects %v, want ServiceMonitor/netinspect and PrometheusRule/netinspect", len(docs))
	}
	var sm struct {
		Spec struct {
			JobLabel    string `json:"jobLabel"`
			SampleLimit int    `json:"sampleLimit"`
			Endpoints   []struct {
				Port            string `json:"port"`
				Scheme          string `json:"scheme"`
				BearerTokenFile string `json:"bearerTokenFile"`
				TLSConfig       struct {
					InsecureSkipVerify bool `json:"insecureSkipVerify"`
				} `json:"tlsConfig"`
				Relabelings []struct {
					SourceLabels []string `json:"sourceLabels"`
					TargetLabel  string   `json:"targetLabel"`
				} `json:"relabelings"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	if err := sigsyaml.Unmarshal(docs["ServiceMonitor/netinspect"], &sm); err != nil {
		t.Fatal(err)
	}
	if sm.Spec.JobLabel != "app.kubernetes.io/name" || len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" {
		t.Errorf("ServiceMonitor %+v: want job from app.kubernetes.io/name (job=\"netinspect\", as NetinspectDown selects) and the metrics port", sm.Spec)
	}
	// docs/metrics.md derives it ("Series per node").
	if sm.Spec.SampleLimit != 5000 {
		t.Errorf("ServiceMonitor sampleLimit %d, want 5000", sm.Spec.SampleLimit)
	}
	// deploy/ serves TLS with a self-signed certificate and reviews
	// Prometheus's ServiceAccount token.
	if ep := sm.Spec.Endpoints[0]; ep.Scheme != "https" || ep.BearerTokenFile != "/var/run/secrets/kubernetes.io/serviceaccount/token" || !ep.TLSConfig.InsecureSkipVerify {
		t.Errorf("ServiceMonitor endpoint %+v: want https, Prometheus's token file, insecureSkipVerify for the self-signed certificate", ep)
	}
}

// TestServerSideDryRun applies every manifest with server-side dry-run to a
// real kube-apiserver, with the prometheus-operator CRDs installed.
func TestServerSideDryRun(t *testing.T) {
	kubectl := controlplane.Binary(t, "kubectl")
	goBin := testenv.RequireCommand(t, "go")
	crdDir := moduleDir(t, goBin, prometheusOperatorModule)
	cp := controlplane.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	run := func(args ...string) string {
		t.Helper()
		cmd := cp.NS.Command(ctx, append([]string{kubectl, "--kubeconfig", cp.AdminKubeconfig}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	for _, crd := range []string{"servicemonitors", "prometheusrules"} {
		run("apply", "--server-side", "-f", filepath.Join(crdDir, "example", "prometheus-operator-crd", "monitoring.coreos.com_"+crd+".yaml"))
	}
	run("wait", "--for=condition=Established", "--timeout=60s",
		"crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com")
	// Dry-run creates nothing, so the namespaced objects need the namespace
	// to exist for real.
	cp.EnsureNamespace(t, "netinspect")

	for _, dir := range []string{".", "monitoring"} {
		raw, docs := kustomize(t, dir)
		path := filepath.Join(t.TempDir(), "manifests.yaml")
		if err := os.WriteFile(path, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		out := run("apply", "--server-side", "--dry-run=server", "--field-manager=netinspect-test", "-f", path)
		if n := strings.Count(out, "(server dry run)"); n != len(docs) {
			t.Errorf("%s: %d objects accepted in dry run, want %d:\n%s", dir, n, len(docs), out)
		}
		t.Logf("%s:\n%s", dir, out)
	}

	t.Run("helm", func(t *testing.T) {
		raw, docs := helmTemplate(t, "serviceMonitor.enabled=true", "prometheusRule.enabled=true",
			"web.configSecret=netinspect-web", "web.tls.secretName=netinspect-tls", "collectors.dns=true")
		path := filepath.Join(t.TempDir(), "chart.yaml")
		if err := os.WriteFile(path, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		out := run("apply", "--server-side", "--dry-run=server", "--field-manager=netinspect-test", "-f", path)
		if n := strings.Count(out, "(server dry run)"); n != len(docs) {
			t.Errorf("helm: %d objects accepted in dry run, want %d:\n%s", n, len(docs), out)
		}
		t.Logf("helm:\n%s", out)
	})
}

// moduleDir downloads (or finds in the module cache) a module version and
// returns its directory, without touching this module's go.mod.
func moduleDir(t *testing.T, goBin, modVersion string) string {
	t.Helper()
	cmd := exec.Command(goBin, "mod", "download", "-json", modVersion)
	cmd.Dir = t.TempDir()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v\n%s", modVersion, err, out)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		t.Fatalf("go mod download %s: %v %s", modVersion, err, out)
	}
	return m.Dir
}
