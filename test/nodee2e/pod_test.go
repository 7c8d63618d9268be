package nodee2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/netinspect/netinspect/test/controlplane"
)

// probeCounts reads the kubelet's probe counters of the exporter's
// container (by "<type>/<result>") through the API server's node proxy,
// that is from the kubelet at its InternalIP.
func (c *cluster) probeCounts(t *testing.T, ds *corev1.Pod) map[string]float64 {
	t.Helper()
	out, err := c.n.KubectlErr("get", "--raw", "/api/v1/nodes/"+c.n.Name+"/proxy/metrics/probes")
	if err != nil {
		t.Fatalf("kubelet probe metrics through the API server: %v", err)
	}
	got := map[string]float64{}
	for _, m := range probeLine.FindAllStringSubmatch(out, -1) {
		if !strings.Contains(m[1], `pod="`+ds.Name+`"`) || !strings.Contains(m[1], `container="`+container+`"`) {
			continue
		}
		typ, res := probeType.FindStringSubmatch(m[1]), probeResult.FindStringSubmatch(m[1])
		v, _ := strconv.ParseFloat(m[2], 64)
		if typ != nil && res != nil {
			got[typ[1]+"/"+res[1]] += v
		}
	}
	return got
}

var (
	probeLine   = regexp.MustCompile(`(?m)^prober_probe_total\{([^}]*)\} (\S+)$`)
	probeType   = regexp.MustCompile(`probe_type="(\w+)"`)
	probeResult = regexp.MustCompile(`result="(\w+)"`)
)

// waitProbed waits until the kubelet has counted a successful liveness and
// readiness probe of the exporter and returns the counts then.
func (c *cluster) waitProbed(t *testing.T, ds *corev1.Pod) map[string]float64 {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		got := c.probeCounts(t, ds)
		if got["Liveness/successful"] >= 1 && got["Readiness/successful"] >= 1 {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("no successful liveness and readiness probe of the exporter counted within 1 min: %v", got)
		}
		time.Sleep(time.Second)
	}
}

// checkProbes, after the other subtests ran against the pod: the probes
// are HTTPS (the exporter answers plain HTTP with 400), and since the first
// successful probes (before) the kubelet counted more successful liveness
// and readiness probes and no failed one (a readiness probe may fail once,
// before the exporter listens), and the container never restarted.
func (c *cluster) checkProbes(t *testing.T, ds *corev1.Pod, before map[string]float64) {
	ctr := ds.Spec.Containers[0]
	for name, p := range map[string]*corev1.Probe{"liveness": ctr.LivenessProbe, "readiness": ctr.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Scheme != corev1.URISchemeHTTPS {
			t.Errorf("the DaemonSet's %s probe is not an HTTPS GET: %+v", name, p)
		}
	}
	now := c.probeCounts(t, ds)
	t.Logf("kubelet probe counts for %s: at first success %v, now %v", ds.Name, before, now)
	for _, k := range []string{"Liveness/failed", "Readiness/failed", "Liveness/unknown", "Readiness/unknown"} {
		if now[k] != before[k] || (k == "Liveness/failed" && now[k] != 0) {
			t.Errorf("kubelet counted %v %s probes of the exporter (%v when it first succeeded)", now[k], k, before[k])
		}
	}
	for _, k := range []string{"Liveness/successful", "Readiness/successful"} {
		if now[k] <= before[k] {
			t.Errorf("no %s probe since the first: %v", k, now[k])
		}
	}
	p := c.n.WaitPodReady(t, namespace, ds.Name, time.Minute)
	for _, s := range p.Status.ContainerStatuses {
		if s.RestartCount != 0 {
			t.Errorf("container %s restarted %d times: %+v", s.Name, s.RestartCount, s.LastTerminationState)
		}
	}
}

// capabilityBits maps the capability names a manifest may add to their
// numbers.
var capabilityBits = map[string]uint{
	"CHOWN": unix.CAP_CHOWN, "DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH,
	"FOWNER": unix.CAP_FOWNER, "KILL": unix.CAP_KILL, "SETGID": unix.CAP_SETGID, "SETUID": unix.CAP_SETUID,
	"NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "NET_ADMIN": unix.CAP_NET_ADMIN, "NET_RAW": unix.CAP_NET_RAW,
	"SYS_CHROOT": unix.CAP_SYS_CHROOT, "SYS_PTRACE": unix.CAP_SYS_PTRACE, "SYS_ADMIN": unix.CAP_SYS_ADMIN,
	"SYS_RESOURCE": unix.CAP_SYS_RESOURCE, "BPF": unix.CAP_BPF, "PERFMON": unix.CAP_PERFMON,
}

