// Package controlplane runs a real Kubernetes control plane (etcd and
// kube-apiserver, optionally kube-proxy) for integration tests.
//
// The binaries are built from the Go module proxy at the versions pinned in
// tools/etcd and tools/kube and cached outside the repository by
// test/controlplane/build.sh (see Binary); `make test` runs it first. A
// missing binary skips the test locally and fails it under CI=true.
//
// Everything runs on loopback inside a network namespace the test owns
// (ControlPlane.NS). The test process reaches the API server through a
// dialer that connects from inside that namespace (Config.Dial is set);
// processes started in NS use AdminKubeconfig; processes in another
// namespace reach it through a forwarder (KubeconfigIn), which is how
// StartKubeProxy runs the real kube-proxy in a node's namespace.
//
//	cp := controlplane.Start(t)                   // etcd + kube-apiserver, ~2-10 s
//	cp.CreateNode(t, "node-1", "10.99.1.2")       // with InternalIP, for kube-proxy
//	cp.CreatePod(t, controlplane.PodSpec{Namespace: "ns", Name: "web", Node: "node-1", IPs: []string{"10.244.0.5"}})
//	cp.CreateService(t, controlplane.ServiceSpec{...}); cp.CreateEndpointSlice(t, ...)
//	cfg, kubeconfig := cp.ServiceAccountConfig(t, "netinspect", "netinspect") // token for a ServiceAccount
//	kp := cp.StartKubeProxy(t, nodeNS, controlplane.KubeProxyOptions{NodeName: "node-1", Mode: "nftables"})
//	cp.Stop(t); cp.Restart(t)                     // API server outage (etcd keeps running)
//	cp.Kill(t); cp.Restart(t)                     // the same, without the graceful shutdown
//	cp.CreateObjects(t, "deploy/rbac.yaml")       // ServiceAccounts, ClusterRoles, bindings from a manifest
//	revoke := cp.GrantNonResourceURL(t, "metrics-reader", "monitoring", "prometheus", "/metrics", "get")
//	tok := cp.SignServiceAccountToken(t, "monitoring", "prometheus", issued, expires) // any validity, expired too
//
// The API server runs with RBAC authorization, a dual-stack Service range
// (ServiceCIDRv4, ServiceCIDRv6) and no controller manager or scheduler:
// pods are bound and given IPs by CreatePod, EndpointSlices are created by
// the test. Methods take the calling (sub)test's t for failures; processes
// are stopped, by PID, when the test that called Start ends.
package controlplane

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// Versions of the binaries, as pinned in tools/etcd/go.mod and
// tools/kube/go.mod (TestVersionsMatchToolsModules keeps them in step).
const (
	EtcdVersion = "v3.7.3"
	KubeVersion = "v1.37.2"
	// PrometheusVersion is github.com/prometheus/prometheus's module
	// version: v0.316.0 is Prometheus 3.16.0, built with Kubernetes service
	// discovery only.
	PrometheusVersion = "v0.316.0"
	HelmVersion       = "v3.22.0"
)

const (
	// AdvertiseAddress is the API server's address in the "kubernetes"
	// Service's endpoints; it is put on the namespace's loopback.
	AdvertiseAddress = "10.99.0.1"
	// ServiceCIDRs are the Service ClusterIP ranges (dual-stack).
	ServiceCIDRv4 = "10.96.0.0/16"
	ServiceCIDRv6 = "fd00:10:96::/112"
	// APIServerPort is the secure port of the primary API server.
	APIServerPort  = 6443
	firstServiceIP = "10.96.0.1"
	etcdClientURL  = "http://127.0.0.1:2379"
)

// CacheDir is where build.sh puts the binaries.
func CacheDir() string {
	if d := os.Getenv("NETINSPECT_CACHE"); d != "" {
		return filepath.Join(d, "bin")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root"
	}
	return filepath.Join(home, ".cache", "netinspect", "bin")
}

