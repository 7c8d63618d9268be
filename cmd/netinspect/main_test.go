package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds cmd/netinspect once per test run, as the Makefile does.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "netinspect-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "netinspect")
		cmd := exec.Command("go", "build", "-ldflags", "-X main.version=test -X main.revision=e2e", "-o", binPath, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// exporter is a netinspect process started by a test.
type exporter struct {
	cmd    *exec.Cmd
	addr   string
	stderr *syncBuffer
	done   chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startExporter runs the binary inside ns (prefix is prepended to the
// command, e.g. setpriv) listening on 127.0.0.1:port of the namespace, and
// waits until /healthz answers.
func startExporter(t *testing.T, ns *netns.NS, prefix []string, args ...string) *exporter {
	t.Helper()
	addr := "127.0.0.1:10271"
	argv := append(append([]string{}, prefix...), binary(t), "--web.listen-address="+addr, "--log.level=debug")
	argv = append(argv, args...)
	cmd := ns.Command(context.Background(), argv...)
	e := &exporter{cmd: cmd, addr: addr, stderr: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = e.stderr, e.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start exporter: %v", err)
	}
	go func() { e.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-e.done
		}
		if t.Failed() {
			t.Logf("exporter log:\n%s", e.stderr.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := ns.Run("bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/10271"); err == nil {
			return e
		}
		select {
		case err := <-e.done:
			t.Fatalf("exporter exited before serving: %v\n%s", err, e.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("exporter not serving after 20s:\n%s", e.stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// get fetches path from the exporter inside ns with curl-less plain Go: the
// namespace's loopback is only reachable from inside it, so the request runs
// in the namespace through a helper process.
func (e *exporter) get(t *testing.T, ns *netns.NS, path string, header ...string) (int, string) {
	t.Helper()
	args := []string{os.Args[0], "-test.run=^TestHelperHTTPGet$", "--", "http://" + e.addr + path}
	args = append(args, header...)
	cmd := ns.Command(context.Background(), args...)
	cmd.Env = append(os.Environ(), "NETINSPECT_HTTP_GET_HELPER=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, out)
	}
	status, body, ok := strings.Cut(string(out), "\n")
	if !ok {
		t.Fatalf("GET %s: helper printed %q", path, out)
	}
	code, err := strconv.Atoi(strings.TrimPrefix(status, "STATUS "))
	if err != nil {
		t.Fatalf("GET %s: helper printed %q", path, status)
	}
	return code, body
}

// TestHelperHTTPGet is not a test: the test binary re-executes itself with it
// inside a network namespace to make one HTTP request there.
func TestHelperHTTPGet(t *testing.T) {
	if os.Getenv("NETINSPECT_HTTP_GET_HELPER") != "1" {
		return
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	req, err := http.NewRequest(http.MethodGet, args[0], nil)
	if err != nil {
		fmt.Print(err)
		os.Exit(3)
	}
	for _, h := range args[1:] {
		if k, v, ok := strings.Cut(h, ": "); ok {
			if k == "Authorization-Basic" {
				u, p, _ := strings.Cut(v, ":")
				req.SetBasicAuth(u, p)
				continue
			}
			req.Header.Set(k, v)
		}
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		fmt.Print(err)
		os.Exit(3)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("STATUS %d\n%s", resp.StatusCode, body)
	os.Exit(0)
}

// sample returns the value of the series whose exposition line starts with
// series (name plus labels exactly as exposed), failing if it is absent.
func sample(t *testing.T, exposition, series string) float64 {
	t.Helper()
	v, ok := findSample(exposition, series)
	if !ok {
		t.Fatalf("series %s not exposed", series)
	}
	return v
}

func findSample(exposition, series string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(exposition))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

func TestBinaryServesConntrackMetricsInItsNamespace(t *testing.T) {
	ns := netns.New(t, "e2e")
	const flows = 37
	if n, err := ctfill.Create(ns.FD(), ctfill.Spec{Count: flows, Src: netip.MustParseAddr("10.3.0.1"), Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 53}); err != nil || n != flows {
		t.Fatalf("created %d of %d flows: %v", n, flows, err)
	}
	e := startExporter(t, ns, nil)

	code, body := e.get(t, ns, "/metrics", "X-Prometheus-Scrape-Timeout-Seconds: 5")
	if code != http.StatusOK {
		t.Fatalf("/metrics status %d", code)
	}
	if got := sample(t, body, "netinspect_conntrack_entries"); got != flows {
		t.Errorf("netinspect_conntrack_entries = %v, want %d", got, flows)
	}
	limit, _ := strconv.ParseFloat(ns.Sysctl("net.netfilter.nf_conntrack_max"), 64)
	if got := sample(t, body, "netinspect_conntrack_entries_limit"); got != limit {
		t.Errorf("netinspect_conntrack_entries_limit = %v, want %v", got, limit)
	}
	for _, series := range []string{
		`netinspect_scrape_collector_success{collector="conntrack"}`,
		`netinspect_conntrack_source_info{source="netlink"}`,
		`netinspect_build_info{goversion="` + goVersion(t) + `",revision="e2e",version="test"}`,
	} {
		if got := sample(t, body, series); got != 1 {
			t.Errorf("%s = %v, want 1", series, got)
		}
	}
	for _, series := range []string{`netinspect_scrape_collector_duration_seconds{collector="conntrack"}`, "go_goroutines", "process_resident_memory_bytes", "netinspect_conntrack_stat_drop_total"} {
		sample(t, body, series)
	}
	if got := sample(t, body, "netinspect_conntrack_entries"); got != flows {
		t.Errorf("entries changed by scraping: %v", got)
	}

	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "kubernetes", "/": "/metrics"} {
		code, body := e.get(t, ns, path)
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("GET %s = %d %q, want 200 containing %q", path, code, body, want)
		}
	}

	if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-e.done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v, want status 0", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("exporter did not exit within 15s of SIGTERM")
	}
}

func goVersion(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func TestBinaryWithoutConntrackCollector(t *testing.T) {
	ns := netns.New(t, "e2e-off")
	e := startExporter(t, ns, nil, "--no-collector.conntrack")
	_, body := e.get(t, ns, "/metrics")
	for _, series := range []string{"netinspect_conntrack_entries", "netinspect_conntrack_stat_", `collector="conntrack"}`} {
		if strings.Contains(body, series) {
			t.Errorf("%s exposed with --no-collector.conntrack:\n%s", series, grepLines(body, series))
		}
	}
	sample(t, body, "netinspect_build_info{goversion=\""+goVersion(t)+"\",revision=\"e2e\",version=\"test\"}")
}

// TestBinaryFallsBackToProcfsWithoutNetAdmin runs the exporter without
// CAP_NET_ADMIN, as a DaemonSet that was not granted it: ctnetlink refuses,
// so the figures come from procfs.
func TestBinaryFallsBackToProcfsWithoutNetAdmin(t *testing.T) {
	testenv.RequireCommand(t, "setpriv")
	ns := netns.New(t, "e2e-proc")
	const flows = 12
	if n, err := ctfill.Create(ns.FD(), ctfill.Spec{Count: flows, Src: netip.MustParseAddr("10.4.0.1"), Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 53}); err != nil || n != flows {
		t.Fatalf("created %d of %d flows: %v", n, flows, err)
	}
	e := startExporter(t, ns, []string{"setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"})
	_, body := e.get(t, ns, "/metrics")
	if got := sample(t, body, `netinspect_conntrack_source_info{source="procfs"}`); got != 1 {
		t.Errorf("source procfs = %v", got)
	}
	if got := sample(t, body, "netinspect_conntrack_entries"); got != flows {
		t.Errorf("entries from procfs = %v, want %d", got, flows)
	}
	if got := sample(t, body, `netinspect_scrape_collector_success{collector="conntrack"}`); got != 1 {
		t.Errorf("success = %v, want 1", got)
	}
	sample(t, body, "netinspect_conntrack_stat_chaintoolong_total")
}

func TestBinaryWithBasicAuthFromWebConfig(t *testing.T) {
	ns := netns.New(t, "e2e-auth")
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(cfg, []byte("basic_auth_users:\n  prom: "+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := startExporter(t, ns, nil, "--web.config.file="+cfg)
	if code, _ := e.get(t, ns, "/metrics"); code != http.StatusUnauthorized {
		t.Errorf("without credentials: status %d, want 401", code)
	}
	code, body := e.get(t, ns, "/metrics", "Authorization-Basic: prom:s3cret")
	if code != http.StatusOK {
		t.Fatalf("with credentials: status %d", code)
	}
	sample(t, body, "netinspect_conntrack_entries")
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestBinaryStartupErrors checks the exit status and message of each kind of
// bad start (CONTRACT.md: 2 for bad flags with usage, 1 for other start-up
// errors with a message saying what to fix).
func TestBinaryStartupErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	unreadable := filepath.Join(t.TempDir(), "missing-web.yml")

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantMsg  *regexp.Regexp
	}{
		{"unknown flag", []string{"--no-such-flag"}, 2, regexp.MustCompile(`unknown long flag '--no-such-flag'(?s:.*)usage: netinspect`)},
		{"bad flag value", []string{"--log.format=xml"}, 2, regexp.MustCompile(`enum value must be one of json,console`)},
		{"unknown collector", []string{"--collector.nosuch"}, 2, regexp.MustCompile(`unknown long flag '--collector.nosuch'`)},
		{"collector flag value rejected", []string{"--collector.dns", "--collector.dns.service=no-slash", "--web.listen-address=127.0.0.1:0"}, 2, regexp.MustCompile(`collector dns: .*no-slash(?s:.*)--help`)},
		// Rejected by the collector's constructor at flag time, with usage,
		// before the Kubernetes client (here a kubeconfig that does not
		// exist, which would exit 1) is started.
		{"collector value rejected before start", []string{"--collector.veth.methods=arp", "--kubeconfig=/nonexistent", "--web.listen-address=127.0.0.1:0"}, 2, regexp.MustCompile(`collector veth: unknown veth mapping method "arp"(?s:.*)usage: netinspect`)},
		// kube-proxy drift: a cap below 0 and a negative or unreadable
		// grace are bad flags; a cap of 0 (no per-port series) and a grace
		// of 0 (count at once) are accepted (and not in this table).
		{"negative drift series cap", []string{"--kube-proxy.drift.max-series=-1", "--web.listen-address=127.0.0.1:0"}, 2, regexp.MustCompile(`--kube-proxy.drift.max-series=-1: must be 0 \(no per-port series\) or more(?s:.*)usage: netinspect`)},
		{"negative drift grace", []string{"--kube-proxy.drift.grace=-30s", "--web.listen-address=127.0.0.1:0"}, 2, regexp.MustCompile(`--kube-proxy.drift.grace=-30s: .*must not be negative(?s:.*)usage: netinspect`)},
		{"negative drift grace in intervals", []string{"--kube-proxy.drift.grace=-1x", "--web.listen-address=127.0.0.1:0"}, 2, regexp.MustCompile(`--kube-proxy.drift.grace=-1x: .*non-negative multiple of the refresh interval`)},
		{"unreadable drift grace", []string{"--kube-proxy.drift.grace=soon", "--web.listen-address=127.0.0.1:0"}, 2, regexp.MustCompile(`--kube-proxy.drift.grace=soon: .*invalid duration`)},
		{"unknown service-series mode", []string{"--collector.nftables.service-series=some", "--web.listen-address=127.0.0.1:0"}, 2, regexp.MustCompile(`enum value must be one of drift,all`)},
		{"bad log level", []string{"--log.level=loud", "--web.listen-address=127.0.0.1:0"}, 1, regexp.MustCompile(`--log.level="loud" is not a log level; use one of debug, info, warn, error`)},
		{"port in use", []string{"--web.listen-address=" + busy.Addr().String()}, 1, regexp.MustCompile(`listen on 127\.0\.0\.1:\d+: .*address already in use; choose a free address with --web.listen-address`)},
		{"unreadable web config", []string{"--web.listen-address=127.0.0.1:0", "--web.config.file=" + unreadable}, 1, regexp.MustCompile(`web config file ".*missing-web.yml" \(--web.config.file\) is not usable: .*no such file`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := runBinary(t, tt.args...)
			if code != tt.wantCode {
				t.Errorf("exit status %d, want %d\n%s", code, tt.wantCode, out)
			}
			if !tt.wantMsg.MatchString(out) {
				t.Errorf("output does not match %q:\n%s", tt.wantMsg, out)
			}
		})
	}
}

// runBinary runs the binary to completion (bounded) and returns its output
// and exit status.
func runBinary(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary(t), args...).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run %v: %v", args, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("run %v: still running after 20s", args)
	}
	code := 0
	if ee != nil {
		code = ee.ExitCode()
	}
	return string(out), code
}

func TestHelpExitsZero(t *testing.T) {
	out, err := exec.Command(binary(t), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, out)
	}
	for _, flag := range []string{"--web.listen-address", "--web.config.file", "--web.telemetry-path", "--web.max-requests", "--[no-]web.kubernetes-auth", "--[no-]web.tls.self-signed", "--web.tls.cert-file", "--[no-]collector.conntrack", "collector.conntrack.per-cpu", "--path.procfs", "--log.format", "--kube-proxy.drift.max-series", "--kube-proxy.drift.grace", "--collector.iptables.service-series", "--collector.nftables.service-series", "--collector.ipvs.service-series"} {
		if !strings.Contains(string(out), flag) {
			t.Errorf("--help does not mention %s", flag)
		}
	}
}

// kube_proxy_mode_info is one series: the iptables collector's, or the
// nftables collector's when the iptables one is off. In a namespace holding
// kube-proxy's iptables-mode entry chain it says iptables either way.
func TestBinaryReportsKubeProxyModeOnce(t *testing.T) {
	testenv.RequireCommand(t, "iptables-restore")
	testenv.RequireCommand(t, "nsenter")
	for name, args := range map[string][]string{"iptables collector": nil, "nftables collector": {"--no-collector.iptables"}} {
		t.Run(name, func(t *testing.T) {
			ns := netns.New(t, "e2e-mode")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			restore := ns.Command(ctx, "iptables-restore")
			restore.Stdin = strings.NewReader("*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n")
			if out, err := restore.CombinedOutput(); err != nil {
				t.Fatalf("iptables-restore: %v: %s", err, out)
			}
			e := startExporter(t, ns, nil, args...)
			deadline := time.Now().Add(time.Minute)
			for {
				_, body := e.get(t, ns, "/metrics")
				lines := grepLines(body, "netinspect_kube_proxy_mode_info{")
				if lines != "" {
					if n := strings.Count(lines, "\n") + 1; n != 1 || !strings.HasPrefix(lines, `netinspect_kube_proxy_mode_info{mode="iptables"} 1`) {
						t.Fatalf("mode series:\n%s\nwant one, mode iptables", lines)
					}
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("no kube_proxy_mode_info within a minute:\n%s", body)
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
}
