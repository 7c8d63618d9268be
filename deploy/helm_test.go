package deploy

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"

	sigsyaml "sigs.k8s.io/yaml"

	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/testenv"
)

const (
	chartDir       = "helm/netinspect"
	chartRulesFile = chartDir + "/files/netinspect.rules.yml"
)

// helmBinary finds helm where test/build-tools.sh puts it (the test tool
// cache, the version tools/kube pins), or on PATH.
func helmBinary(t *testing.T) string {
	t.Helper()
	p := controlplane.BinaryPath("helm")
	if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
		return p
	}
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	testenv.Require(t, false, "helm not found at "+p+" nor on PATH: run test/build-tools.sh")
	return ""
}

// helmTemplate renders the chart into the netinspect namespace.
func helmTemplate(t *testing.T, set ...string) (raw []byte, docs map[string][]byte) {
	t.Helper()
	args := []string{"template", "netinspect", chartDir, "--namespace", "netinspect"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	cmd := exec.Command(helmBinary(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out, splitDocs(t, out)
}

// normalize turns a manifest into generic JSON values, so that two renderings
// of one object compare equal whatever their formatting and key order.
func normalize(t *testing.T, doc []byte) any {
	t.Helper()
	j, err := sigsyaml.YAMLToJSON(doc)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(j, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func sameObjects(t *testing.T, what string, got, want map[string][]byte) {
	t.Helper()
	var gk, wk []string
	for k := range got {
		gk = append(gk, k)
	}
	for k := range want {
		wk = append(wk, k)
	}
	slices.Sort(gk)
	slices.Sort(wk)
	if !slices.Equal(gk, wk) {
		t.Fatalf("%s: objects %v, want %v", what, gk, wk)
	}
	for k := range want {
		g, w := normalize(t, got[k]), normalize(t, want[k])
		if !reflect.DeepEqual(g, w) {
			gj, _ := json.MarshalIndent(g, "", " ")
			wj, _ := json.MarshalIndent(w, "", " ")
			t.Errorf("%s: %s differs:\nhelm:\n%s\nkustomize:\n%s", what, k, gj, wj)
		}
	}
}

func TestHelmChartRulesAreAlertsRules(t *testing.T) {
	want, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(chartRulesFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(chartRulesFile)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("%s differs from %s (%v): run `go test ./deploy -update`", chartRulesFile, rulesFile, err)
	}
}

func TestHelmLint(t *testing.T) {
	out, err := exec.Command(helmBinary(t), "lint", "--strict", chartDir).CombinedOutput()
	if err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
}

func TestHelmDefaultsMatchKustomize(t *testing.T) {
	_, base := kustomize(t, ".")
	_, chart := helmTemplate(t)
	sameObjects(t, "helm template (defaults) vs kubectl kustomize deploy", chart, base)
}

func TestHelmMonitorsMatchKustomize(t *testing.T) {
	_, base := kustomize(t, ".")
	_, mon := kustomize(t, "monitoring")
	for k, v := range mon {
		base[k] = v
	}
	_, chart := helmTemplate(t, "serviceMonitor.enabled=true", "prometheusRule.enabled=true")
	sameObjects(t, "helm template (monitors on) vs kustomize deploy + deploy/monitoring", chart, base)
}

func TestHelmValues(t *testing.T) {
	_, docs := helmTemplate(t,
		"collectors.ipvs=false", "collectors.dns=true", "kube.podLabels=app\\,team",
		"web.configSecret=netinspect-web", "web.tls.secretName=netinspect-tls", "serviceMonitor.enabled=true",
		"web.kubernetesAuth.allowedTTL=1m", "web.kubernetesAuth.deniedTTL=5s", "web.maxRequests=8",
		"image.repository=registry.example.com/team/netinspect", "image.tag=v1.2.3",
		"namespace.create=false", "priorityClass.create=false")
	if _, ok := docs["Namespace/netinspect"]; ok {
		t.Error("namespace.create=false still renders the Namespace")
	}
	if _, ok := docs["PriorityClass/netinspect-node"]; ok {
		t.Error("priorityClass.create=false still renders the PriorityClass")
	}
	var ds struct {
		Spec struct {
			Template struct {
				Spec struct {
					Containers []struct {
						Image          string                                    `json:"image"`
						Args           []string                                  `json:"args"`
						LivenessProbe  struct{ HTTPGet struct{ Scheme string } } `json:"livenessProbe"`
						ReadinessProbe struct{ HTTPGet struct{ Scheme string } } `json:"readinessProbe"`
						VolumeMounts   []struct{ Name, MountPath string }        `json:"volumeMounts"`
					} `json:"containers"`
					Volumes []struct {
						Name   string
						Secret *struct{ SecretName string } `json:"secret"`
					} `json:"volumes"`
				} `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	if err := sigsyaml.Unmarshal(docs["DaemonSet/netinspect"], &ds); err != nil {
		t.Fatal(err)
	}
	c := ds.Spec.Template.Spec.Containers[0]
	if c.Image != "registry.example.com/team/netinspect:v1.2.3" {
		t.Errorf("image %s", c.Image)
	}
	for _, a := range []string{"--no-collector.ipvs", "--collector.dns", "--kube.pod-labels=app,team", "--web.config.file=/etc/netinspect/web/web-config.yml",
		"--web.tls.cert-file=/etc/netinspect/tls/tls.crt", "--web.tls.key-file=/etc/netinspect/tls/tls.key",
		"--web.kubernetes-auth", "--web.kubernetes-auth.allowed-ttl=1m", "--web.kubernetes-auth.denied-ttl=5s", "--web.max-requests=8"} {
		if !slices.Contains(c.Args, a) {
			t.Errorf("args %v lack %s", c.Args, a)
		}
	}
	if slices.Contains(c.Args, "--web.tls.self-signed") {
		t.Error("web.tls.secretName set, and still --web.tls.self-signed")
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	if mounts["tls"] != "/etc/netinspect/tls" || mounts["web-config"] != "/etc/netinspect/web" {
		t.Errorf("mounts %v: want the TLS Secret at /etc/netinspect/tls and the web config at /etc/netinspect/web", mounts)
	}
	if c.LivenessProbe.HTTPGet.Scheme != "HTTPS" || c.ReadinessProbe.HTTPGet.Scheme != "HTTPS" {
		t.Errorf("web.tls=true: probes not HTTPS: %+v %+v", c.LivenessProbe, c.ReadinessProbe)
	}
	secrets := map[string]string{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			secrets[v.Name] = v.Secret.SecretName
		}
	}
	if secrets["web-config"] != "netinspect-web" || secrets["tls"] != "netinspect-tls" {
		t.Errorf("secret volumes %v: want web-config from netinspect-web, tls from netinspect-tls", secrets)
	}
	if !strings.Contains(string(docs["ServiceMonitor/netinspect"]), "scheme: https") {
		t.Error("web.tls on: ServiceMonitor does not scrape https")
	}

	// Without TLS and auth: plain HTTP, no token, no delegation.
	_, docs = helmTemplate(t, "web.tls.enabled=false", "web.kubernetesAuth.enabled=false", "serviceMonitor.enabled=true")
	dsDoc := string(docs["DaemonSet/netinspect"])
	for _, a := range []string{"--web.tls", "--web.kubernetes-auth", "scheme: HTTPS"} {
		if strings.Contains(dsDoc, a) {
			t.Errorf("TLS and auth off, DaemonSet still has %q", a)
		}
	}
	if _, ok := docs["ClusterRoleBinding/netinspect-auth-delegator"]; ok {
		t.Error("auth off, still bound to system:auth-delegator")
	}
	if sm := string(docs["ServiceMonitor/netinspect"]); strings.Contains(sm, "https") || strings.Contains(sm, "tlsConfig") {
		t.Errorf("TLS off, ServiceMonitor:\n%s", sm)
	}

	_, docs = helmTemplate(t, "web.basicAuth=true")
	if !strings.Contains(string(docs["DaemonSet/netinspect"]), "tcpSocket:") || strings.Contains(string(docs["DaemonSet/netinspect"]), "httpGet:") {
		t.Error("web.basicAuth=true: probes should be tcpSocket (basic auth guards /healthz)")
	}
}

// splitDocs splits a multi-document manifest by kind/name, skipping empty
// documents.
func splitDocs(t *testing.T, out []byte) map[string][]byte {
	t.Helper()
	docs := map[string][]byte{}
	for _, d := range strings.Split(string(out), "\n---") {
		var meta struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := sigsyaml.Unmarshal([]byte(d), &meta); err != nil {
			t.Fatalf("manifest: %v\n%s", err, d)
		}
		if meta.Kind == "" {
			continue
		}
		key := meta.Kind + "/" + meta.Metadata.Name
		if _, dup := docs[key]; dup {
			t.Errorf("%s twice", key)
		}
		docs[key] = []byte(d)
	}
	return docs
}