// Binary returns the path of a cached binary that build.sh builds (etcd,
// kube-apiserver, kube-proxy, kubectl, kubelet, kube-controller-manager,
// kube-scheduler, prometheus, helm); when it is missing the test fails under
// CI and skips elsewhere, naming the command that builds it.
func Binary(t testing.TB, name string) string {
	t.Helper()
	p := BinaryPath(name)
	st, err := os.Stat(p)
	testenv.Require(t, err == nil && st.Mode()&0o111 != 0,
		fmt.Sprintf("%s not built at %s: run test/build-tools.sh", name, p))
	return p
}

// BinaryPath is where build.sh puts the binary name, built or not.
func BinaryPath(name string) string {
	version := KubeVersion
	switch name {
	case "etcd":
		version = EtcdVersion
	case "prometheus":
		version = PrometheusVersion
	case "helm":
		version = HelmVersion
	}
	return filepath.Join(CacheDir(), name+"-"+version)
}

// ControlPlane is etcd and a kube-apiserver running in a network namespace.
type ControlPlane struct {
	// NS is the namespace everything runs in.
	NS *netns.NS
	// Dir holds certificates, kubeconfigs, data and logs.
	Dir string
	// AdminKubeconfig is a kubeconfig file for system:masters; it works for
	// processes running inside NS (server https://127.0.0.1:6443).
	AdminKubeconfig string
	// Config is the admin REST config for the test process; it dials from
	// inside NS.
	Config *rest.Config
	// Client is a clientset made from Config.
	Client kubernetes.Interface

	t       testing.TB
	pki     *pki
	opts    Options
	etcd    *process
	mu      sync.Mutex
	servers map[int]*process // API servers by port
	// forwarded holds the namespaces KubeconfigIn forwards to the API
	// server from (by name), so a second call reuses the forwarder.
	forwarded map[string]bool
	// components are kube-controller-manager and kube-scheduler.
	components []*process
}

// Options configures StartWith.
type Options struct {
	// Cluster makes the API server one that real nodes join (test/node runs
	// kube-controller-manager, kube-scheduler and a kubelet against it): the
	// ServiceAccount admission plugin gives pods their token volume, the Node
	// authorizer and NodeRestriction admit the kubelet, privileged
	// containers are allowed, and the API server reaches the kubelet (logs,
	// exec) at its InternalIP with a client certificate of its own. Without
	// it no controller runs: CreatePod binds pods and sets their status.
	Cluster bool
}

