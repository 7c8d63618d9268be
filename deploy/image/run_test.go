package image

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// metricsPort is the exporter's default port (cmd/netinspect).
const metricsPort = "10271"

// scrape GETs /metrics from an exporter on loopback inside ns, polling
// until it answers with every series of ready or the deadline passes (the
// rule collectors report success 0 until their first background refresh).
func scrape(t *testing.T, ns *netns.NS, exited <-chan struct{}, logs *bytes.Buffer, ready ...string) string {
	t.Helper()
	client := &http.Client{
		Transport: &http.Transport{DialContext: controlplane.DialerIn(ns.Path()), DisableKeepAlives: true},
		Timeout:   20 * time.Second,
	}
	var body string
	get := func() error {
		resp, err := client.Get("http://127.0.0.1:" + metricsPort + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /metrics: %s", resp.Status)
		}
		body = string(b)
		for _, r := range ready {
			if !strings.Contains(body, "\n"+r+"\n") {
				return fmt.Errorf("no %q yet", r)
			}
		}
		return nil
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		err := get()
		if err == nil {
			return body
		}
		select {
		case <-exited:
			t.Fatalf("the exporter exited:\n%s", logs)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("scraping the exporter: %v\nlogs:\n%s", err, logs)
		}
	}
}

// sample returns the value of the series named exactly key in an
// exposition, failing the test when it is absent.
func sample(t *testing.T, body, key string) string {
	t.Helper()
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, key+" "); ok {
			return v
		}
	}
	t.Errorf("no sample %s in the exposition", key)
	return ""
}

// process is a command a test started and stops when it ends.
type process struct {
	exited  chan struct{} // closed when it has exited
	logs    *bytes.Buffer // its stdout and stderr
	waitErr error         // valid once exited is closed
}

// startProcess starts cmd and, when the test ends, stops it by its PID:
// SIGTERM, then SIGKILL after 30 s. With mustExitCleanly, an exit status
// other than 0 after SIGTERM (or needing SIGKILL) fails the test.
func startProcess(t *testing.T, cmd *exec.Cmd, mustExitCleanly bool) *process {
	t.Helper()
	p := &process{exited: make(chan struct{}), logs: &bytes.Buffer{}}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.waitErr = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
			if mustExitCleanly && p.waitErr != nil {
				t.Errorf("%s exited with %v after SIGTERM:\n%s", cmd.Args[0], p.waitErr, p.logs)
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-p.exited
			if mustExitCleanly {
				t.Errorf("%s did not stop within 30 s of SIGTERM:\n%s", cmd.Args[0], p.logs)
			}
		}
	})
	return p
}

// startExporter starts cmd, an exporter inside a namespace, which must
// exit with status 0 on SIGTERM when the test ends.
func startExporter(t *testing.T, cmd *exec.Cmd) (exited chan struct{}, logs *bytes.Buffer) {
	t.Helper()
	p := startProcess(t, cmd, true)
	return p.exited, p.logs
}