// checkSecurity reads the exporter's /proc/<pid>/status and mountinfo: its
// capability sets are exactly the ones the manifest adds (every other one
// dropped), no_new_privs is set (allowPrivilegeEscalation: false), seccomp
// filters its system calls (RuntimeDefault), and its root is mounted
// read-only.
func (c *cluster) checkSecurity(t *testing.T, ds *corev1.Pod) {
	sc := ds.Spec.Containers[0].SecurityContext
	if sc == nil || sc.Capabilities == nil || len(sc.Capabilities.Add) == 0 {
		t.Fatalf("the DaemonSet's container adds no capabilities: %+v", sc)
	}
	var want uint64
	var names []string
	for _, cp := range sc.Capabilities.Add {
		bit, ok := capabilityBits[strings.TrimPrefix(string(cp), "CAP_")]
		if !ok {
			t.Fatalf("capability %s of the manifest is not in this test's table", cp)
		}
		want |= 1 << bit
		names = append(names, string(cp))
	}
	pid := c.n.ContainerPID(t, ds, container)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, l := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	if fields["Name"] != "netinspect" {
		t.Fatalf("process %d is %q, want netinspect", pid, fields["Name"])
	}
	for _, set := range []struct {
		name string
		want uint64
	}{{"CapEff", want}, {"CapPrm", want}, {"CapBnd", want}, {"CapInh", 0}, {"CapAmb", 0}} {
		got, err := strconv.ParseUint(fields[set.name], 16, 64)
		if err != nil || got != set.want {
			t.Errorf("%s = %s, want %016x (%v)", set.name, fields[set.name], set.want, names)
		}
	}
	for k, v := range map[string]string{"NoNewPrivs": "1", "Seccomp": "2"} {
		if fields[k] != v {
			t.Errorf("%s = %q, want %s", k, fields[k], v)
		}
	}
	mountinfo, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	rootRO := false
	for _, l := range strings.Split(string(mountinfo), "\n") {
		// id parent major:minor root mountpoint options ...
		if f := strings.Fields(l); len(f) > 5 && f[4] == "/" {
			rootRO = strings.Contains(","+f[5]+",", ",ro,")
		}
	}
	if !rootRO {
		t.Errorf("the exporter's root is not mounted read-only:\n%s", mountinfo)
	}
	t.Logf("exporter PID %d: CapEff %s (%v), NoNewPrivs %s, Seccomp %s, root read-only", pid, fields["CapEff"], names, fields["NoNewPrivs"], fields["Seccomp"])
}