// Start runs etcd and kube-apiserver in a new network namespace, waits until
// the API server is ready, and stops them when the test ends.
func Start(t testing.TB) *ControlPlane {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options.
func StartWith(t testing.TB, o Options) *ControlPlane {
	t.Helper()
	testenv.RequireRoot(t)
	etcdBin := Binary(t, "etcd")
	Binary(t, "kube-apiserver")
	ns := netns.New(t, "cp")
	ns.MustRun("ip", "addr", "add", AdvertiseAddress+"/32", "dev", "lo")

	dir := t.TempDir()
	p, err := makePKI(dir, net.ParseIP(AdvertiseAddress))
	if err != nil {
		t.Fatalf("control plane certificates: %v", err)
	}
	cp := &ControlPlane{NS: ns, Dir: dir, t: t, pki: p, opts: o, servers: map[int]*process{}}
	t.Cleanup(cp.stopAll)

	cp.etcd = cp.startProcess("etcd", etcdBin,
		"--name=default",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdClientURL,
		"--advertise-client-urls="+etcdClientURL,
		"--listen-peer-urls=http://127.0.0.1:2380",
		"--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=default=http://127.0.0.1:2380",
		"--unsafe-no-fsync",
		"--log-level=warn",
	)

	cp.Config = cp.ConfigFor(APIServerPort)
	cp.Config.TLSClientConfig.CertData = p.adminCertPEM
	cp.Config.TLSClientConfig.KeyData = p.adminKeyPEM
	cp.Client = kubernetes.NewForConfigOrDie(cp.Config)
	cp.AdminKubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := writeKubeconfig(cp.AdminKubeconfig, fmt.Sprintf("https://127.0.0.1:%d", APIServerPort), p.caPEM, func(a *clientcmdapi.AuthInfo) {
		a.ClientCertificateData, a.ClientKeyData = p.adminCertPEM, p.adminKeyPEM
	}); err != nil {
		t.Fatal(err)
	}

	cp.StartAPIServer(t, APIServerPort)
	return cp
}

// ConfigFor returns an unauthenticated REST config (CA and dialer set) for
// the API server on port; add credentials to use it.
func (cp *ControlPlane) ConfigFor(port int) *rest.Config {
	return &rest.Config{
		Host:            fmt.Sprintf("https://127.0.0.1:%d", port),
		TLSClientConfig: rest.TLSClientConfig{CAData: cp.pki.caPEM},
		Dial:            DialerIn(cp.NS.Path()),
		QPS:             200,
		Burst:           400,
	}
}

func (cp *ControlPlane) apiserverArgs(port int) []string {
	p := cp.pki
	args := []string{
		"--etcd-servers=" + etcdClientURL,
		"--bind-address=0.0.0.0",
		fmt.Sprintf("--secure-port=%d", port),
		"--advertise-address=" + AdvertiseAddress,
		"--tls-cert-file=" + p.servingCert,
		"--tls-private-key-file=" + p.servingKey,
		"--client-ca-file=" + p.caFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.saPublicKey,
		"--service-account-signing-key-file=" + p.saPrivateKey,
		"--service-cluster-ip-range=" + ServiceCIDRv4 + "," + ServiceCIDRv6,
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--cert-dir=" + filepath.Join(cp.Dir, fmt.Sprintf("apiserver-%d", port)),
		"-v=1",
	}
	if !cp.opts.Cluster {
		return append(args,
			"--authorization-mode=RBAC",
			// No controller manager creates the "default" ServiceAccounts
			// that this admission plugin insists on for every pod.
			"--disable-admission-plugins=ServiceAccount",
		)
	}
	return append(args,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--kubelet-client-certificate="+p.kubeletClientCert,
		"--kubelet-client-key="+p.kubeletClientKey,
		// The node's hostname resolves nowhere: logs and exec go to the
		// address the kubelet registered.
		"--kubelet-preferred-address-types=InternalIP",
	)
}

// StartAPIServer starts a kube-apiserver on port (sharing etcd with any
// other) and waits until it is ready. The primary one is on APIServerPort;
// a second one lets a test change the cluster while the primary is down.
func (cp *ControlPlane) StartAPIServer(t testing.TB, port int) {
	t.Helper()
	cp.mu.Lock()
	if pr := cp.servers[port]; pr != nil && pr.running() {
		cp.mu.Unlock()
		t.Fatalf("kube-apiserver on port %d already running", port)
	}
	cp.mu.Unlock()
	pr := cp.startProcessT(t, fmt.Sprintf("kube-apiserver-%d", port), Binary(t, "kube-apiserver"), cp.apiserverArgs(port)...)
	cp.mu.Lock()
	cp.servers[port] = pr
	cp.mu.Unlock()

	cfg := cp.ConfigFor(port)
	cfg.TLSClientConfig.CertData, cfg.TLSClientConfig.KeyData = cp.pki.adminCertPEM, cp.pki.adminKeyPEM
	cs := kubernetes.NewForConfigOrDie(cfg)
	start := time.Now()
	deadline := start.Add(90 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		if !pr.running() {
			t.Fatalf("kube-apiserver exited during start-up:\n%s", pr.tail())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil {
			// The "default" namespace is made by a controller after readyz.
			_, err = cs.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		}
		cancel()
		if err == nil {
			t.Logf("kube-apiserver :%d ready after %v", port, time.Since(start).Round(10*time.Millisecond))
			return
		}
		lastErr = fmt.Errorf("%w: %s", err, body)
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("kube-apiserver :%d not ready after 90 s: %v\n%s", port, lastErr, pr.tail())
}

// StopAPIServer stops the API server on port (SIGTERM, then SIGKILL after
// 10 s) and waits for it to exit.
func (cp *ControlPlane) StopAPIServer(t testing.TB, port int) {
	t.Helper()
	cp.apiServer(t, port).stop()
}

// apiServer returns the API server process on port, failing t if none was
// started there.
func (cp *ControlPlane) apiServer(t testing.TB, port int) *process {
	t.Helper()
	cp.mu.Lock()
	pr := cp.servers[port]
	cp.mu.Unlock()
	if pr == nil {
		t.Fatalf("no kube-apiserver on port %d", port)
	}
	return pr
}

// Stop stops the primary API server (etcd keeps running). With clients
// watching, its graceful shutdown can take the full 10 s.
func (cp *ControlPlane) Stop(t testing.TB) { t.Helper(); cp.StopAPIServer(t, APIServerPort) }

// Kill kills the primary API server at once (SIGKILL), as a crash or a lost
// control-plane node would, and waits for it to exit; Restart brings it
// back.
func (cp *ControlPlane) Kill(t testing.TB) {
	t.Helper()
	cp.apiServer(t, APIServerPort).kill()
}

// Restart starts the primary API server again after Stop and waits until
// it is ready.
func (cp *ControlPlane) Restart(t testing.TB) { t.Helper(); cp.StartAPIServer(t, APIServerPort) }

func (cp *ControlPlane) stopAll() {
	cp.mu.Lock()
	servers := cp.servers
	cp.mu.Unlock()
	for _, pr := range servers {
		pr.stop()
	}
	if cp.etcd != nil {
		cp.etcd.stop()
	}
	if cp.t.Failed() {
		for port, pr := range servers {
			cp.t.Logf("kube-apiserver :%d log tail:\n%s", port, pr.tail())
		}
		cp.mu.Lock()
		for _, pr := range cp.components {
			cp.t.Logf("%s log tail:\n%s", pr.name, pr.tail())
		}
		cp.mu.Unlock()
	}
}

// ServiceAccountConfig creates (if missing) the namespace and ServiceAccount
// and returns a REST config authenticated with a fresh token for it (one
// hour), dialing into NS, and a kubeconfig file with the same credentials
// for processes inside NS.
func (cp *ControlPlane) ServiceAccountConfig(t testing.TB, namespace, name string) (*rest.Config, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cp.EnsureNamespace(t, namespace)
	_, err := cp.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create ServiceAccount %s/%s: %v", namespace, name, err)
	}
	exp := int64(3600)
	tr, err := cp.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for ServiceAccount %s/%s: %v", namespace, name, err)
	}
	cfg := cp.ConfigFor(APIServerPort)
	cfg.BearerToken = tr.Status.Token
	path := filepath.Join(cp.Dir, fmt.Sprintf("sa-%s-%s.kubeconfig", namespace, name))
	if err := writeKubeconfig(path, fmt.Sprintf("https://127.0.0.1:%d", APIServerPort), cp.pki.caPEM, func(a *clientcmdapi.AuthInfo) {
		a.Token = tr.Status.Token
	}); err != nil {
		t.Fatal(err)
	}
	return cfg, path
}

// EnsureNamespace creates a namespace if it does not exist.
func (cp *ControlPlane) EnsureNamespace(t testing.TB, name string) {
	t.Helper()
	EnsureNamespaceWith(t, cp.Client, name)
}

// EnsureNamespaceWith is EnsureNamespace through client.
func EnsureNamespaceWith(t testing.TB, client kubernetes.Interface, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}

// KubeconfigIn makes the primary API server reachable from inside another
// network namespace at 127.0.0.1:6443 (a forwarder in the test process,
// closed when the test ends) and returns an admin kubeconfig for processes
// running there. For cp.NS itself it returns AdminKubeconfig. A second call
// for the same namespace (kube-proxy and the exporter on one node) reuses
// the forwarder.
func (cp *ControlPlane) KubeconfigIn(t testing.TB, ns *netns.NS) string {
	t.Helper()
	if ns.Name == cp.NS.Name {
		return cp.AdminKubeconfig
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.forwarded[ns.Name] {
		return cp.AdminKubeconfig
	}
	if cp.forwarded == nil {
		cp.forwarded = map[string]bool{}
	}
	cp.forwarded[ns.Name] = true
	t.Cleanup(func() {
		cp.mu.Lock()
		delete(cp.forwarded, ns.Name)
		cp.mu.Unlock()
	})
	addr := fmt.Sprintf("127.0.0.1:%d", APIServerPort)
	l, err := ListenIn(ns.Path(), "tcp", addr)
	if err != nil {
		t.Fatalf("listen in netns %s on %s: %v", ns.Name, addr, err)
	}
	f := startForwarder(l, DialerIn(cp.NS.Path()), addr)
	t.Cleanup(f.Close)
	return cp.AdminKubeconfig
}

func writeKubeconfig(path, server string, ca []byte, auth func(*clientcmdapi.AuthInfo)) error {
	c := clientcmdapi.NewConfig()
	c.Clusters["test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	a := clientcmdapi.NewAuthInfo()
	auth(a)
	c.AuthInfos["test"] = a
	c.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	c.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*c, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// process is a binary started inside the namespace by the harness.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
	once sync.Once
}

func (cp *ControlPlane) startProcess(name, bin string, args ...string) *process {
	cp.t.Helper()
	return startIn(cp.t, cp.t, cp.NS, cp.Dir, name, bin, args...)
}

// startProcessT is startProcess reporting failures to t. The process is
// still stopped when the control plane's test ends.
func (cp *ControlPlane) startProcessT(t testing.TB, name, bin string, args ...string) *process {
	t.Helper()
	return startIn(t, cp.t, cp.NS, cp.Dir, name, bin, args...)
}

// startIn starts bin in ns with stdout and stderr going to dir/name.log,
// failing t if it cannot; the process is stopped when owner's test ends.
func startIn(t, owner testing.TB, ns *netns.NS, dir, name, bin string, args ...string) *process {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	// `ip netns exec` execs the binary in place, so the PID is the binary's.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, bin}, args...)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// If the test binary dies (timeout, crash), the kernel kills the
	// process too instead of leaving it running in a deleted namespace.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := Spawn(cmd); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	pr := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { pr.err = cmd.Wait(); close(pr.done) }()
	owner.Cleanup(pr.stop)
	return pr
}

// spawner starts every process from one OS thread that never exits: the
// parent-death signal fires when the thread that forked the child exits, so
// forking from an arbitrary Go thread (which the runtime may retire) could
// kill a healthy API server mid-test.
var spawner struct {
	once sync.Once
	reqs chan spawnReq
}

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

// Spawn starts cmd from the harness's spawner thread, so a parent-death
// signal in cmd.SysProcAttr fires only when the test process dies.
func Spawn(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for r := range spawner.reqs {
				r.err <- r.cmd.Start()
			}
		}()
	})
	errc := make(chan error, 1)
	spawner.reqs <- spawnReq{cmd: cmd, err: errc}
	return <-errc
}

func (pr *process) running() bool {
	select {
	case <-pr.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM to the process (by its PID), and SIGKILL if it has not
// exited within 10 s. A process stopped with SIGSTOP is continued first, so
// that it gets the SIGTERM.
func (pr *process) stop() {
	if !pr.running() {
		return
	}
	_ = pr.cmd.Process.Signal(syscall.SIGCONT)
	_ = pr.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-pr.done:
	case <-time.After(10 * time.Second):
		pr.kill()
	}
}

// kill sends SIGKILL to the process (by its PID) and waits for it to exit.
func (pr *process) kill() {
	if !pr.running() {
		return
	}
	_ = pr.cmd.Process.Kill()
	<-pr.done
}

// tail returns the last lines of the process's log.
func (pr *process) tail() string { return Tail(pr.log, 40) }

// Tail returns the last n lines of a log file, for failure messages.
func Tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.TrimSpace(string(bytes.Join(lines, []byte("\n"))))
}