// The amd64 image's own tools and exporter run from its unpacked file
// system (chroot, the image's PATH, a fresh /proc as a runtime mounts one)
// in a test network namespace: the iptables alternatives reach the nft
// backend, the legacy tools the legacy tables, the libraries resolve
// without an ld.so.cache, and the exporter reads rules through them.
func TestImageToolsAndExporterRunInANetns(t *testing.T) {
	b := sharedImage(t)
	for _, c := range []string{"chroot", "mount", "iptables-nft-restore", "ip6tables-nft-restore", "iptables-legacy-restore"} {
		testenv.RequireCommand(t, c)
	}
	a := readOCIArchive(t, b.ociTar)
	img := a.images(t)["amd64"]
	root := unpack(t, a, img)
	ns := netns.New(t, "image")

	restore := func(bin, text string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := ns.Command(ctx, bin)
		cmd.Stdin = strings.NewReader(text)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", bin, err, out)
		}
	}
	// Written with the host's tools, read with the image's.
	restore("iptables-nft-restore", "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp --dport 443 -j RETURN\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n")
	restore("ip6tables-nft-restore", "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n")
	restore("iptables-legacy-restore", "*filter\n:KUBE-LEGACY-TEST - [0:0]\nCOMMIT\n")

	inImage := func(argv ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := ns.Command(ctx, append([]string{"chroot", root}, argv...)...)
		cmd.Env = img.config.Config.Env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s in the image: %v\n%s", argv, err, out)
		}
		return string(out)
	}
	checks := []struct {
		argv []string
		want string
	}{
		{[]string{"iptables-save", "-t", "nat"}, "-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j RETURN"},
		{[]string{"iptables-save", "--version"}, "(nf_tables)"},
		{[]string{"ip6tables-save", "-t", "nat"}, ":KUBE-SERVICES - [0:0]"},
		{[]string{"iptables-nft-save", "-t", "nat"}, "-A KUBE-SERVICES -j RETURN"},
		{[]string{"iptables-legacy-save", "-t", "filter"}, ":KUBE-LEGACY-TEST - [0:0]"},
		{[]string{"ip6tables-legacy-save"}, ""},
		{[]string{"nft", "list", "chain", "ip", "nat", "KUBE-SERVICES"}, "chain KUBE-SERVICES"},
		{[]string{"conntrack", "-C"}, "0"},
	}
	for _, c := range checks {
		if out := inImage(c.argv...); !strings.Contains(out, c.want) {
			t.Errorf("%s in the image printed %q, want it to contain %q", c.argv, out, c.want)
		}
	}

	// The entrypoint, as the DaemonSet runs it (procfs at /host/proc).
	if err := os.MkdirAll(filepath.Join(root, "host/proc"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	argv := append(img.config.Config.Entrypoint, "--web.listen-address=127.0.0.1:"+metricsPort, "--path.procfs=/host/proc", "--log.format=console")
	// What a container runtime provides: /dev with the usual nodes (exec
	// opens /dev/null for a child's unused stdin) and a /proc. ip netns
	// exec runs the shell in a mount namespace of its own, so the mounts
	// go away with it.
	const runtime = `mount -t proc proc "$0/host/proc" && mount -t tmpfs -o mode=755 tmpfs "$0/dev" &&
		mknod -m 666 "$0/dev/null" c 1 3 && mknod -m 666 "$0/dev/zero" c 1 5 &&
		mknod -m 666 "$0/dev/random" c 1 8 && mknod -m 666 "$0/dev/urandom" c 1 9 &&
		exec chroot "$0" "$@"`
	cmd := ns.Command(ctx, append([]string{"sh", "-c", runtime, root}, argv...)...)
	cmd.Env = img.config.Config.Env
	exited, logs := startExporter(t, cmd)
	body := scrape(t, ns, exited, logs, `netinspect_scrape_collector_success{collector="iptables"} 1`)
	for key, want := range map[string]string{
		`netinspect_build_info{goversion="` + goVersion(t) + `",revision="` + b.revision + `",version="` + b.version + `"}`: "1",
		`netinspect_iptables_rules{chain="KUBE-SERVICES",family="ipv4",table="nat"}`:                                        "2",
		`netinspect_iptables_rules{chain="KUBE-SERVICES",family="ipv6",table="nat"}`:                                        "0",
		`netinspect_scrape_collector_success{collector="iptables"}`:                                                         "1",
		`netinspect_scrape_collector_success{collector="conntrack"}`:                                                        "1",
		`netinspect_conntrack_source_info{source="netlink"}`:                                                                "1",
	} {
		if got := sample(t, body, key); got != want {
			t.Errorf("%s = %s, want %s", key, got, want)
		}
	}
}

// goVersion is the Go version the binary was built with: the go on PATH.
func goVersion(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// The arm64 image's exporter starts and serves /metrics under qemu-user
// (qemu-aarch64 from Debian's qemu-user, run directly: no binfmt_misc
// registration on the host), and its iptables tools load their arm64
// libraries from the image. qemu-user refuses netlink sockets other than
// NETLINK_ROUTE (EPROTONOSUPPORT), so under it the exporter's conntrack
// figures come from procfs and the image's rule tools cannot list rules;
// and what the exporter execs under qemu is the host's amd64 iptables-save
// on its PATH (qemu-user emulates one process, not its children). So the
// collector results logged here say little about arm64: what the arm64
// binary does on netfilter is the amd64 code's, cross-compiled, tested on
// amd64.
func TestArm64ImageUnderQemu(t *testing.T) {
	b := sharedImage(t)
	qemu := testenv.RequireCommand(t, "qemu-aarch64")
	a := readOCIArchive(t, b.ociTar)
	img := a.images(t)["arm64"]
	root := unpack(t, a, img)
	bin := filepath.Join(root, img.config.Config.Entrypoint[0])

	out, err := exec.Command(qemu, bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-aarch64 netinspect --version: %v\n%s", err, out)
	}
	for _, want := range []string{"netinspect version " + b.version + " (revision " + b.revision + ")", "linux/arm64"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--version printed %q, want %q", out, want)
		}
	}

	// The tools: qemu's -L makes the loader and libraries come from the
	// image; -0 gives xtables-*-multi the name it dispatches on.
	fs := a.files(t, img)
	for name, want := range map[string]string{
		"usr/sbin/iptables-save":         "iptables-save v1.8",
		"usr/sbin/ip6tables-save":        "ip6tables-save v1.8",
		"usr/sbin/iptables-legacy-save":  "(legacy)",
		"usr/sbin/ip6tables-legacy-save": "(legacy)",
	} {
		target, err := resolve(fs, name)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(qemu, "-L", root, "-0", filepath.Base(name), filepath.Join(root, target), "--version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("%s --version under qemu: %v %q, want %q", name, err, out, want)
		}
	}

	ns := netns.New(t, "qemu")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	exited, logs := startExporter(t, ns.Command(ctx, qemu, bin, "--web.listen-address=127.0.0.1:"+metricsPort, "--log.format=console"))
	body := scrape(t, ns, exited, logs)
	if got := sample(t, body, `netinspect_build_info{goversion="`+goVersion(t)+`",revision="`+b.revision+`",version="`+b.version+`"}`); got != "1" {
		t.Errorf("build_info = %s", got)
	}
	if got := sample(t, body, `netinspect_conntrack_source_info{source="procfs"}`); got != "1" {
		t.Errorf(`conntrack_source_info{source="procfs"} = %s, want 1 (qemu-user has no NETLINK_NETFILTER)`, got)
	}
	successes := regexp.MustCompile(`(?m)^netinspect_scrape_collector_success\{collector="([^"]+)"\} (\S+)$`).FindAllStringSubmatch(body, -1)
	if len(successes) == 0 {
		t.Error("no netinspect_scrape_collector_success series")
	}
	var ran []string
	for _, s := range successes {
		ran = append(ran, s[1]+"="+s[2])
	}
	t.Logf("linux/arm64 under qemu-user: collector success %s", strings.Join(ran, " "))
}

// `ctr images import` (containerd, what test/node and a node's own runtime
// use) takes the OCI archive: it names the image IMAGE:VERSION from
// index.json's io.containerd.image.name and unpacks the linux/amd64 image
// into its snapshotter. containerd runs with its own root, state and
// socket under the test's directory, in a private mount namespace (unshare)
// so its snapshot mounts never reach the host's.
func TestContainerdImportsTheArchive(t *testing.T) {
	b := sharedImage(t)
	containerd := testenv.RequireCommand(t, "containerd")
	ctr := testenv.RequireCommand(t, "ctr")
	unshare := testenv.RequireCommand(t, "unshare")
	dir := t.TempDir()
	sock := filepath.Join(dir, "containerd.sock")
	config := fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n",
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock)
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	proc := startProcess(t, exec.Command(unshare, "--mount", "--propagation", "private", containerd, "--config", filepath.Join(dir, "config.toml")), false)
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, ctr, append([]string{"--address", sock, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
		return string(out), err
	}
	controlplane.Eventually(t, 30*time.Second, func() error {
		select {
		case <-proc.exited:
			t.Fatalf("containerd exited:\n%s", proc.logs)
		default:
		}
		_, err := run("version")
		return err
	})
	if out, err := run("images", "import", "--platform", "linux/amd64", b.ociTar); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	name := imageName + ":" + b.version
	out, err := run("images", "check", "name=="+name)
	if err != nil {
		t.Fatal(err)
	}
	fields := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\s+\S+\s+(sha256:\S+)\s+complete \((\d+)/(\d+)\).*\s(true|false)\s*$`).FindStringSubmatch(out)
	if fields == nil || fields[1] != b.digest || fields[2] != fields[3] || fields[4] != "true" {
		t.Errorf("ctr images check:\n%s\nwant %s at %s complete and unpacked", out, name, b.digest)
	}
}