// checkServiceAccount: the exporter authenticates with the token the kubelet
// projected for its own ServiceAccount (TokenReview of the file in its
// mount namespace names the ServiceAccount and this pod), its caches sync
// with that identity, and the token's permissions are exactly the roles the
// manifests bind to it (SelfSubjectRulesReview, less what a ServiceAccount
// bound to nothing may do).
func (c *cluster) checkServiceAccount(t *testing.T, ds *corev1.Pod) {
	pid := c.n.ContainerPID(t, ds, container)
	// /var/run is a symbolic link to /run in the image, and an absolute
	// link under /proc/<pid>/root resolves in the reader's root: read the
	// mount's target as the container resolved it.
	token, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/run/secrets/kubernetes.io/serviceaccount/token", pid))
	if err != nil {
		token, err = os.ReadFile(fmt.Sprintf("/proc/%d/root/var/run/secrets/kubernetes.io/serviceaccount/token", pid))
	}
	if err != nil {
		t.Fatalf("the exporter's ServiceAccount token: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := c.n.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: string(token)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sa := "system:serviceaccount:" + namespace + ":" + ds.Spec.ServiceAccountName
	if !tr.Status.Authenticated || tr.Status.User.Username != sa || strings.Join(tr.Status.User.Extra["authentication.kubernetes.io/pod-name"], "") != ds.Name {
		t.Errorf("the exporter's token authenticates as %+v, want %s bound to pod %s", tr.Status, sa, ds.Name)
	}

	c.s.waitFor(t, time.Minute, "the exporter's Kubernetes caches synced", func(s series) (bool, string) {
		for _, r := range []string{"pods", "services", "endpointslices"} {
			if v, ok := s.one("netinspect_kube_cache_synced", map[string]string{"resource": r}); !ok || v != 1 {
				return false, fmt.Sprintf("netinspect_kube_cache_synced{resource=%q} = %v (present %v)", r, v, ok)
			}
		}
		return true, ""
	})

	cfg := c.n.CP.ConfigFor(controlplane.APIServerPort)
	cfg.BearerToken = string(token)
	got := ruleSet(t, kubernetes.NewForConfigOrDie(cfg), appNS)
	// What every ServiceAccount may do (discovery, self reviews, the
	// issuer's keys...): the rules of one bound to nothing.
	baselineCfg, _ := c.n.CP.ServiceAccountConfig(t, namespace, "rbac-baseline")
	basic := ruleSet(t, kubernetes.NewForConfigOrDie(baselineCfg), appNS)
	want := map[string]bool{}
	for _, role := range boundClusterRoles(t, renderKustomize(t, c.n), namespace, ds.Spec.ServiceAccountName) {
		cr, err := c.n.Client.RbacV1().ClusterRoles().Get(ctx, role, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range cr.Rules {
			want[ruleString(r)] = true
		}
	}
	var extra, missing []string
	for r := range got {
		if !want[r] && !basic[r] {
			extra = append(extra, r)
		}
	}
	for r := range want {
		if !got[r] {
			missing = append(missing, r)
		}
	}
	sort.Strings(extra)
	sort.Strings(missing)
	if len(extra)+len(missing) > 0 {
		t.Errorf("the exporter's token may do more (%v) or less (%v) than deploy/'s roles allow", extra, missing)
	}
}

// ruleSet returns the resource rules a client's identity has in namespace.
func ruleSet(t *testing.T, cs kubernetes.Interface, ns string) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := cs.AuthorizationV1().SelfSubjectRulesReviews().Create(ctx, &authorizationv1.SelfSubjectRulesReview{Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: ns}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, rr := range r.Status.ResourceRules {
		out[ruleString(rbacv1.PolicyRule{Verbs: rr.Verbs, APIGroups: rr.APIGroups, Resources: rr.Resources, ResourceNames: rr.ResourceNames})] = true
	}
	for _, nr := range r.Status.NonResourceRules {
		out[ruleString(rbacv1.PolicyRule{Verbs: nr.Verbs, NonResourceURLs: nr.NonResourceURLs})] = true
	}
	return out
}

func ruleString(r rbacv1.PolicyRule) string {
	s := func(v []string) string { v = append([]string(nil), v...); sort.Strings(v); return strings.Join(v, ",") }
	return fmt.Sprintf("verbs=%s groups=%s resources=%s names=%s urls=%s", s(r.Verbs), s(r.APIGroups), s(r.Resources), s(r.ResourceNames), s(r.NonResourceURLs))
}

// boundClusterRoles lists the ClusterRoles that the manifests' bindings
// grant to ServiceAccount ns/name cluster-wide.
func boundClusterRoles(t *testing.T, manifests []byte, ns, name string) []string {
	t.Helper()
	var roles []string
	for _, doc := range strings.Split(string(manifests), "\n---\n") {
		var b rbacv1.ClusterRoleBinding
		// A RoleBinding's rules hold only in its namespace, not in the
		// namespace the rules are reviewed in.
		if err := sigsyaml.Unmarshal([]byte(doc), &b); err != nil || b.Kind != "ClusterRoleBinding" {
			continue
		}
		for _, s := range b.Subjects {
			if s.Kind == "ServiceAccount" && s.Name == name && s.Namespace == ns && b.RoleRef.Kind == "ClusterRole" {
				roles = append(roles, b.RoleRef.Name)
			}
		}
	}
	if len(roles) == 0 {
		t.Fatalf("the manifests bind no ClusterRole to ServiceAccount %s/%s", ns, name)
	}
	return roles
}

// checkAuth: the exporter of deploy/ (--web.kubernetes-auth) refuses a
// scrape without a token (401) and one whose ServiceAccount may not get
// /metrics (403), while the probes' endpoints stay open; the scraper's
// token (Prometheus's ServiceAccount) is let through by every other subtest.
func (c *cluster) checkAuth(t *testing.T) {
	nobody := c.n.CP.ServiceAccountToken(t, "monitoring", "nobody")
	for _, tc := range []struct {
		name, path, token string
		want              int
	}{
		{"no token", "/metrics", "", http.StatusUnauthorized},
		{"not a token the API server issued", "/metrics", "not-a-token", http.StatusUnauthorized},
		{"ServiceAccount without get /metrics", "/metrics", nobody, http.StatusForbidden},
		{"liveness probe's path", "/healthz", "", http.StatusOK},
		{"readiness probe's path", "/readyz", "", http.StatusOK},
	} {
		code, body, err := c.s.get(tc.path, tc.token)
		if err != nil {
			t.Fatalf("%s: GET %s: %v", tc.name, tc.path, err)
		}
		if code != tc.want {
			t.Errorf("%s: GET %s = %d (%q), want %d", tc.name, tc.path, code, body, tc.want)
		}
	}
}
